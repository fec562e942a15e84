"""The deployer's key retirement (issue 20, decision 0026): a bot-held private key that is no longer
needed is destroyed, and each destruction is recorded as `BotKeyDestroyed` on
``certrail.events.deployer`` keyed by the certificate id. The event names the key by its public-key
hash only: it never carries key material."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AwareDatetime, Field

from services.common.contracts.envelope import Message
from services.common.contracts.events import TargetRef
from services.common.contracts.fields import ErrorInfo, Part, Sha256Hex
from services.common.contracts.identity import CertificateId, ProfileName, Serial


class KeyRetirementReason(StrEnum):
    SUPERSEDED = "superseded"  # a newer key's certificate is deployed, or the serial was revoked (not keyCompromise)
    KEY_COMPROMISE = "key_compromise"  # the serial was revoked for keyCompromise: destroyed at once


class KeyCopyOutcome(StrEnum):
    REMOVED = "removed"  # the target holds no copy any more (removed now, or already gone)
    IN_USE = "in_use"  # the target still serves this serial (its current files): left untouched
    NOT_REMOVABLE = "not_removable"  # the kind cannot take a copy back (a webhook receiver that was sent the key)
    FAILED = "failed"  # removing it failed (error says why); a later deployment's prune may remove it


class KeyCopy(Part):
    """What became of the copy of the key on one target that had this serial deployed."""

    target: TargetRef
    outcome: KeyCopyOutcome
    error: ErrorInfo | None = None


class BotKeyDestroyed(Message):
    TYPE: ClassVar[str] = "io.certrail.bot_key.destroyed.v1"
    CHANNEL: ClassVar[str] = "events.deployer"
    SUMMARY: ClassVar[str] = ("The deployer destroyed a bot-held private key (superseded after its grace period, or at "
                              "once for keyCompromise) and removed its copies from the targets that can take them back.")

    certificate_id: CertificateId
    serial: Serial | None = None  # None: a key whose certificate was never issued
    profile: ProfileName
    public_key_sha256: Sha256Hex
    reason: KeyRetirementReason
    superseded_at: AwareDatetime  # when it stopped being needed (the grace period counts from here)
    destroyed_at: AwareDatetime
    copies: Annotated[list[KeyCopy], Field(max_length=64)] = Field(default_factory=list)


KEY_EVENT_TYPES: list[type[Message]] = [BotKeyDestroyed]
