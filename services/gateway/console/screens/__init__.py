"""The console's screens: one module each, with a module-level ``router`` and module-level
handlers. services/gateway/console/routes.py assembles them, in the order their routes are tried."""
