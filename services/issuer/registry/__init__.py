"""The emCA connector registry, owned by the issuer (decisions 0005, 0017 and 0034): it holds the secrets, validates
against emCA, writes ``emca_connectors`` and records each change's admin event in its own outbox
(``issuer_admin_outbox``) in the change's transaction.

- ``outbox``: the issuer's admin outbox and its relay (to ``<prefix>.events.issuer``)
- ``changes``: every change with its admin event (the one path; refusals recorded too)
- ``internal_api``: ``/internal/v1/connectors`` on the issuer's port, for the gateway (and through it the console)
  and ``certrail connectors``
"""
