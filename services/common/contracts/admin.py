"""Admin events: who changed the configuration, what changed (secrets
redacted) and the outcome. Published by the gateway to ``certrail.events.gateway`` (and, for
deployment targets and bindings, by the deployer to ``certrail.events.deployer``) so the audit log
holds every configuration change."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, JsonValue

from services.common.contracts.envelope import Message
from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import ErrorInfo
from services.common.contracts.identity import ConnectorName, Identity, ProfileName

REDACTED = "***"


class AdminOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    REFUSED = "refused"  # validation failed or the action is not allowed now


Change = Annotated[dict[str, JsonValue], Field(max_length=64)]
TokenId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{4,64}$")]
KeyId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")]
TargetName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]  # the deployer's TARGET_NAME_PATTERN


class _AdminEvent(Message):
    actor: Identity
    outcome: AdminOutcome
    change: Change = Field(default_factory=dict)  # field -> new value; secrets as "***"
    error: ErrorInfo | None = None


class _ConnectorEvent(_AdminEvent):
    connector: ConnectorName


class _ProfileEvent(_AdminEvent):
    profile: ProfileName


class _TokenEvent(_AdminEvent):
    token_id: TokenId


class _RequesterKeyEvent(_AdminEvent):
    requester: Identity
    key_id: KeyId


class ConnectorCreated(_ConnectorEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.connector_created.v1"
    CHANNEL: ClassVar[str] = "events.issuer"  # the registry's owner publishes (decision 0034)
    SUMMARY: ClassVar[str] = "An emCA connector was created (or its creation refused)."


class ConnectorUpdated(_ConnectorEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.connector_updated.v1"
    CHANNEL: ClassVar[str] = "events.issuer"  # the registry's owner publishes (decision 0034)
    SUMMARY: ClassVar[str] = "An emCA connector was edited."


class ConnectorActivated(_ConnectorEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.connector_activated.v1"
    CHANNEL: ClassVar[str] = "events.issuer"  # the registry's owner publishes (decision 0034)
    SUMMARY: ClassVar[str] = "An emCA connector was activated."


class ConnectorDeactivated(_ConnectorEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.connector_deactivated.v1"
    CHANNEL: ClassVar[str] = "events.issuer"  # the registry's owner publishes (decision 0034)
    SUMMARY: ClassVar[str] = "An emCA connector was deactivated."


class ConnectorDeleted(_ConnectorEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.connector_deleted.v1"
    CHANNEL: ClassVar[str] = "events.issuer"  # the registry's owner publishes (decision 0034)
    SUMMARY: ClassVar[str] = "An emCA connector was deleted (or its deletion refused)."


class ProfileCreated(_ProfileEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.profile_created.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "A provisioning profile was created."


class ProfileUpdated(_ProfileEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.profile_updated.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "A provisioning profile was edited."


class ProfileDeleted(_ProfileEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.profile_deleted.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "A provisioning profile was deleted."


class TokenCreated(_TokenEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.token_created.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "An API token was created (the token itself is never published)."


class TokenRevoked(_TokenEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.token_revoked.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "An API token was revoked."


class _TargetEvent(_AdminEvent):
    target: TargetName


class _BindingEvent(_AdminEvent):
    target: TargetName
    profile: ProfileName


class RequesterKeyAdded(_RequesterKeyEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.requester_key_added.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "A key that signs a requester's Kafka requests was registered (never the secret)."


class RequesterKeyRevoked(_RequesterKeyEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.requester_key_revoked.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "A requester key was revoked."


# -- the ACME door (services/gateway/acme/; decision 0033): EAB keys and ACME accounts ---------------------

AcmeAccountId = Annotated[str, Field(pattern=r"^[a-z0-9]{8,64}$")]


class _AcmeEabKeyEvent(_AdminEvent):
    requester: Identity
    eab_key_id: KeyId


class _AcmeAccountEvent(_AdminEvent):
    requester: Identity
    account_id: AcmeAccountId


class AcmeEabKeyCreated(_AcmeEabKeyEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_eab_key_created.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = ("An ACME External Account Binding key was created for a requester and its profiles "
                              "(never the HMAC key).")


class AcmeEabKeyRevoked(_AcmeEabKeyEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_eab_key_revoked.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "An ACME External Account Binding key was revoked (no new account can use it)."


class AcmeAccountCreated(_AcmeAccountEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_account_created.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "An ACME account was created with an External Account Binding key (now bound to it)."


class AcmeAccountUpdated(_AcmeAccountEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_account_updated.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "An ACME account's contacts were changed."


class AcmeAccountKeyChanged(_AcmeAccountEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_account_key_changed.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "An ACME account rolled its key over (RFC 8555 7.3.5): old and new key thumbprints."


class AcmeAccountDeactivated(_AcmeAccountEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_account_deactivated.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "An ACME account was deactivated by its holder; its key authorises nothing from now on."



# -- ACME orders, authorizations and challenges (services/gateway/acme/orders*.py; issue 22 slice 2a) -------

AcmeObjectId = Annotated[str, Field(pattern=r"^[a-z0-9]{8,64}$")]


class _AcmeAuthorizationEvent(_AcmeAccountEvent):
    authorization_id: AcmeObjectId


class _AcmeChallengeEvent(_AcmeAuthorizationEvent):
    challenge_id: AcmeObjectId


class AcmeOrderCreated(_AcmeAccountEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_order_created.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = ("An ACME account placed an order: its identifiers, the profiles allowing them, its "
                              "authorizations (new ones with their challenges, and reused valid ones), its expiry.")
    order_id: AcmeObjectId


class AcmeChallengeStarted(_AcmeChallengeEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_challenge_started.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "An ACME account asked for a challenge's validation: the challenge is processing."


class AcmeChallengeValidated(_AcmeChallengeEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_challenge_validated.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = ("An ACME challenge was validated: the challenge and its authorization are valid, and the "
                              "orders whose authorizations are now all valid are ready.")


class AcmeChallengeFailed(_AcmeChallengeEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_challenge_failed.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = ("An ACME challenge failed (its RFC 8555 problem): the challenge, its authorization and "
                              "the orders waiting for it are invalid.")


class AcmeAuthorizationDeactivated(_AcmeAuthorizationEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_authorization_deactivated.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = ("An ACME account deactivated one of its authorizations; the orders waiting for it are "
                              "invalid.")


# -- ACME finalize and certificates (services/gateway/acme/finalize.py, certificates.py; issue 22 slice 2b) ----


class _AcmeOrderEvent(_AcmeAccountEvent):
    order_id: AcmeObjectId


class AcmeOrderFinalized(_AcmeOrderEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_order_finalized.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = ("An ACME account finalized a ready order: its CSR went through the gateway's intake as an "
                              "issue request (certificate and request ids derived from the order); the order is "
                              "processing until the issuer's outcome.")


class AcmeOrderValid(_AcmeOrderEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_order_valid.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = ("The certificate of an ACME order was issued (the gateway folded CertificateIssued): the "
                              "order is valid and its certificate can be downloaded.")


class AcmeOrderInvalid(_AcmeOrderEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_order_invalid.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = ("An ACME order became invalid after finalize: the intake refused its request or the "
                              "issuance failed (its RFC 8555 problem and certrail's code).")


class AcmeCertificateRevoked(_AcmeOrderEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.acme_certificate_revoked.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = ("An ACME client asked for the revocation of an order's certificate (revokeCert), signed by "
                              "the ordering account or with the certificate's key, and the gateway's intake accepted "
                              "it (its request id); the issuer's CertificateRevoked follows.")


# -- the deployer's configuration (services/deployer/config/), on its own events topic -----------------


class TargetCreated(_TargetEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.target_created.v1"
    CHANNEL: ClassVar[str] = "events.deployer"
    SUMMARY: ClassVar[str] = "A deployment target was added, after its probe (or its addition refused); secret names only."


class TargetUpdated(_TargetEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.target_updated.v1"
    CHANNEL: ClassVar[str] = "events.deployer"
    SUMMARY: ClassVar[str] = "A deployment target was replaced (or its replacement refused); secret names only."


class TargetDeleted(_TargetEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.target_deleted.v1"
    CHANNEL: ClassVar[str] = "events.deployer"
    SUMMARY: ClassVar[str] = "A deployment target was removed (or its removal refused while bound)."


class TargetBound(_BindingEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.target_bound.v1"
    CHANNEL: ClassVar[str] = "events.deployer"
    SUMMARY: ClassVar[str] = "A profile's certificates are deployed to a target from now on."


class TargetUnbound(_BindingEvent):
    TYPE: ClassVar[str] = "io.certrail.admin.target_unbound.v1"
    CHANNEL: ClassVar[str] = "events.deployer"
    SUMMARY: ClassVar[str] = "A profile's certificates are no longer deployed to a target."


ADMIN_TYPES: list[type[Message]] = [
    ConnectorCreated,
    ConnectorUpdated,
    ConnectorActivated,
    ConnectorDeactivated,
    ConnectorDeleted,
    ProfileCreated,
    ProfileUpdated,
    ProfileDeleted,
    TokenCreated,
    TokenRevoked,
    RequesterKeyAdded,
    RequesterKeyRevoked,
    AcmeEabKeyCreated,
    AcmeEabKeyRevoked,
    AcmeAccountCreated,
    AcmeAccountUpdated,
    AcmeAccountKeyChanged,
    AcmeAccountDeactivated,
    AcmeOrderCreated,
    AcmeChallengeStarted,
    AcmeChallengeValidated,
    AcmeChallengeFailed,
    AcmeAuthorizationDeactivated,
    AcmeOrderFinalized,
    AcmeOrderValid,
    AcmeOrderInvalid,
    AcmeCertificateRevoked,
    TargetCreated,
    TargetUpdated,
    TargetDeleted,
    TargetBound,
    TargetUnbound,
]


def event_error(code: str, message: str) -> ErrorInfo:
    """An admin event's error (the gateway's and the deployer's configuration paths). Codes outside
    ErrorCode (a path's or the API's own) travel as HANDLER_REJECTED (INVALID_INPUT as SCHEMA_VIOLATION)
    with the precise code leading the message."""
    try:
        error_code = ErrorCode(code)
        text = message
    except ValueError:
        error_code = ErrorCode.SCHEMA_VIOLATION if code == "INVALID_INPUT" else ErrorCode.HANDLER_REJECTED
        text = f"{code}: {message}"
    text = text.strip() or str(code)
    return ErrorInfo(code=error_code, message=text if len(text) <= 2000 else text[:1999] + "…")
