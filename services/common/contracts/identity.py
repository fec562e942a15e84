"""Identities and deterministic message ids (DESIGN.md, "Identity").

- ``certificate_id``: the managed certificate, stable across renewals; the Kafka
  key of everything about it.
- ``request_id``: chosen by the requester; the gateway's dedupe key.
- ``issuance_id``: one issuance attempt, derived from the certificate and its
  revision; emCA's applicationId.
- ``serial``: what emCA issued, as lower-case hex without separators.
- message ids: UUIDv5 of the causing message's id and the new message's type,
  so a redelivered command re-emits byte-identical events.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated

from pydantic import StringConstraints

from services.common.contracts.topics import CONNECTOR_NAME_PATTERN

#: namespaces of certrail's UUIDv5 ids (fixed forever: changing one changes every id).
NAMESPACE_MESSAGE = uuid.UUID("6d1f8a52-3c1e-5b7a-9f0e-2a4b8c6d0e11")
NAMESPACE_ISSUANCE = uuid.UUID("0b9c4e7a-5d2f-5a31-8e6c-7f1a2b3c4d5e")
NAMESPACE_ROOT = uuid.UUID("c3a1e5f7-9b2d-5c4e-a6f8-1d3b5c7e9f20")

CERTIFICATE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}$"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
IDENTITY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
PROFILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
SERIAL_PATTERN = r"^[0-9a-f]{1,40}$"

CertificateId = Annotated[str, StringConstraints(pattern=CERTIFICATE_ID_PATTERN)]
RequestId = Annotated[str, StringConstraints(pattern=REQUEST_ID_PATTERN)]
Identity = Annotated[str, StringConstraints(pattern=IDENTITY_PATTERN)]
ProfileName = Annotated[str, StringConstraints(pattern=PROFILE_NAME_PATTERN)]
ConnectorName = Annotated[str, StringConstraints(pattern=CONNECTOR_NAME_PATTERN)]
IssuanceId = Annotated[str, StringConstraints(pattern=UUID_PATTERN)]
MessageId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Serial = Annotated[str, StringConstraints(pattern=SERIAL_PATTERN)]


def _join(parts: list[str]) -> str:
    """An unambiguous encoding of several strings (no separator collisions)."""
    return json.dumps(parts, separators=(",", ":"), ensure_ascii=False)


def message_id(causation_id: str, message_type: str, discriminator: str = "") -> str:
    """The id of a message caused by ``causation_id``.

    ``discriminator`` separates several messages of one type caused by the same
    message (e.g. one CertificateDeployed per target)."""
    parts = [causation_id, message_type, discriminator] if discriminator else [causation_id, message_type]
    return str(uuid.uuid5(NAMESPACE_MESSAGE, _join(parts)))


def root_message_id(origin: str, key: str, message_type: str) -> str:
    """The id of a message with no causing message (an upstream request, an
    admin action), derived from where it came from and its natural key."""
    return str(uuid.uuid5(NAMESPACE_ROOT, _join([origin, key, message_type])))


def issuance_id(certificate_id: str, revision: int) -> str:
    """emCA's applicationId for the ``revision``-th issuance of a certificate."""
    if revision < 1:
        raise ValueError("revision starts at 1")
    return str(uuid.uuid5(NAMESPACE_ISSUANCE, _join([certificate_id, str(revision)])))


def renewal_due_id(certificate_id: str, replaced_serial: str) -> str:
    """RenewalDue's id: one per certificate and serial it replaces, so a
    scheduler tick never repeats it."""
    return message_id(_join([certificate_id, normalise_serial(replaced_serial)]), "renewal-due")


def normalise_serial(serial: str | int) -> str:
    """A serial as lower-case hex without separators or leading zeros."""
    if isinstance(serial, int):
        if serial < 0:
            raise ValueError("serial numbers are positive")
        return format(serial, "x")
    text = serial.strip().lower().replace(":", "").replace(" ", "")
    if text.startswith("0x"):
        text = text[2:]
    if not text or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"not a hexadecimal serial number: {serial!r}")
    return text.lstrip("0") or "0"
