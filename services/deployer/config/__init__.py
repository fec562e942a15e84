"""The one path of every change to the deployer's configuration (issue 19, decision 0019): deployment
targets (put, remove) and bindings (bind, unbind). Each change validates (a target is also probed before
it is stored), writes its table and its admin event (into ``deployer_admin_outbox``) in one transaction;
a refused change writes only its event. The deployer's internal API, `certrail targets` and `certrail demo` call these
functions; nothing else writes those tables (tests/unit/test_config_single_path.py). The
deployer's relay (outbox.py, over services/common/admin_outbox.py) publishes the events to ``<prefix>.events.deployer``."""
