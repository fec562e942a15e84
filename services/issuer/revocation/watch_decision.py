"""The out-of-band revocation watch's decisions (decision 0030), pure functions with the clock passed in:

- `owned_connectors`: the connectors whose watch this instance runs: those whose command topic's partition 0 it
  holds (exactly one member of the issuers' group holds it; the watch moves with it on a rebalance);
- `watch_due` / `next_watch`: a connector's CRL is read once per interval, sooner again after a failed round;
- `listed_entries`: one pass over a verified CRL, the entries of the serials asked about;
- `out_of_band`: the live serials the CRL lists that certrail did not revoke (no revocation command of its own).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.common.contracts.identity import normalise_serial
from services.common.contracts.topics import Topics
from services.issuer.revocation.crl_check import VerifiedCrl, listed_reason_name


@dataclass(frozen=True)
class LiveSerial:
    """A serial certrail issued, unexpired, with no revocation of certrail's, watched at its distribution point."""

    certificate_id: str
    serial: str  # lower-case hex, as issued
    request_id: str | None
    distribution_point: str


@dataclass(frozen=True)
class CrlEntry:
    reason: str  # as RFC 5280 names it (no reasonCode: unspecified)
    revoked_at: datetime


@dataclass(frozen=True)
class Finding:
    live: LiveSerial
    entry: CrlEntry


def owned_connectors(assigned: Iterable[tuple[str, int]], topics: Topics) -> set[str]:
    """The connectors whose command topic's partition 0 is among ``assigned``."""
    prefix = f"{topics.prefix}.commands."
    return {topic.removeprefix(prefix) for topic, partition in assigned if partition == 0 and topic.startswith(prefix)}


def watch_due(next_at: datetime | None, now: datetime) -> bool:
    """Whether a connector's watch runs now (never run: at once)."""
    return next_at is None or next_at <= now


def next_watch(now: datetime, *, ok: bool, interval_s: float, retry_s: float) -> datetime:
    """The next round: one interval after a good one; after a failed one, ``retry_s`` (never later than the interval)."""
    return now + timedelta(seconds=interval_s if ok else min(retry_s, interval_s))


def listed_entries(crl: VerifiedCrl, serials: Iterable[str]) -> dict[str, CrlEntry]:
    """The CRL's entries for ``serials`` (hex), by serial as given: one pass over the CRL, whatever its size."""
    wanted = {int(serial, 16): serial for serial in serials}
    found: dict[str, CrlEntry] = {}
    for entry in crl.crl:
        serial = wanted.get(entry.serial_number)
        if serial is not None:
            found[serial] = CrlEntry(listed_reason_name(entry), entry.revocation_date_utc)
    return found


def out_of_band(live: Sequence[LiveSerial], listed: Mapping[str, CrlEntry], revoked_by_certrail: Set[str]) -> list[Finding]:
    """The live serials on the CRL that certrail did not ask to revoke (``revoked_by_certrail``: normalised serials
    of every revocation command of certrail's, answered or not)."""
    return [Finding(s, listed[s.serial]) for s in live
            if s.serial in listed and normalise_serial(s.serial) not in revoked_by_certrail]
