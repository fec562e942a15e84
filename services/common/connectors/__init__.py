"""What every caller of the emCA connector registry shares; the registry itself is the issuer's
(services/issuer/registry/, decision 0034).

- ``models``: what a connector is (`ConnectorSpec` in, `Connector` out, `ConnectorChange`), and the wire form
  of a spec or an edit between the gateway and the issuer's internal API
- ``secretbox``: secrets encrypted at rest (Fernet, keys from settings, rotation)

See docs/connectors.md.
"""
