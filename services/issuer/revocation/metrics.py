"""Prometheus metrics of revocation confirmation (deploy/prometheus/rules/lifecycle.rules.yml alerts on them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.contracts.revocation import UnconfirmedCause

#: results of one CRL read, as certrail_issuer_crl_fetches counts them
FETCH_RESULTS = ("ok", "unavailable", "untrusted")


class RevocationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.confirmed = Counter(
            "certrail_issuer_revocations_confirmed", "Revocations whose serial the CA's CRL (signed by the pinned "
            "issuing CA) lists with the requested reason.", ["connector"], registry=registry,
        )
        self.unconfirmed = Counter(
            "certrail_issuer_revocations_unconfirmed", "Revocations emCA accepted that its CRL did not list with the "
            "requested reason within the deadline (RevocationUnconfirmed), by cause.", ["connector", "cause"],
            registry=registry,
        )
        self.pending = Gauge(
            "certrail_issuer_revocation_confirmations_pending", "Revocations waiting to be seen on the CA's CRL "
            "(every instance reports the shared table's count: use max, not sum).", ["connector"], registry=registry,
        )
        self.fetches = Counter(
            "certrail_issuer_crl_fetches", "CRLs read from certificates' distribution points, by result "
            "(ok, unavailable, untrusted).", ["connector", "result"], registry=registry,
        )
        self.seconds_to_confirm = Histogram(
            "certrail_issuer_revocation_confirmation_seconds", "From emCA's acceptance of a revocation to the CRL "
            "that lists it.", buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600), registry=registry,
        )

    def known(self, connector: str) -> None:
        """The connector's series exist at 0 from its first revocation on, so alerts can use increase() on them."""
        self.confirmed.labels(connector)
        for cause in UnconfirmedCause:
            self.unconfirmed.labels(connector, cause.value)
        for result in FETCH_RESULTS:
            self.fetches.labels(connector, result)
