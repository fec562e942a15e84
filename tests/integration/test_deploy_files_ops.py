"""The operations files under deploy/: Prometheus scrape config and alert rules (checked
and unit-tested by promtool through scripts/promtool.sh), the Grafana dashboard and its
provisioning, and the runbook links into docs/operations.md. Every metric an alert or a
panel uses must be one the code defines (docker-compose.yml itself: tests/unit/test_deploy_files.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import faststream.prometheus.container as faststream_metrics
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "certrail.json"
RULES = PROMETHEUS / "rules" / "certrail.rules.yml"
OPERATIONS = ROOT / "docs" / "operations.md"

SERVICE_PORTS = {"gateway": 8080, "issuer": 8081, "deployer": 8082, "auditor": 8083}
REQUIRED_ALERTS = {
    "CertrailServiceDown",
    "CertrailConnectorDown",
    "CertrailConnectorMisconfigured",
    "CertrailCommandQueueStalled",
    "CertrailPossibleDuplicateIssuance",
    "CertrailCertificateExpiringWithoutRenewal",
    "CertrailDeadLettersIncreasing",
    "CertrailDeploymentFailures",
    "CertrailAuditVerifyFailing",
}

# -- what the code defines -------------------------------------------------------------------------

_DEFINITION = re.compile(r"\b(Counter|PromCounter|Gauge|GaugeMetricFamily|Histogram|Summary|Info|Enum)\(\s*\"(certrail_[a-z0-9_]+)\"")
_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "PromCounter": ("_total", "_created"),
    "Histogram": ("_bucket", "_count", "_sum", "_created"),
    "Summary": ("", "_count", "_sum", "_created"),
    "Gauge": ("",),
    "GaugeMetricFamily": ("",),
    "Info": ("_info",),
    "Enum": ("",),
}


def _exposed(kind: str, name: str) -> set[str]:
    """The series names prometheus_client exposes for one metric (counters gain ``_total``)."""
    base = name.removesuffix("_total") if kind in ("Counter", "PromCounter") else name
    return {base + suffix for suffix in _SUFFIXES[kind]}


@cache
def code_metrics() -> frozenset[str]:
    """Every series name the services expose: certrail_* metrics defined in the Python sources
    (a grep for their definitions), plus FastStream's middleware metrics under the prefix the
    services give it."""
    names: set[str] = set()
    prefixes: set[str] = set()
    for path in (ROOT / "services").rglob("*.py"):
        text = path.read_text()
        for kind, name in _DEFINITION.findall(text):
            names |= _exposed(kind, name)
        prefixes.update(re.findall(r"metrics_prefix=\"(certrail_[a-z0-9_]+)\"", text))
    assert names, "no metric definitions found in services/"
    assert prefixes, "the FastStream Prometheus middleware is not configured with a certrail_ prefix"
    fs_source = Path(faststream_metrics.__file__).read_text()
    for suffix in re.findall(r"f\"\{metrics_prefix\}_([a-z0-9_]+)\"", fs_source):
        for prefix in prefixes:
            full = f"{prefix}_{suffix}"
            names.add(full)
            if suffix.endswith(("_seconds", "_bytes")):  # FastStream's histograms
                names |= {full + "_bucket", full + "_count", full + "_sum"}
    return frozenset(names)


_METRIC_REF = re.compile(r"(?<![A-Za-z0-9_:])certrail_[a-z0-9_]+")


def referenced_metrics(expr: str) -> set[str]:
    """Metric-like identifiers starting with certrail_ in a PromQL expression (label values in
    quotes are dropped first, so that a regex matcher cannot pose as a metric)."""
    return set(_METRIC_REF.findall(re.sub(r"\"(?:[^\"\\]|\\.)*\"", '""', expr)))


def test_metric_reference_extraction() -> None:
    expr = 'sum by (type) (rate(certrail_messages_published_total{type=~"certrail_not_a_metric"}[5m])) / certrail_x'
    assert referenced_metrics(expr) == {"certrail_messages_published_total", "certrail_x"}
    assert "certrail_issuer_commands_total" in code_metrics()  # a counter defined without _total
    assert "certrail_issuer_commands" not in code_metrics()
    assert "certrail_issuer_emca_request_duration_seconds_bucket" in code_metrics()
    assert "certrail_faststream_received_processed_messages_total" in code_metrics()


# -- alert rules -----------------------------------------------------------------------------------


def _rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alerts() -> list[dict]:
    return [rule for rule in _rules() if "alert" in rule]


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE)}


def test_alerts_cover_the_issue_and_carry_severity_summary_description_runbook() -> None:
    alerts = _alerts()
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names)), "alert names must be unique"
    assert REQUIRED_ALERTS <= set(names)
    anchors = _anchors(OPERATIONS.read_text())
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, alert["alert"]
        annotations = alert["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), alert["alert"]
        url = annotations["runbook_url"]
        assert url.startswith("docs/operations.md#"), url
        assert url.split("#", 1)[1] in anchors, f"{alert['alert']}: no section {url} in docs/operations.md"


def test_alert_rules_use_only_metrics_the_code_defines() -> None:
    defined = code_metrics()
    for rule in _rules():
        used = referenced_metrics(rule["expr"])
        assert used or "up{" in rule["expr"] or "absent(up" in rule["expr"], f"{rule.get('alert')}: no metric"
        missing = used - defined
        assert not missing, f"{rule.get('alert') or rule.get('record')} uses metrics no service defines: {sorted(missing)}"


def test_prometheus_scrapes_every_service() -> None:
    for config_name, host_of in (("prometheus.yml", lambda s: s), ("prometheus.local.yml", lambda s: "127.0.0.1")):
        config = yaml.safe_load((PROMETHEUS / config_name).read_text())
        assert config["rule_files"] == ["rules/*.yml"]
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        for service, port in SERVICE_PORTS.items():
            job = jobs[f"certrail-{service}"]
            assert job.get("metrics_path", "/metrics") == "/metrics"
            if "dns_sd_configs" in job:  # compose: every replica of the service by its DNS name
                (sd,) = job["dns_sd_configs"]
                assert (sd["names"], sd["port"]) == ([host_of(service)], port)
            else:
                (static,) = job["static_configs"]
                assert static["targets"] == [f"{host_of(service)}:{port}"]


def _promtool() -> str | None:
    return shutil.which("promtool") or ("/usr/bin/promtool" if os.access("/usr/bin/promtool", os.X_OK) else None)


def test_promtool_checks_config_and_rules_and_runs_the_rule_unit_tests() -> None:
    if _promtool() is None and os.geteuid() != 0:
        message = "promtool is missing: run `sudo bash scripts/promtool.sh` (installs Debian's prometheus package)"
        if os.environ.get("CI"):
            pytest.fail(message + " -- CI must run this test")
        pytest.skip(message)
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "promtool.sh")], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "FAILED" not in output
    assert output.count("is valid prometheus config file syntax") == 2, output
    assert "Unit Testing:" in output and "SUCCESS" in output, output


def test_rule_unit_tests_cover_every_alert_firing_and_quiet() -> None:
    tests = yaml.safe_load((PROMETHEUS / "tests" / "certrail.rules.test.yml").read_text())
    assert tests["rule_files"] == ["../rules/certrail.rules.yml"]
    checks = [check for case in tests["tests"] for check in case.get("alert_rule_test", [])]
    for alert in _alerts():
        name = alert["alert"]
        assert any(c["alertname"] == name and c.get("exp_alerts") for c in checks), f"{name}: no case where it fires"
        assert any(c["alertname"] == name and not c.get("exp_alerts") for c in checks), f"{name}: no case where it is quiet"


# -- Grafana ---------------------------------------------------------------------------------------


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return panels


def test_dashboard_structure() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid) and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == datasource["uid"], panel["title"]
    # what the issue asks the dashboard to show
    exprs = " ".join(t["expr"] for p in graphs for t in p["targets"])
    for needle in (
        "certrail_gateway_requests_total",  # request rate and outcomes (both doors)
        "certrail_issuer_emca_request_duration_seconds_bucket",  # emCA latency per connector
        "certrail_issuer_emca_errors_total",  # emCA errors per connector
        "certrail_issuer_oldest_queued_command_age_seconds",  # queue age
        "certrail_consumer_lag_records",  # lag
        "certrail_gateway_certificates_by_days_to_expiry",  # days to expiry
        "certrail_deployer_deployments_total",  # deployments
        "certrail_audit_records_stored_total",  # audit ingest
    ):
        assert needle in exprs, needle


def test_dashboard_uses_only_metrics_the_code_defines() -> None:
    defined = code_metrics()
    for panel in _panels(_dashboard()):
        for target in panel.get("targets", []):
            used = referenced_metrics(target["expr"])
            assert used or re.search(r"\bup\{", target["expr"]), f"{panel['title']}: {target['expr']}"
            assert not used - defined, f"{panel['title']} uses metrics no service defines: {sorted(used - defined)}"


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    grafana_mounts = dict(m.split(":")[:2] for m in compose["grafana"]["volumes"])
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "certrail.yml").read_text())["providers"][0]
    assert grafana_mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert grafana_mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    prometheus_mounts = dict(m.split(":")[:2] for m in compose["prometheus"]["volumes"])
    assert prometheus_mounts["./deploy/prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in compose["prometheus"]["command"]


# -- docker compose (the client, where one with the compose plugin is installed) -------------------


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_is_valid() -> None:
    """`docker compose config -q` needs no daemon, only the client with the compose plugin;
    without it the structure is still checked by tests/unit/test_deploy_files.py."""
    client = _compose_client()
    if client is None:
        pytest.skip("no docker compose client (the compose plugin is not installed)")
    placeholders = {
        name: "placeholder-not-a-secret"
        for name in re.findall(r"\$\{([A-Z0-9_]+):\?", (ROOT / "docker-compose.yml").read_text())
    }
    env = {**os.environ, **placeholders}
    command = [*client, "--env-file", os.devnull, "-f", "docker-compose.yml", "config", "-q"]  # ignore a local .env
    result = subprocess.run(command, cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    missing = subprocess.run(command, cwd=ROOT,
                             env={k: v for k, v in env.items() if k != "POSTGRES_PASSWORD"},
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr
