"""The embedded stack's Prometheus launcher: the configuration it generates (checked by promtool
where it is installed), and the error when the binary is missing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from services.common import prometheus_local
from services.common.prometheus_local import PrometheusMissing, find_binary, prometheus_process


def test_the_config_scrapes_each_service_under_the_job_names_the_rules_use(tmp_path: Path) -> None:
    process = prometheus_process(tmp_path, host="127.0.0.1", port=19090, service_ports={"gateway": 18080, "issuer": 18081},
                                 scrape_interval_s=1.0)
    config = json.loads(process.write_config().read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs == {"certrail-gateway": ["127.0.0.1:18080"], "certrail-issuer": ["127.0.0.1:18081"],
                    "prometheus": ["127.0.0.1:19090"]}
    assert config["global"]["scrape_interval"] == "1s" and config["global"]["evaluation_interval"] == "1s"
    assert config["rule_files"] == [str(prometheus_local.RULES_DIR / "*.yml")]
    argv = process.argv()
    assert f"--storage.tsdb.path={tmp_path / 'prometheus' / 'data'}" in argv
    assert "--web.listen-address=127.0.0.1:19090" in argv
    promtool = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if promtool is not None:  # the generated file is a valid Prometheus configuration, rules included
        check = subprocess.run([promtool, "check", "config", str(process.config_file)], capture_output=True, text=True,
                               check=False)
        assert check.returncode == 0, check.stdout + check.stderr


def test_sub_second_intervals_are_written_in_milliseconds(tmp_path: Path) -> None:
    process = prometheus_process(tmp_path, host="127.0.0.1", port=1, service_ports={}, scrape_interval_s=0.5)
    assert json.loads(process.write_config().read_text())["global"]["scrape_interval"] == "500ms"


def test_a_missing_binary_names_the_script_that_installs_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(prometheus_local, "DEBIAN_BINARY", tmp_path / "absent")
    with pytest.raises(PrometheusMissing, match="scripts/promtool.sh"):
        find_binary()
