"""`certrail up --with-prometheus --instances N`: the generated scrape configuration lists every instance of every
service under the service's one job (services/common/prometheus_local.py, services/common/stack.py)."""

from __future__ import annotations

import json
from pathlib import Path

from services.common.prometheus_local import prometheus_process
from services.common.stack import DEFAULT_PORTS, Stack, instance_ports


def test_every_instance_is_a_target_of_its_services_job(tmp_path: Path) -> None:
    ports = instance_ports(DEFAULT_PORTS, 2, 10)
    config = json.loads(prometheus_process(tmp_path, host="127.0.0.1", port=9090, service_ports=ports).write_config().read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    stack = Stack(var_dir=tmp_path, instances=2, port_step=10)
    assert jobs.pop("prometheus") == ["127.0.0.1:9090"]
    assert jobs == {f"certrail-{service}": [f"127.0.0.1:{s.port}" for s in stack.instances_of(service)]
                    for service in DEFAULT_PORTS}
    assert jobs["certrail-auditor"] == ["127.0.0.1:8083", "127.0.0.1:8093"]


def test_one_instance_is_scraped_as_before(tmp_path: Path) -> None:
    config = prometheus_process(tmp_path, host="127.0.0.1", port=9090, service_ports=instance_ports(DEFAULT_PORTS, 1)).write_config()
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in json.loads(config.read_text())["scrape_configs"]}
    assert jobs["certrail-gateway"] == ["127.0.0.1:8080"] and len(jobs) == len(DEFAULT_PORTS) + 1
