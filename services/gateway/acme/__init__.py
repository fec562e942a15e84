"""The gateway's ACME door (RFC 8555; issue 22, decision 0033, docs/acme.md).

It serves the directory, nonces, newAccount with External Account Binding (required), account update, deactivation
and key rollover, orders, authorizations, challenges, finalize, certificates and revokeCert, every POST a verified
JWS. Modules:

- problems.py: RFC 8555 problem documents (``application/problem+json``), one `AcmeError` per refusal
- jws.py: the flattened JWS of a POST, parsed and verified (josepy does the JOSE work): pure functions
- nonces.py: Replay-Nonces in a gateway-owned table (single-use, expiring, shared by every instance)
- store.py: ACME accounts and EAB keys (SQL)
- changes.py: the changes that are audited (EAB keys, accounts) through the gateway's admin outbox
- orders.py, orders_store.py, order_routes.py: newOrder, orders, authorizations and challenges up to "ready"
  (slice 2a); challenges.py: challenge validation (http-01, dns-01 through a hook; tls-alpn-01 in tls_alpn.py)
- finalize.py, certificates.py, certificate_routes.py: finalize through the gateway's intake, the order following the
  issuer's events (the fold), the certificate download, revokeCert, an account's orders list (slice 2b);
  retire.py: a renewal's order retires the certificate it renews (superseded, never revoked)
- routes.py: the ``/acme`` router; admin.py: ``/v1/acme`` (admin token: EAB keys, accounts)
- settings.py: ``CERTRAIL_GATEWAY_ACME__*``

Nothing here runs at import time; `routes.acme_router` and `admin.admin_router` build the routers.
"""
