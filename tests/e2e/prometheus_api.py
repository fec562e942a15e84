"""A real Prometheus seen through its HTTP API (tests/e2e/test_prometheus_live.py): queries, rule
health, alert states, and the dashboard's expressions with Grafana's variables substituted."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "certrail.json"
RULES = ROOT / "deploy" / "prometheus" / "rules"
#: Grafana's built-in variables, as the test substitutes them (the dashboard defines no variables of its own)
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$service": ".*"}


class Prometheus:
    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=10)

    def close(self) -> None:
        self.client.close()

    def _get(self, path: str, **params: str) -> Any:
        answer = self.client.get(path, params=params)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", f"{path} {params}: {answer.text[:500]}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self._get("/api/v1/query", query=expr)
        assert data["resultType"] in ("vector", "scalar", "matrix"), data
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def metric_names(self) -> set[str]:
        return set(self._get("/api/v1/label/__name__/values"))

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self._get("/api/v1/rules")["groups"] for rule in group["rules"]]

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/rules")["groups"])

    def alerts(self, name: str, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """The active (pending or firing) alerts named ``name`` whose labels include ``labels``."""
        return [alert for alert in self._get("/api/v1/alerts")["alerts"]
                if alert["labels"].get("alertname") == name
                and all(alert["labels"].get(k) == v for k, v in (labels or {}).items())]

    def firing_at(self, name: str, labels: Mapping[str, str], start: float, end: float) -> list[float]:
        """The times (unix seconds, ``start``..``end``, every 0.2 s) at which the alert was ``firing``, from
        Prometheus's own ``ALERTS`` series (written at each rule evaluation, marked stale when it resolves)."""
        selector = ",".join([f'alertname="{name}"', 'alertstate="firing"', *(f'{k}="{v}"' for k, v in labels.items())])
        data = self._get("/api/v1/query_range", query=f"ALERTS{{{selector}}}", start=f"{start:.3f}", end=f"{end:.3f}",
                         step="0.2")
        return sorted(float(at) for series in data["result"] for at, _ in series["values"])

    def target_jobs(self) -> set[str]:
        """The jobs that have at least one active scrape target."""
        return {target["labels"]["job"] for target in self._get("/api/v1/targets", state="active")["activeTargets"]}

    def reload(self) -> None:
        """Reads its configuration file again (``--web.enable-lifecycle``)."""
        answer = self.client.post("/-/reload")
        assert answer.status_code == 200, f"/-/reload: {answer.status_code} {answer.text[:500]}"

    def state(self, name: str, labels: Mapping[str, str] | None = None) -> str:
        """``firing``, ``pending`` or ``inactive`` (no such active alert)."""
        states = {alert["state"] for alert in self.alerts(name, labels)}
        return "firing" if "firing" in states else "pending" if "pending" in states else "inactive"


def samples(text: str, name: str, labels: Mapping[str, str] | None = None) -> list[float]:
    """Every sample of ``name`` in a /metrics text whose labels include ``labels``."""
    values = []
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if match:
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1) or ""))
            if all(found.get(k) == v for k, v in (labels or {}).items()):
                values.append(float(match.group(2)))
    return values


def wait_for(predicate: Callable[[], object], what: str, timeout_s: float, interval_s: float = 0.2) -> float:
    """Polls until ``predicate`` is true; returns the monotonic time it was first seen true."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expression with Grafana's variables substituted) of every target of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(variable, value)
            assert "$" not in re.sub(r'"[^"]*"', "", expr), f"{panel['title']}: a variable is left in {expr}"
            out.append((panel["title"], expr))
    return out


@dataclass(frozen=True)
class Substitution:
    """One parameter of an alert's expression that the live test's copy shortens: every occurrence of
    ``production`` (exactly ``count`` of them) becomes ``test``, which the production expression must not hold,
    so that the copy turns back into the production expression by the reverse replacement."""

    production: str
    test: str
    count: int

    def apply(self, expr: str) -> str:
        assert expr.count(self.production) == self.count, f"{self.production!r} in {expr!r}: want {self.count}"
        assert self.test not in expr, f"{self.test!r} is already in {expr!r}: the copy could not be reverted"
        return expr.replace(self.production, self.test)

    def revert(self, expr: str) -> str:
        return expr.replace(self.test, self.production)


def shorter_for_copy(destination: Path, for_s: int,
                     substitutions: Mapping[str, Substitution] | None = None) -> dict[str, dict[str, Any]]:
    """deploy/prometheus/rules with every alert's ``for`` cut to ``for_s`` seconds and the expressions of
    the alerts named in ``substitutions`` shortened by theirs (everything else unchanged) in ``destination``;
    returns the original rules by alert name."""
    destination.mkdir(parents=True, exist_ok=True)
    originals: dict[str, dict[str, Any]] = {}
    for path in sorted(RULES.glob("*.yml")):
        document = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    originals[rule["alert"]] = dict(rule)
                    if "for" in rule:
                        rule["for"] = f"{for_s}s"
                    if rule["alert"] in (substitutions or {}):
                        rule["expr"] = (substitutions or {})[rule["alert"]].apply(rule["expr"])
        (destination / path.name).write_text(yaml.safe_dump(document, sort_keys=False, width=1000))
    assert set(substitutions or {}) <= set(originals), f"no such alerts: {set(substitutions or {}) - set(originals)}"
    return originals


def seconds(duration: str) -> float:
    """A Prometheus duration (``2m``, ``5s``, ``1h``) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0.0
    for number, unit in re.findall(r"(\d+)(ms|s|m|h|d)", duration):
        total += int(number) * units[unit]
    return total
