"""Stable error codes. A code never changes meaning once published; add new
ones instead. Failure events and dead-letter records carry one of these."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # -- the message itself (dead letters, rejected requests) ----------------
    UNDECODABLE = "UNDECODABLE"  # not UTF-8 JSON, or not a JSON object
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    NOT_CLOUDEVENT = "NOT_CLOUDEVENT"  # envelope attributes missing or malformed
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"  # well-formed envelope, type not in the catalog
    SCHEMA_VIOLATION = "SCHEMA_VIOLATION"  # known type, data does not match its schema
    PRIVATE_KEY_SUBMITTED = "PRIVATE_KEY_SUBMITTED"
    HANDLER_REJECTED = "HANDLER_REJECTED"  # a handler found the message unprocessable
    JSON_LIMIT_EXCEEDED = "JSON_LIMIT_EXCEEDED"  # JSON nested too deep, a number too long, or too many values
    HANDLER_FAILED = "HANDLER_FAILED"  # a handler failed on the record every time it was tried (poison record)
    PRODUCER_NOT_ALLOWED = "PRODUCER_NOT_ALLOWED"  # the record's type may not come from where it came from
    # -- requests (gateway) ---------------------------------------------------
    UNAUTHENTICATED = "UNAUTHENTICATED"
    REQUEST_SIGNATURE_INVALID = "REQUEST_SIGNATURE_INVALID"
    REQUESTER_NOT_AUTHORISED = "REQUESTER_NOT_AUTHORISED"
    PROFILE_NOT_FOUND = "PROFILE_NOT_FOUND"
    CERTIFICATE_NOT_FOUND = "CERTIFICATE_NOT_FOUND"
    CSR_INVALID = "CSR_INVALID"
    CSR_SIGNATURE_INVALID = "CSR_SIGNATURE_INVALID"
    KEY_POLICY_VIOLATION = "KEY_POLICY_VIOLATION"
    SAN_INVALID = "SAN_INVALID"
    SAN_NOT_ALLOWED = "SAN_NOT_ALLOWED"
    SUBJECT_NOT_ALLOWED = "SUBJECT_NOT_ALLOWED"
    CONNECTOR_NOT_FOUND = "CONNECTOR_NOT_FOUND"
    CONNECTOR_DISABLED = "CONNECTOR_DISABLED"
    DUPLICATE_REQUEST_CONFLICT = "DUPLICATE_REQUEST_CONFLICT"
    CERTIFICATE_PROFILE_MISMATCH = "CERTIFICATE_PROFILE_MISMATCH"  # the certificate id is managed under another profile
    # -- emCA and the connector (issuer) --------------------------------------
    CA_REJECTED = "CA_REJECTED"  # request-permanent: emCA refused this request
    CA_PROFILE_NOT_FOUND = "CA_PROFILE_NOT_FOUND"
    CA_UNAVAILABLE = "CA_UNAVAILABLE"  # only when a request's own deadline passed while queued
    CA_AUTH_FAILED = "CA_AUTH_FAILED"
    CA_DECRYPTION_FAILED = "CA_DECRYPTION_FAILED"
    CA_SIGNATURE_FAILED = "CA_SIGNATURE_FAILED"
    CA_TLS_UNTRUSTED = "CA_TLS_UNTRUSTED"
    CA_UNREACHABLE = "CA_UNREACHABLE"
    CA_PROTOCOL_ERROR = "CA_PROTOCOL_ERROR"  # emCA's answer does not fit the dialect's wire format (a connector fault)
    ISSUING_CA_NOT_FOUND = "ISSUING_CA_NOT_FOUND"
    SUBSCRIBER_INVALID = "SUBSCRIBER_INVALID"
    CERTIFICATE_MISMATCH = "CERTIFICATE_MISMATCH"  # returned certificate failed verification
    POSSIBLE_DUPLICATE = "POSSIBLE_DUPLICATE"
    APPROVAL_REJECTED = "APPROVAL_REJECTED"
    APPROVAL_TIMED_OUT = "APPROVAL_TIMED_OUT"
    REVOCATION_REJECTED = "REVOCATION_REJECTED"
    # -- deployment (deployer) ------------------------------------------------
    TARGET_UNREACHABLE = "TARGET_UNREACHABLE"
    INSTALL_FAILED = "INSTALL_FAILED"
    VERIFY_FAILED = "VERIFY_FAILED"
    ROLLBACK_FAILED = "ROLLBACK_FAILED"
    KEY_NOT_FOUND = "KEY_NOT_FOUND"
    CERTIFICATE_UNTRUSTED = "CERTIFICATE_UNTRUSTED"  # does not chain to the connector's pinned issuing CA
    CERTIFICATE_NOT_REQUESTED = "CERTIFICATE_NOT_REQUESTED"  # no accepted request or key expects this certificate
    # -- the HTTP API ------------------------------------------------------------
    AUTH_THROTTLED = "AUTH_THROTTLED"  # too many failed sign-ins or bearer tokens from this client


#: codes that describe a problem with a message's bytes or shape: such a message
#: goes to the dead-letter topic.
DEAD_LETTER_CODES = frozenset(
    {
        ErrorCode.UNDECODABLE,
        ErrorCode.MESSAGE_TOO_LARGE,
        ErrorCode.NOT_CLOUDEVENT,
        ErrorCode.UNKNOWN_MESSAGE_TYPE,
        ErrorCode.SCHEMA_VIOLATION,
        ErrorCode.PRIVATE_KEY_SUBMITTED,
        ErrorCode.HANDLER_REJECTED,
        ErrorCode.JSON_LIMIT_EXCEEDED,
        ErrorCode.HANDLER_FAILED,
        ErrorCode.PRODUCER_NOT_ALLOWED,
    }
)
