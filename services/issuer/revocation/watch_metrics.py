"""Prometheus metrics of the out-of-band revocation watch (deploy/prometheus/rules/lifecycle.rules.yml alerts on
them). The gauges are read from the shared ``issuer_crl_watch`` table by every instance: use max, not sum."""

from __future__ import annotations

from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.issuer.revocation.watch_store import WatchRound


class WatchMetrics:
    def __init__(self, registry: CollectorRegistry, interval_s: float) -> None:
        self.out_of_band = Counter(
            "certrail_issuer_revocations_out_of_band", "Serials certrail issued that the CA's CRL lists though certrail "
            "never asked to revoke them (RevokedOutOfBand), by connector.", ["connector"], registry=registry,
        )
        self.rounds = Counter(
            "certrail_issuer_crl_watch_rounds", "Rounds of the out-of-band watch (one CRL read per distribution point), "
            "by result (ok, failed).", ["connector", "result"], registry=registry,
        )
        self.last_success = Gauge(
            "certrail_issuer_crl_watch_last_success_timestamp_seconds", "When the connector's CRL watch last read and "
            "verified every CRL it needed (never: when the watch started).", ["connector"], registry=registry,
        )
        self.failures = Gauge(
            "certrail_issuer_crl_watch_consecutive_failures", "Failed rounds of the connector's CRL watch since its last "
            "good one.", ["connector"], registry=registry,
        )
        self.live = Gauge(
            "certrail_issuer_crl_watch_live_serials", "Live serials the connector's CRL watch checks.", ["connector"],
            registry=registry,
        )
        self.interval = Gauge(
            "certrail_issuer_crl_watch_interval_seconds", "CERTRAIL_ISSUER_CRL_WATCH_INTERVAL_S: how often each "
            "connector's CRL is read for the out-of-band watch.", registry=registry,
        )
        self.interval.set(interval_s)
        self._interval = timedelta(seconds=interval_s)
        self._reported: set[str] = set()

    def known(self, connector: str) -> None:
        """The connector's counters exist at 0 from its first round on, so alerts can use increase() on them."""
        self.out_of_band.labels(connector)
        for result in ("ok", "failed"):
            self.rounds.labels(connector, result)

    def report(self, rounds: dict[str, WatchRound], now: datetime) -> None:
        """The gauges of every connector watched within three intervals (a deleted connector's watch stops: its
        series go, instead of alerting forever)."""
        current = {c: w for c, w in rounds.items() if w.last_attempt_at >= now - 3 * self._interval}
        for connector in self._reported - set(current):
            for gauge in (self.last_success, self.failures, self.live):
                gauge.remove(connector)
        for connector, watch in current.items():
            self.last_success.labels(connector).set((watch.last_ok_at or watch.started_at).timestamp())
            self.failures.labels(connector).set(watch.failures)
            self.live.labels(connector).set(watch.live_serials)
        self._reported = set(current)
