"""One valid example of every message type, built from real keys, CSRs and
certificates (made with `cryptography`), for the contract tests."""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.common.contracts import admin, audit, commands, deadletter, duplicates, events, requests, revocation
from services.common.contracts.envelope import Message
from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import ErrorInfo, KeyAlgorithm, KeyGeneration, RequestAuth, RequestKind, RevocationReason
from services.common.contracts.identity import issuance_id
from services.common.contracts.keys import BotKeyDestroyed, KeyCopy, KeyCopyOutcome, KeyRetirementReason
from services.common.contracts.undeploy import CertificateUndeployed, TargetUndeployment, UndeployOutcome

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CERT_ID = "web-frontend.example.com"
SERIAL = "5f2a9c0e11d4b7a3"


@functools.cache
def key_and_csr() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("www.example.com")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def private_key_pem() -> str:
    key, _ = key_and_csr()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@functools.cache
def certificate_pem() -> str:
    key, _ = key_and_csr()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int(SERIAL, 16))
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=90))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def examples() -> dict[type[Message], Message]:
    _, csr = key_and_csr()
    cert = certificate_pem()
    iid = issuance_id(CERT_ID, 1)
    err = ErrorInfo(code=ErrorCode.CA_REJECTED, message="emCA: Invalid Certificate Profile name")
    auth = RequestAuth(scheme="hmac-sha256", key_id="ci-pipeline-1", signature="c2lnbmF0dXJlLWJ5dGVzLWhlcmU=")
    target = events.TargetRef(name="web-nginx", kind="nginx")
    admin_common = dict(actor="admin@example.com", outcome=admin.AdminOutcome.SUCCEEDED)
    items: list[Message] = [
        requests.IssueRequested(
            request_id="req-1", requester="ci-pipeline", profile="web", certificate_id=CERT_ID, csr=csr,
            sans=["dns:www.example.com"], auth=auth,
        ),
        requests.RenewRequested(request_id="req-2", requester="ci-pipeline", certificate_id=CERT_ID, csr=csr, auth=auth),
        requests.RevokeRequested(
            request_id="req-3", requester="ci-pipeline", certificate_id=CERT_ID, reason=RevocationReason.KEY_COMPROMISE,
            replace=True, auth=auth,
        ),
        commands.IssueCertificate(
            issuance_id=iid, certificate_id=CERT_ID, revision=1, request_id="req-1", connector="emca-prod",
            profile="web", ca_profile="TLS Server", csr=csr, sans=["dns:www.example.com"],
        ),
        commands.RenewCertificate(
            issuance_id=issuance_id(CERT_ID, 2), certificate_id=CERT_ID, revision=2, request_id="req-2",
            connector="emca-prod", profile="web", ca_profile="TLS Server", csr=csr, sans=["dns:www.example.com"],
            replaces_serial=SERIAL,
        ),
        commands.RevokeCertificate(
            certificate_id=CERT_ID, serial=SERIAL, request_id="req-3", connector="emca-prod",
            reason=RevocationReason.SUPERSEDED,
        ),
        commands.ProvisionCertificate(
            certificate_id=CERT_ID, request_id="req-4", profile="web-bot", connector="emca-prod",
            key_algorithm=KeyAlgorithm.EC_P256, common_name="www.example.com", sans=["dns:www.example.com"],
        ),
        events.RequestAccepted(
            request_id="req-1", requester="ci-pipeline", kind=RequestKind.ISSUE, certificate_id=CERT_ID,
            profile="web", connector="emca-prod", issuance_id=iid, public_key_sha256="ab" * 32,
        ),
        events.RequestRejected(
            request_id="req-9", requester="ci-pipeline", kind=RequestKind.ISSUE,
            error=ErrorInfo(code=ErrorCode.KEY_POLICY_VIOLATION, message="RSA-1024 is below the profile's minimum of 2048 bits"),
        ),
        events.IssuancePending(issuance_id=iid, certificate_id=CERT_ID, request_id="req-1", connector="emca-prod", ca_request_id="REQ-77"),
        events.CertificateIssued(
            issuance_id=iid, certificate_id=CERT_ID, request_id="req-1", connector="emca-prod", profile="web",
            serial=SERIAL, certificate=cert, chain=[cert], subject="CN=www.example.com", issuer="CN=Issuing CA 1",
            sans=["dns:www.example.com"], not_before=NOW, not_after=NOW + timedelta(days=90),
            public_key_sha256=hashlib.sha256(b"spki").hexdigest(),
        ),
        events.IssuanceFailed(issuance_id=iid, certificate_id=CERT_ID, request_id="req-1", connector="emca-prod", error=err),
        events.CertificateRevoked(
            certificate_id=CERT_ID, serial=SERIAL, request_id="req-3", connector="emca-prod",
            reason=RevocationReason.KEY_COMPROMISE, revoked_at=NOW, replace=True,
        ),
        events.RevocationFailed(certificate_id=CERT_ID, serial=SERIAL, request_id="req-3", connector="emca-prod", error=err),
        revocation.RevocationConfirmed(
            certificate_id=CERT_ID, serial=SERIAL, request_id="req-3", connector="emca-prod",
            reason=RevocationReason.KEY_COMPROMISE, distribution_point="http://pki.example.test/crl/issuing-ca-1.crl",
            crl_number="42", crl_this_update=NOW, revoked_at_ca=NOW, confirmed_at=NOW,
        ),
        revocation.RevocationUnconfirmed(
            certificate_id=CERT_ID, serial=SERIAL, request_id="req-3", connector="emca-prod",
            reason=RevocationReason.KEY_COMPROMISE, cause=revocation.UnconfirmedCause.NOT_LISTED,
            distribution_point="http://pki.example.test/crl/issuing-ca-1.crl", crl_number="41", crl_this_update=NOW,
            checks=12, deadline=NOW, given_up_at=NOW,
        ),
        revocation.RevokedOutOfBand(
            certificate_id=CERT_ID, serial=SERIAL, connector="emca-prod", reason="keyCompromise", revoked_at_ca=NOW,
            crl_number="43", distribution_point="http://pki.example.test/crl/issuing-ca-1.crl", detected_at=NOW,
        ),
        duplicates.DuplicateDetected(
            certificate_id=CERT_ID, request_id="req-1", connector="emca-prod",
            issuance_id="7d0c3c52-6f3b-5a8e-9a51-3f1c2b7d9e10", delivered_serial=SERIAL, public_key_sha256="ab" * 32,
            detected_at=NOW,
        ),
        duplicates.DuplicateResolved(
            certificate_id=CERT_ID, request_id="req-1", connector="emca-prod",
            issuance_id="7d0c3c52-6f3b-5a8e-9a51-3f1c2b7d9e10", delivered_serial=SERIAL,
            resolution=duplicates.DuplicateResolution.REVOKED, extra_serial="5f2a9c0e11d4b7a4",
            reason=RevocationReason.SUPERSEDED, note="found in emCA's console", actor="platform-admin", resolved_at=NOW,
        ),
        duplicates.DuplicateResolutionRefused(
            certificate_id=CERT_ID, connector="emca-prod", issuance_id="7d0c3c52-6f3b-5a8e-9a51-3f1c2b7d9e10",
            extra_serial="77", actor="platform-admin", refused_at=NOW,
            error=ErrorInfo(code=ErrorCode.CERTIFICATE_MISMATCH, message="serial 77 carries another public key"),
        ),
        events.CertificateDeployed(certificate_id=CERT_ID, serial=SERIAL, target=target, verified_serial=SERIAL, deployed_at=NOW),
        events.DeploymentFailed(
            certificate_id=CERT_ID, serial=SERIAL, target=target, rolled_back=True,
            error=ErrorInfo(code=ErrorCode.VERIFY_FAILED, message="nginx still serves serial 01"),
        ),
        CertificateUndeployed(
            certificate_id=CERT_ID, serial=SERIAL, request_id="req-3", profile="web", reason=RevocationReason.CESSATION_OF_OPERATION,
            targets=[TargetUndeployment(target=target, outcome=UndeployOutcome.REMOVED),
                     TargetUndeployment(target=events.TargetRef(name="edge-hook", kind="webhook"),
                                        outcome=UndeployOutcome.NOT_REMOVABLE)],
            undeployed_at=NOW,
        ),
        BotKeyDestroyed(
            certificate_id=CERT_ID, serial=SERIAL, profile="web", public_key_sha256=hashlib.sha256(b"spki").hexdigest(),
            reason=KeyRetirementReason.SUPERSEDED, superseded_at=NOW, destroyed_at=NOW + timedelta(days=7),
            copies=[KeyCopy(target=target, outcome=KeyCopyOutcome.REMOVED)],
        ),
        events.RenewalDue(
            certificate_id=CERT_ID, serial=SERIAL, profile="web", connector="emca-prod",
            key_generation=KeyGeneration.REQUESTER, renew_at=NOW, not_after=NOW + timedelta(days=30), requester="ci-pipeline",
        ),
        events.CertificateExpiring(certificate_id=CERT_ID, serial=SERIAL, not_after=NOW + timedelta(days=7), threshold_days=7),
        events.CertificateSuperseded(
            certificate_id=CERT_ID, serial=SERIAL, replaced_by="acme-0f1e2d3c4b5a6978", replaced_by_serial="5b1d",
            reason=events.SupersededBy.ACME_SAME_IDENTIFIERS, superseded_at=NOW,
        ),
        events.ConnectorStatusChanged(
            connector="emca-prod", status=events.ConnectorStatus.MISCONFIGURED, previous=events.ConnectorStatus.UP,
            error=ErrorInfo(code=ErrorCode.CA_AUTH_FAILED, message="emCA: Invalid request details found"), changed_at=NOW,
        ),
        admin.ConnectorCreated(connector="emca-prod", change={"base_url": "https://emca.example.com", "password": "***"}, **admin_common),
        admin.ConnectorUpdated(connector="emca-prod", change={"password": "***"}, **admin_common),
        admin.ConnectorActivated(connector="emca-prod", **admin_common),
        admin.ConnectorDeactivated(connector="emca-prod", **admin_common),
        admin.ConnectorDeleted(
            connector="emca-prod", actor="admin@example.com", outcome=admin.AdminOutcome.REFUSED,
            error=ErrorInfo(code=ErrorCode.CONNECTOR_DISABLED, message="profile 'web' uses this connector"),
        ),
        admin.ProfileCreated(profile="web", change={"connector": "emca-prod", "allowed_requesters": ["ci-pipeline"]}, **admin_common),
        admin.ProfileUpdated(profile="web", change={"validity_days": 90}, **admin_common),
        admin.ProfileDeleted(profile="web", **admin_common),
        admin.TokenCreated(token_id="tok_12345", change={"role": "requester", "profiles": ["web"]}, **admin_common),
        admin.TokenRevoked(token_id="tok_12345", **admin_common),
        admin.RequesterKeyAdded(requester="ci-pipeline", key_id="2026-11", change={"scheme": "hmac-sha256", "secret": "***"},
                                **admin_common),
        admin.RequesterKeyRevoked(requester="ci-pipeline", key_id="2026-11", change={"revoked": True}, **admin_common),
        admin.AcmeEabKeyCreated(requester="ci-pipeline", eab_key_id="eab-0123456789abcdef0123",
                                change={"profiles": ["web"], "hmac_key": "***"}, **admin_common),
        admin.AcmeEabKeyRevoked(requester="ci-pipeline", eab_key_id="eab-0123456789abcdef0123", change={"revoked": True},
                                **admin_common),
        admin.AcmeAccountCreated(requester="ci-pipeline", account_id="0123456789abcdef01234567",
                                 change={"eab_key_id": "eab-0123456789abcdef0123", "profiles": ["web"],
                                         "jwk_thumbprint": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
                                         "contact": ["mailto:ops@example.com"]},
                                 actor="acme:0123456789abcdef01234567", outcome=admin.AdminOutcome.SUCCEEDED),
        admin.AcmeAccountUpdated(requester="ci-pipeline", account_id="0123456789abcdef01234567",
                                 change={"contact": ["mailto:pki@example.com"]},
                                 actor="acme:0123456789abcdef01234567", outcome=admin.AdminOutcome.SUCCEEDED),
        admin.AcmeAccountKeyChanged(requester="ci-pipeline", account_id="0123456789abcdef01234567",
                                    change={"old_jwk_thumbprint": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
                                            "jwk_thumbprint": "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U"},
                                    actor="acme:0123456789abcdef01234567", outcome=admin.AdminOutcome.SUCCEEDED),
        admin.AcmeAccountDeactivated(requester="ci-pipeline", account_id="0123456789abcdef01234567",
                                     change={"status": "deactivated"},
                                     actor="acme:0123456789abcdef01234567", outcome=admin.AdminOutcome.SUCCEEDED),
        admin.AcmeOrderCreated(requester="ci-pipeline", account_id="0123456789abcdef01234567", order_id="89abcdef0123456789abcdef",
                               change={"identifiers": ["www.example.com"], "profiles": ["web"],
                                       "authorizations": {"www.example.com": "0a1b2c3d4e5f60718293a4b5"}, "reused": [],
                                       "challenges": ["http-01"], "expires": "2026-12-04T12:00:00+00:00"},
                               actor="acme:0123456789abcdef01234567", outcome=admin.AdminOutcome.SUCCEEDED),
        admin.AcmeChallengeStarted(requester="ci-pipeline", account_id="0123456789abcdef01234567",
                                   authorization_id="0a1b2c3d4e5f60718293a4b5", challenge_id="f0e1d2c3b4a5968778695a4b",
                                   change={"type": "http-01", "identifier": "www.example.com", "status": "processing"},
                                   actor="acme:0123456789abcdef01234567", outcome=admin.AdminOutcome.SUCCEEDED),
        admin.AcmeChallengeValidated(requester="ci-pipeline", account_id="0123456789abcdef01234567",
                                     authorization_id="0a1b2c3d4e5f60718293a4b5", challenge_id="f0e1d2c3b4a5968778695a4b",
                                     change={"type": "http-01", "identifier": "www.example.com", "status": "valid",
                                             "orders_ready": ["89abcdef0123456789abcdef"],
                                             "addresses": ["192.0.2.10"]},
                                     actor="acme:0123456789abcdef01234567", outcome=admin.AdminOutcome.SUCCEEDED),
        admin.AcmeChallengeFailed(requester="ci-pipeline", account_id="0123456789abcdef01234567",
                                  authorization_id="0a1b2c3d4e5f60718293a4b5", challenge_id="f0e1d2c3b4a5968778695a4b",
                                  change={"type": "http-01", "identifier": "www.example.com", "status": "invalid",
                                          "error": {"type": "urn:ietf:params:acme:error:unauthorized",
                                                    "detail": "the answer is not the key authorization", "status": 403},
                                          "orders_invalid": ["89abcdef0123456789abcdef"]},
                                  actor="acme:0123456789abcdef01234567", outcome=admin.AdminOutcome.SUCCEEDED),
        admin.AcmeAuthorizationDeactivated(requester="ci-pipeline", account_id="0123456789abcdef01234567",
                                           authorization_id="0a1b2c3d4e5f60718293a4b5",
                                           change={"identifier": "www.example.com", "status": "deactivated",
                                                   "orders_invalid": []},
                                           actor="acme:0123456789abcdef01234567", outcome=admin.AdminOutcome.SUCCEEDED),
        admin.AcmeOrderFinalized(requester="ci-pipeline", account_id="0123456789abcdef01234567",
                                 order_id="89abcdef0123456789abcdef",
                                 change={"status": "processing", "certificate_id": "acme-89abcdef0123456789abcdef",
                                         "request_id": "acme-finalize-89abcdef0123456789abcdef", "profile": "web",
                                         "identifiers": ["www.example.com"]},
                                 actor="acme:0123456789abcdef01234567", outcome=admin.AdminOutcome.SUCCEEDED),
        admin.AcmeOrderValid(requester="ci-pipeline", account_id="0123456789abcdef01234567",
                             order_id="89abcdef0123456789abcdef",
                             change={"status": "valid", "certificate_id": "acme-89abcdef0123456789abcdef",
                                     "serial": "4f2a0c11"},
                             actor="certrail-issuer", outcome=admin.AdminOutcome.SUCCEEDED),
        admin.AcmeCertificateRevoked(requester="ci-pipeline", account_id="0123456789abcdef01234567",
                                     order_id="89abcdef0123456789abcdef",
                                     change={"certificate_id": "acme-89abcdef0123456789abcdef", "serial": "4f2a0c11",
                                             "reason": "superseded", "request_id": "acme-revoke-4f2a0c11",
                                             "signed_with": "account"},
                                     actor="acme:0123456789abcdef01234567", outcome=admin.AdminOutcome.SUCCEEDED),
        admin.AcmeOrderInvalid(requester="ci-pipeline", account_id="0123456789abcdef01234567",
                               order_id="89abcdef0123456789abcdef",
                               change={"status": "invalid", "code": "KEY_POLICY_VIOLATION",
                                       "error": {"type": "urn:ietf:params:acme:error:badCSR",
                                                 "detail": "RSA keys of 1024 bits are below the profile's minimum",
                                                 "status": 400}},
                               actor="acme:0123456789abcdef01234567", outcome=admin.AdminOutcome.SUCCEEDED),
        admin.TargetCreated(target="edge", change={"kind": "webhook", "config": {"url": "https://hooks.example/in"},
                                                   "secrets": {"hmac_secret": "***"}}, **admin_common),
        admin.TargetUpdated(target="edge", change={"kind": "file", "config": {"dir": "/etc/ssl/edge"}, "secrets": {}},
                            **admin_common),
        admin.TargetDeleted(target="edge", change={"kind": "file"}, **admin_common),
        admin.TargetBound(target="edge", profile="web", change={"bound": True}, **admin_common),
        admin.TargetUnbound(target="edge", profile="web", change={"bound": False}, **admin_common),
        deadletter.DeadLetter(
            code=ErrorCode.UNDECODABLE, reason="value is not JSON", consumer="gateway",
            source=deadletter.SourceRecord(topic="certrail.requests", partition=0, offset=7),
            original_size=3, original_sha256=hashlib.sha256(b"abc").hexdigest(), original_b64="YWJj",
        ),
        audit.AuditCheckpoint(
            auditor="auditor-1", signed_at=NOW,
            heads=[audit.ChainHead(topic="certrail.events", partition=0, offset=41, hash=hashlib.sha256(b"x").hexdigest())],
            key_id=hashlib.sha256(b"k").hexdigest(), algorithm="ed25519", signature="c2ln",
        ),
    ]
    return {type(item): item for item in items}
