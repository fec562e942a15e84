"""The emCA connector registry, shared by the gateway (admin API), the CLI and the issuer.

- ``models``: what a connector is (`ConnectorSpec` in, `Connector` out, `ConnectorChange`)
- ``secretbox``: secrets encrypted at rest (Fernet, keys from settings, rotation)
- ``repository``: the ``emca_connectors`` table
- ``validation``: the checks against emCA before a connector is stored enabled
- ``usage``: what refuses a delete (`UsageCheck`)
- ``registry``: `ConnectorRegistry`, which ties them together

See docs/connectors.md.
"""
