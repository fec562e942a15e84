"""Validating a connector against its emCA before it is stored enabled.

The checks run in order and stop at the first failure (each needs the one before):

| check | how | failure code |
|---|---|---|
| connection | open the client (PFX / AES key usable), then an authenticated read-only call | CA_UNREACHABLE, CA_TLS_UNTRUSTED, CA_AUTH_FAILED (also CA_DECRYPTION_FAILED, CA_SIGNATURE_FAILED, CA_PROTOCOL_ERROR) |
| issuing CA | exact, case-sensitive name among the CAs emCA lists (4.2.x getCAs; V4.0.17: the CA the default profile implies), else its chain by that exact name; the issuing CA certificate is pinned (SHA-256 of its DER) | ISSUING_CA_NOT_FOUND, naming the near matches |
| profile | the default profile exists and is issued by that CA | CA_PROFILE_NOT_FOUND, naming the CA's profiles that come close |
| subscriber | `EmcaConnection.check_subscriber`: a createCertificate(s) with a CSR whose signature is broken, so nothing is issued | SUBSCRIBER_INVALID |

A transient failure (5xx, 429, timeout, refused connection) at any step is reported as
CA_UNREACHABLE: the connector cannot be shown valid now.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from services.common.connectors.models import ConnectorSpec
from services.common.contracts.errors import ErrorCode
from services.common.emca.support import certificate_sha256
from services.common.emca.types import EmcaConnection, EmcaEndpoint, EmcaError, RequestPermanentError
from services.issuer.registry.repository import Pin, endpoint_for

__all__ = ["CheckOutcome", "ValidationReport", "near_matches", "validate_connector"]

CONNECTION, ISSUING_CA, PROFILE, SUBSCRIBER = "connection", "issuing_ca", "profile", "subscriber"
CHECKS = (CONNECTION, ISSUING_CA, PROFILE, SUBSCRIBER)


@dataclass(frozen=True)
class CheckOutcome:
    check: str
    ok: bool
    message: str
    code: ErrorCode | None = None


@dataclass(frozen=True)
class ValidationReport:
    checks: tuple[CheckOutcome, ...]
    tested_at: datetime
    pin: Pin | None = None  # set when every check passed

    @property
    def ok(self) -> bool:
        return self.pin is not None and all(c.ok for c in self.checks) and len(self.checks) == len(CHECKS)

    @property
    def failure(self) -> CheckOutcome | None:
        return next((c for c in self.checks if not c.ok), None)

    def summary(self) -> str:
        failed = self.failure
        if failed is None:
            return "; ".join(f"{c.check}: {c.message}" for c in self.checks)
        return f"{failed.code}: {failed.message}"


def near_matches(name: str, candidates: Sequence[str], *, limit: int = 3) -> list[str]:
    """The candidates that differ from ``name`` only in case; failing those, difflib's close matches."""
    unique = list(dict.fromkeys(candidates))
    same_but_case = [c for c in unique if c != name and c.casefold() == name.casefold()]
    if same_but_case:  # a case slip: that is the answer
        return same_but_case[:limit]
    folded = {c.casefold(): c for c in unique}
    close = difflib.get_close_matches(name.casefold(), list(folded), n=limit, cutoff=0.6)
    return [folded[c] for c in close if folded[c] != name]


def _did_you_mean(matches: Sequence[str]) -> str:
    return (" Did you mean " + " or ".join(repr(m) for m in matches) + "?") if matches else ""


