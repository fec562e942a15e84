"""The deployment-target interface: deploy, verify, rollback.

A target installs one `Bundle` (certificate, chain and, for bot-held keys, the
private key) on one system. The deployer calls, for each bound target:

1. ``deploy(bundle)``: install it (keeping what was there for rollback);
2. ``verify(bundle)``: prove the system now uses it; returns the serial seen;
3. on a failure of 1 or 2: ``rollback(bundle)``: put back what was there
   before the bundle (and prove it where the target can); returns False when
   there was nothing to put back.

Every failure is a `TargetError` with a stable `ErrorCode` and a message fit
for an event (no secret, no key material). ``transient`` says whether trying
again later may help (the target did not answer) or not (it answered no).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.common.contracts.errors import ErrorCode
from services.common.contracts.identity import normalise_serial


class TargetError(Exception):
    """A deployment step failed. ``message`` never contains secrets or keys."""

    def __init__(self, code: ErrorCode, message: str, *, transient: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message[:1900] or str(code)
        self.transient = transient


@dataclass(frozen=True)
class Bundle:
    """What a target installs. ``private_key_pem`` is set for bot-held keys only;
    it is never shown (repr) and never leaves the deployer except to the target."""

    certificate_id: str
    serial: str
    certificate_pem: str
    chain_pem: tuple[str, ...] = ()
    private_key_pem: bytes | None = field(default=None, repr=False)

    @property
    def fullchain_pem(self) -> str:
        return "".join(_with_newline(p) for p in (self.certificate_pem, *self.chain_pem))

    @property
    def chain_text(self) -> str:
        return "".join(_with_newline(p) for p in self.chain_pem)


def _with_newline(pem: str) -> str:
    return pem if pem.endswith("\n") else pem + "\n"


def certificate_serial(pem: str | bytes) -> str:
    """The serial of the first certificate in ``pem`` (lower-case hex)."""
    raw = pem.encode() if isinstance(pem, str) else pem
    return normalise_serial(x509.load_pem_x509_certificate(raw).serial_number)


def public_key_sha256(certificate_or_key: x509.Certificate | bytes) -> str:
    """SHA-256 (hex) of the DER SubjectPublicKeyInfo of a certificate or of a PEM private key."""
    if isinstance(certificate_or_key, x509.Certificate):
        public = certificate_or_key.public_key()
    else:
        public = serialization.load_pem_private_key(certificate_or_key, password=None).public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


class DeploymentTarget(Protocol):
    """One configured target. ``kind`` and ``name`` identify it in events and metrics."""

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...

    async def deploy(self, bundle: Bundle) -> None: ...

    async def verify(self, bundle: Bundle) -> str: ...

    async def rollback(self, bundle: Bundle) -> bool: ...


@runtime_checkable
class KeyRetiring(Protocol):
    """A target kind that keeps per-serial versions and can remove a retired key's copies (file, nginx, ssh:
    targets/versioned.py). ``retire_key`` removes the versions of ``serial`` with that key except the one the
    service serves now; True when no copy is left, False when the serial is current there (left as is)."""

    async def retire_key(self, certificate_id: str, serial: str, public_key_sha256: str) -> bool: ...


@runtime_checkable
class ServedRemoving(Protocol):
    """A target kind that can take a revoked certificate back (file, nginx, ssh: targets/files.py). ``remove_served``
    removes ``serial``'s files (and key) when the target serves that serial and reloads the service; True when
    removed, False when it serves another serial (left untouched). Raises TargetError (the files put back)."""

    async def remove_served(self, certificate_id: str, serial: str) -> bool: ...
