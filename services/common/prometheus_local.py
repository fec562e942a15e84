"""A real Prometheus beside the embedded stack (`certrail up --with-prometheus`, and the e2e tests).

It runs Debian's ``prometheus`` binary (the package scripts/promtool.sh installs; nothing is
installed here) as one more supervised process of the stack: its configuration is generated
for the stack's actual metrics ports (``<var>/prometheus/prometheus.yml``, written as JSON,
which is YAML), its data in ``<var>/prometheus/data``, the project's alert rules
(deploy/prometheus/rules/*.yml, or another directory), its log in ``<var>/log/prometheus.log``
and its pid in ``<var>/run/prometheus.pid`` so that `certrail down` stops it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.common.stack import ServiceProcess

NAME = "prometheus"
DEFAULT_PORT = 9090
RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules"
#: where Debian's package puts the binary (also looked up on the PATH)
DEBIAN_BINARY = Path("/usr/bin/prometheus")


class PrometheusMissing(RuntimeError):
    """No prometheus binary: the message says how to get one."""


def find_binary() -> Path:
    """The prometheus binary (on the PATH, else Debian's /usr/bin/prometheus)."""
    found = shutil.which(NAME)
    if found:
        return Path(found)
    if DEBIAN_BINARY.is_file():
        return DEBIAN_BINARY
    raise PrometheusMissing(
        "the prometheus binary was not found (PATH, /usr/bin/prometheus): run `sudo bash scripts/promtool.sh` "
        "(it installs Debian's prometheus package and leaves its system service disabled), then try again"
    )


def scrape_config(targets: Mapping[str, str | Sequence[str]], *, rules_dir: Path, scrape_interval_s: float,
                  evaluation_interval_s: float, self_target: str | None = None) -> dict[str, object]:
    """Prometheus configuration: one job ``certrail-<service>`` per ``service -> host:port`` (or the
    ``host:port`` of each of its instances, `certrail up --instances N`: one target each, told apart by
    Prometheus's ``instance`` label), under the job names deploy/prometheus/prometheus.yml uses, so rules
    and dashboards work unchanged."""
    jobs: list[dict[str, object]] = [
        {"job_name": f"certrail-{service}", "static_configs": [{"targets": [target] if isinstance(target, str) else list(target)}]}
        for service, target in sorted(targets.items())
    ]
    if self_target is not None:
        jobs.append({"job_name": NAME, "static_configs": [{"targets": [self_target]}]})
    return {
        "global": {"scrape_interval": _duration(scrape_interval_s), "evaluation_interval": _duration(evaluation_interval_s),
                   "scrape_timeout": _duration(min(scrape_interval_s, 10.0)),
                   "external_labels": {"system": "certrail-local"}},
        "rule_files": [str(rules_dir.resolve() / "*.yml")],
        "scrape_configs": jobs,
    }


def _duration(seconds: float) -> str:
    millis = round(seconds * 1000)
    if millis <= 0:
        raise ValueError("a Prometheus interval must be positive")
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


@dataclass
class PrometheusProcess(ServiceProcess):
    """Prometheus as a stack process: ``targets`` maps each service to the ``host:port`` it serves /metrics on."""

    targets: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    rules_dir: Path = RULES_DIR
    scrape_interval_s: float = 15.0
    evaluation_interval_s: float = 15.0
    binary: Path | None = None  # found at start when None

    @property
    def data_dir(self) -> Path:
        return self.var_dir / NAME

    @property
    def config_file(self) -> Path:
        return self.data_dir / "prometheus.yml"

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = scrape_config(self.targets, rules_dir=self.rules_dir, scrape_interval_s=self.scrape_interval_s,
                               evaluation_interval_s=self.evaluation_interval_s, self_target=f"{self.host}:{self.port}")
        self.config_file.write_text(json.dumps(config, indent=2) + "\n")
        return self.config_file

    def start(self) -> None:
        if self.binary is None:
            self.binary = find_binary()
        self.write_config()
        super().start()

    def argv(self) -> list[str]:
        binary = self.binary or DEBIAN_BINARY
        return [str(binary), f"--config.file={self.config_file}", f"--storage.tsdb.path={self.data_dir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}", "--storage.tsdb.retention.time=15d",
                "--web.enable-lifecycle"]

    def healthy(self) -> bool:
        try:
            return httpx.get(self.base_url + "/-/ready", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False


def prometheus_process(var_dir: Path, *, host: str, port: int, service_ports: Mapping[str, int | Sequence[int]],
                       rules_dir: Path = RULES_DIR, scrape_interval_s: float = 15.0,
                       evaluation_interval_s: float | None = None) -> PrometheusProcess:
    """The stack's Prometheus, scraping every service's metrics port on ``host`` (a sequence of ports: every
    instance's)."""
    return PrometheusProcess(
        NAME, port, host, var_dir, {},
        targets={service: f"{host}:{ports}" if isinstance(ports, int) else [f"{host}:{p}" for p in ports]
                 for service, ports in service_ports.items()},
        rules_dir=rules_dir, scrape_interval_s=scrape_interval_s,
        evaluation_interval_s=scrape_interval_s if evaluation_interval_s is None else evaluation_interval_s,
    )