class _Failed(Exception):
    def __init__(self, outcome: CheckOutcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def _fail(check: str, code: ErrorCode, message: str) -> _Failed:
    return _Failed(CheckOutcome(check, False, message, code))


def _from_error(check: str, error: EmcaError) -> _Failed:
    return _fail(check, error.code, error.message)


async def _issuing_ca(connection: EmcaConnection, spec: ConnectorSpec) -> Pin:
    cas = await connection.list_issuing_cas(via_profiles=[spec.default_profile])
    exact = next((ca for ca in cas if ca.name == spec.issuing_ca), None)
    if exact is not None:
        try:
            chain = await connection.get_chain(spec.issuing_ca)
        except EmcaError:
            chain = (exact.certificate_pem,)
        if not chain or certificate_sha256(chain[0]) != exact.sha256:
            chain = (exact.certificate_pem,)  # the listed certificate is what we pin
        return Pin(exact.sha256, tuple(chain))
    try:  # not listed (V4.0.17 lists only what its profiles imply): ask for it by its exact name
        chain = await connection.get_chain(spec.issuing_ca)
    except EmcaError as error:
        if error.code is not ErrorCode.ISSUING_CA_NOT_FOUND:
            raise
        matches = near_matches(spec.issuing_ca, [ca.name for ca in cas])
        known = "" if matches or not cas else f" emCA knows: {', '.join(repr(ca.name) for ca in cas)}."
        raise _fail(
            ISSUING_CA,
            ErrorCode.ISSUING_CA_NOT_FOUND,
            f"emCA has no issuing CA named exactly {spec.issuing_ca!r} (names are case-sensitive).{_did_you_mean(matches)}{known}",
        ) from None
    return Pin(certificate_sha256(chain[0]), tuple(chain))


async def _profile(connection: EmcaConnection, spec: ConnectorSpec) -> str:
    try:
        info = await connection.profile_info(spec.default_profile)
    except RequestPermanentError as error:
        if error.code is not ErrorCode.CA_PROFILE_NOT_FOUND:
            raise
        names = [p.name for p in await connection.list_profiles(spec.issuing_ca)]
        matches = near_matches(spec.default_profile, names)
        listing = f" Profiles of {spec.issuing_ca!r}: {', '.join(repr(n) for n in names)}." if names and not matches else ""
        raise _fail(
            PROFILE,
            ErrorCode.CA_PROFILE_NOT_FOUND,
            f"emCA has no certificate profile named exactly {spec.default_profile!r}.{_did_you_mean(matches)}{listing}",
        ) from None
    if info.issuing_ca is not None and info.issuing_ca != spec.issuing_ca:
        raise _fail(
            PROFILE,
            ErrorCode.CA_PROFILE_NOT_FOUND,
            f"the profile {spec.default_profile!r} is issued by {info.issuing_ca!r}, not by {spec.issuing_ca!r}",
        )
    return f"profile {info.name!r} found" + (" (manual approval)" if info.manual_approval else "")


async def validate_connector(
    spec: ConnectorSpec,
    connect: Callable[[EmcaEndpoint], EmcaConnection],
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ValidationReport:
    """Run every check against emCA; never raises for emCA's answers (they are the report)."""
    done: list[CheckOutcome] = []
    pin: Pin | None = None
    check = CONNECTION
    connection: EmcaConnection | None = None
    try:
        try:
            connection = connect(endpoint_for(spec))
            await connection.check_connection()
            done.append(CheckOutcome(CONNECTION, True, f"{spec.base_url} reachable over verified TLS; credentials accepted"))
            check = ISSUING_CA
            pin = await _issuing_ca(connection, spec)
            done.append(CheckOutcome(ISSUING_CA, True, f"{spec.issuing_ca!r} found; pinned SHA-256 {pin.sha256}"))
            check = PROFILE
            done.append(CheckOutcome(PROFILE, True, await _profile(connection, spec)))
            check = SUBSCRIBER
            probe = await connection.check_subscriber(profile_name=spec.default_profile, subscriber_id=spec.subscriber_id)
            done.append(CheckOutcome(SUBSCRIBER, True, probe.note))
        except EmcaError as error:
            raise _from_error(check, error) from None
    except _Failed as failed:
        done.append(failed.outcome)
        pin = None
    finally:
        if connection is not None:
            await connection.aclose()
    return ValidationReport(checks=tuple(done), tested_at=clock(), pin=pin)
