"""Renewal storm: thousands of certificates due at once, spread by the scheduler's per-connector rate limit.

    .venv/bin/python -m bench.renewal_storm --certificates 5000 --connectors 2 --limit 60 --interval 30

A synthetic fleet (one profile, 90-day certificates all issued at the same moment, spread over
``--connectors`` connectors, the first holding half of them) is handed to ``plan_tick``, the
scheduler's pure decision, tick after tick with a simulated clock, starting when every certificate is
already due (the scheduler was down through the whole jitter window). What each tick decided is
folded back into the next snapshot exactly as the store would (the notice recorded, the connector's
count within the sliding minute). Nothing touches a database or Kafka: this measures the spread and
the decision's CPU cost, not the publish path.

Reported: per connector, how long the backlog takes to drain (simulated time), the most RenewalDue
in any sliding minute (must not exceed ``--limit``), and the CPU time of one tick (mean and worst).
Also, for the same fleet *not* overdue, how the jitter alone spreads certificates issued together:
the busiest minute of renewal times.
"""

from __future__ import annotations

import argparse
import bisect
import json
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

from services.common.contracts.fields import KeyGeneration
from services.common.contracts.topics import Topics
from services.gateway.policy.profile import ProvisioningProfile
from services.gateway.scheduler import RENEWAL_DUE, SchedulerSettings, Snapshot, WatchedCertificate, plan_tick, renewal_at
from services.gateway.scheduler.policy import RATE_WINDOW

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIFETIME = timedelta(days=90)


def _profile(connector: str) -> ProvisioningProfile:
    return ProvisioningProfile.model_validate_json(json.dumps({
        "name": "fleet", "connector": connector, "ca_profile": "TLS Server", "key_generation": KeyGeneration.BOT.value,
        "bot_key_algorithm": "EC-P256", "allowed_requesters": ["certrail-deployer"],
        "domain_rules": {"dns_suffixes": ["fleet.example"]}, "validity_days": 90, "deployment_target": "files"}))


def _fleet(count: int, connectors: int) -> list[WatchedCertificate]:
    names = [f"emca-{i}" for i in range(connectors)]
    fleet = []
    for i in range(count):
        # the first connector holds half of the fleet, the others share the rest
        connector = names[0] if i % 2 == 0 or connectors == 1 else names[1 + (i // 2) % (connectors - 1)]
        fleet.append(WatchedCertificate(certificate_id=f"host-{i:06d}.fleet.example", serial=format(0x10_0000 + i, "x"),
                                        not_before=T0, not_after=T0 + LIFETIME, profile="fleet", connector=connector,
                                        requester="fleet-team"))
    return fleet


def storm(count: int, connectors: int, limit: int, interval_s: float) -> dict[str, object]:
    settings = SchedulerSettings(interval_s=interval_s, lease_ttl_s=interval_s * 3, max_renewals_per_connector_per_minute=limit)
    topics = Topics("bench.certrail")
    fleet = _fleet(count, connectors)
    profiles = {"fleet": _profile("emca-0")}
    sent: set[tuple[str, str, str]] = set()
    sent_at: dict[str, list[datetime]] = defaultdict(list)  # connector -> times of its RenewalDue, ascending
    now = T0 + LIFETIME * (2 / 3) + timedelta(days=7)  # every certificate is due (overdue by days)
    tick_cpu: list[float] = []
    drained_at: dict[str, datetime] = {}
    per_connector = Counter(c.connector for c in fleet)
    done: Counter[str] = Counter()
    busiest_tick: Counter[str] = Counter()  # connector -> most RenewalDue it got in one tick
    while len(drained_at) < len(per_connector):
        recent = {c: len(times) - bisect.bisect_right(times, now - RATE_WINDOW) for c, times in sent_at.items()}
        snapshot = Snapshot(certificates=fleet, profiles=profiles, sent=sent, recent_renewals=recent, pending=[])
        started = time.process_time()
        plan = plan_tick(snapshot, now, settings, topics)
        tick_cpu.append(time.process_time() - started)
        for connector, in_tick in Counter(n.connector for n in plan.renewals).items():
            assert connector is not None
            busiest_tick[connector] = max(busiest_tick[connector], in_tick)
        for notice in plan.renewals:
            assert notice.connector is not None
            sent.add((notice.certificate_id, notice.serial, RENEWAL_DUE))
            sent_at[notice.connector].append(now)
            done[notice.connector] += 1
            if done[notice.connector] == per_connector[notice.connector]:
                drained_at[notice.connector] = now
        sent |= {(n.certificate_id, n.serial, n.kind) for n in plan.expiring}
        now += timedelta(seconds=interval_s)
    start = T0 + LIFETIME * (2 / 3) + timedelta(days=7)
    busiest = {}
    for connector, times in sent_at.items():
        busiest[connector] = max(bisect.bisect_right(times, t + RATE_WINDOW - timedelta(microseconds=1)) - i
                                 for i, t in enumerate(times))
    policy = profiles["fleet"].renewal
    due_minutes = Counter(renewal_at(policy, c.certificate_id, c.serial, c.not_before, c.not_after, settings)
                          .replace(second=0, microsecond=0) for c in fleet)
    return {
        "certificates": count, "per_connector": dict(per_connector), "limit_per_minute": limit, "interval_s": interval_s,
        "ticks": len(tick_cpu),
        "drain_minutes": {c: round((t - start).total_seconds() / 60, 1) for c, t in sorted(drained_at.items())},
        "busiest_sliding_minute": dict(sorted(busiest.items())),
        "busiest_tick": dict(sorted(busiest_tick.items())),
        "tick_cpu_ms_mean": round(1000 * sum(tick_cpu) / len(tick_cpu), 1),
        "tick_cpu_ms_max": round(1000 * max(tick_cpu), 1),
        "jitter_only_busiest_minute": max(due_minutes.values()),
        "jitter_window_minutes": round(min(LIFETIME * settings.jitter_fraction, settings.jitter_max).total_seconds() / 60),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--certificates", type=int, default=5000)
    parser.add_argument("--connectors", type=int, default=2)
    parser.add_argument("--limit", type=int, default=60, help="max_renewals_per_connector_per_minute")
    parser.add_argument("--interval", type=float, default=30.0, help="interval_s")
    args = parser.parse_args()
    result = storm(args.certificates, args.connectors, args.limit, args.interval)
    for key, value in result.items():
        print(f"{key}: {value}")
    busiest = result["busiest_sliding_minute"]
    assert isinstance(busiest, dict) and max(busiest.values()) <= args.limit, "the rate limit was exceeded"


if __name__ == "__main__":
    main()
