"""The one path of every change to the configuration the gateway owns (decision 0019):
connectors, provisioning profiles, API tokens and requester keys. Each change validates, writes
its table and its admin event (into ``gateway_admin_outbox``) in one transaction; a refused
change writes only its event. The HTTP API, the console (through the API) and the CLI all call
these functions; nothing else writes those tables (tests/unit/test_config_single_path.py)."""
