"""Regenerate the emCA 4.2.x golden vectors (tests/vectors/emca/v4_2/*.json).

    .venv/bin/python tests/vectors/emca/make_v4_2.py

The committed files are the truth: the connector's dialect
(services/common/emca/dialects/v4_2.py) must build exactly their request bytes and
parse their responses into their ``expected`` values, and the simulator's dialect
(emca_sim/dialects/v4_2.py) must accept their requests and answer exactly their
response bytes. This script is a third, independent spelling of the wire format
of docs/emca-api.md ("4.2.x"): it imports neither side. Everything is
deterministic (keys derived from fixed seeds, RFC 6979 ECDSA signatures, fixed
times, serials and ids), so running it again rewrites identical files; a test
checks that.

``material.json`` holds the fixed state of the simulated CA the vectors run
against (applications with ClientIDs and passwords, the JWT secret, CAs,
profiles, subscribers, CSRs, certificates, pending requests, the CRL and what
issuing each CSR yields); each other file is one case:

- ``version``, ``description``
- ``credentials``: appCode, password, ClientID the client was configured with
- ``client``: ``now`` (its clock) and ``id`` (its next txn / nonce)
- ``call``: the RequestBuilder method and keyword arguments
- ``server``: ``now`` (its clock) and ``seen_ids`` (txns/nonces it remembers)
- ``request``: method, path, headers (ordered name/value pairs), body (text)
- ``response``: status, content type, body (text)
- ``backend_calls``: the SimBackend calls the server makes (besides look-ups)
- ``expected``: the client's parse of the response (``result``) or its
  classification (``failure``)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OUT_DIR = Path(__file__).resolve().parent / "v4_2"
JWT_SECRET = bytes.fromhex("5eed" * 16)  # the simulator's token secret for the vectors (32 bytes)
CA_NAME = "certrail Vector Issuing CA P-256"
ROOT_NAME = "certrail Vector Root CA"
PROFILE = "TLS Server"
MANUAL_PROFILE = "TLS Server Manual"
SUBSCRIBER = "SUB-0001"
APPS = {
    "V4.2.3": {"username": "certrail-v423", "password": "Pw-423-vector!", "client_id": "CID-423-0f1e2d3c4b5a69788796a5b4"},
    "V4.2.4+": {"username": "certrail-v424", "password": "Pw-424-vector!", "client_id": "CID-424-a1b2c3d4e5f60718293a4b5c"},
}
CERT_START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
T423 = datetime(2026, 3, 2, 9, 30, 0, 250000, tzinfo=UTC)  # the V4.2.3 client's clock (with milliseconds)
T424 = datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)  # the V4.2.4+ server's clock when it issues the token
TOKEN_MINS = 15
ERRORS = {
    "INVALID_PARAMETER": (400, "Invalid parameter"),
    "INVALID_CREDENTIALS": (401, "Invalid credentials"),
    "INVALID_AUTH_KEY": (401, "Invalid AuthKey"),
    "STALE_TIMESTAMP": (401, "Request timestamp outside the allowed window"),
    "REPLAYED_TXN": (401, "Transaction id already used"),
    "REPLAYED_NONCE": (401, "Nonce already used"),
    "TOKEN_INVALID": (401, "Invalid token"),
    "TOKEN_EXPIRED": (401, "Token expired"),
    "NOT_FOUND": (404, "Certificate or request not found"),
    "ALREADY_REVOKED": (409, "Certificate already revoked"),
    "UNKNOWN_PROFILE": (422, "Invalid Certificate Profile name"),
    "UNKNOWN_SUBSCRIBER": (422, "Invalid subscriber id"),
    "CSR_REJECTED": (422, "CSR rejected"),
}
CATEGORY = {
    "CSR_REJECTED": "request_permanent",
    "UNKNOWN_PROFILE": "request_permanent",
    "NOT_FOUND": "request_permanent",
    "ALREADY_REVOKED": "request_permanent",
    "INVALID_CREDENTIALS": "connector_fault",
    "INVALID_AUTH_KEY": "connector_fault",
    "STALE_TIMESTAMP": "connector_fault",
    "UNKNOWN_SUBSCRIBER": "connector_fault",
    "REPLAYED_TXN": "transient",
    "REPLAYED_NONCE": "transient",
    "TOKEN_INVALID": "token_rejected",
    "TOKEN_EXPIRED": "token_rejected",
}
BAD_CSR_DETAIL = "SAN forbidden.invalid is not allowed by the profile"


# -- deterministic PKI material ---------------------------------------------------------------------


def _key(seed: str) -> ec.EllipticCurvePrivateKey:
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    scalar = int.from_bytes(hashlib.sha256(f"certrail-emca-v4_2-vectors/{seed}".encode()).digest()) % (order - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def _serial(seed: str) -> int:
    return int.from_bytes(hashlib.sha256(f"serial/{seed}".encode()).digest()[:16]) >> 1 | 1 << 120


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certrail vectors"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _pem(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _ca(cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(_serial(cn))
        .not_valid_before(datetime(2026, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2036, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None if cn == ROOT_NAME else 0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(ski, critical=False)
        .sign(signer, hashes.SHA256(), ecdsa_deterministic=True)
    )


def _csr(host: str) -> str:
    key = _key(f"leaf/{host}")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    return _pem(csr)


def _leaf(host: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    key = _key(f"leaf/{host}")
    serial = _serial(f"leaf/{host}")
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(CERT_START)
        .not_valid_after(CERT_START + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    return format(serial, "x"), _pem(cert)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def material() -> dict[str, Any]:
    root_key, ca_key = _key("root"), _key("issuing")
    root = _ca(ROOT_NAME, root_key, _name(ROOT_NAME), root_key)
    ca = _ca(CA_NAME, ca_key, root.subject, root_key)
    chain = [_pem(ca), _pem(root)]
    hosts = {
        "web1": "web1.example.com",
        "web2": "web2.example.com",
        "old": "old.example.com",
        "manual": "manual.example.com",
        "approved": "approved.example.com",
        "bad": "forbidden.invalid",
    }
    csrs = {name: _csr(host) for name, host in hosts.items()}
    certificates: dict[str, dict[str, Any]] = {}
    for name, application_id in (("web1", "iss-0001"), ("web2", "iss-0002"), ("old", "iss-0003"), ("approved", "iss-0005")):
        serial, pem = _leaf(hosts[name], ca, ca_key)
        revoked = name == "old"
        certificates[name] = {
            "serial": serial,
            "certificate_pem": pem,
            "chain_pem": chain,
            "profile": MANUAL_PROFILE if name == "approved" else PROFILE,
            "subscriber_id": SUBSCRIBER,
            "application_id": application_id,
            "issued_at": _time(CERT_START),
            "revoked_at": _time(datetime(2026, 3, 1, 12, 0, tzinfo=UTC)) if revoked else None,
            "revocation_reason": "keyCompromise" if revoked else None,
        }
    old_serial = int(certificates["old"]["serial"], 16)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(datetime(2026, 3, 2, 0, 0, tzinfo=UTC))
        .next_update(datetime(2026, 3, 3, 0, 0, tzinfo=UTC))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(old_serial)
            .revocation_date(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
        .add_extension(x509.CRLNumber(7), critical=False)
        .sign(ca_key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    return {
        "comment": "Fixed state of the simulated emCA for the 4.2.x vectors; test-only keys and secrets.",
        "jwt_secret_hex": JWT_SECRET.hex(),
        "applications": [
            {
                "username": app["username"],
                "password": app["password"],
                "dialect": dialect,
                "client_id": app["client_id"],
                "source_addresses": ["127.0.0.1", "::1"],
            }
            for dialect, app in APPS.items()
        ],
        "subscribers": [SUBSCRIBER],
        "cas": [
            {
                "name": CA_NAME,
                "key_type": "EC-P256",
                "certificate_pem": chain[0],
                "sha256": hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest(),
                "chain_pem": chain,
                "crl_der_base64": base64.b64encode(crl.public_bytes(serialization.Encoding.DER)).decode(),
            }
        ],
        "profiles": [
            {
                "name": PROFILE,
                "profile_id": "1001",
                "issuing_ca": CA_NAME,
                "validity_days": 90,
                "key_types": ["EC-P256", "RSA-2048"],
                "manual_approval": False,
            },
            {
                "name": MANUAL_PROFILE,
                "profile_id": "1004",
                "issuing_ca": CA_NAME,
                "validity_days": 90,
                "key_types": ["EC-P256"],
                "manual_approval": True,
            },
        ],
        "csrs": csrs,
        "certificates": certificates,
        "pending": {
            "REQ-0000000042": {
                "request_id": "REQ-0000000042",
                "profile": MANUAL_PROFILE,
                "subscriber_id": SUBSCRIBER,
                "application_id": "iss-0004",
                "state": "pending",
                "issued": None,
                "rejection": None,
            },
            "REQ-0000000041": {
                "request_id": "REQ-0000000041",
                "profile": MANUAL_PROFILE,
                "subscriber_id": SUBSCRIBER,
                "application_id": "iss-0005",
                "state": "approved",
                "issued": "approved",
                "rejection": None,
            },
        },
        # what SimBackend.issue answers for each CSR: a certificate, a pending request id, or a CSR_REJECTED detail
        "issue": {
            "web1": {"certificate": "web1"},
            "web2": {"certificate": "web2"},
            "manual": {"pending": "REQ-0000000042"},
            "bad": {"rejected": BAD_CSR_DETAIL},
        },
    }


# -- the wire format, spelled out independently ----------------------------------------------------


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwt(app: dict[str, str], iat: int, nonce: str, secret: bytes = JWT_SECRET) -> str:
    key = hmac.new(secret, _json([app["username"], app["password"], app["client_id"]]).encode(), hashlib.sha256).digest()
    header = _b64url(_json({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {
        "iss": "emCA",
        "aud": "emCAServices42",
        "sub": app["username"],
        "iat": iat,
        "exp": iat + 60 * TOKEN_MINS,
        "jti": nonce,
    }
    signing_input = f"{header}.{_b64url(_json(claims).encode())}"
    return f"{signing_input}.{_b64url(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def _ms(moment: datetime) -> str:
    return str((moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1))


def _issued_record(cert: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
    return {
        "status": "revoked" if cert["revoked_at"] else "issued",
        "requestId": request_id,
        "serialNumber": cert["serial"],
        "certificate": cert["certificate_pem"],
        "chain": cert["chain_pem"],
        "profileName": cert["profile"],
        "subscriberId": cert["subscriber_id"],
        "applicationId": cert["application_id"],
        "issuedAt": cert["issued_at"],
        "revokedAt": cert["revoked_at"],
        "revocationReason": cert["revocation_reason"],
    }


def _iso(text: str | None) -> str | None:
    return None if text is None else datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).isoformat()


def _parsed_issued(cert: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "IssuedCertificate",
        "serial": cert["serial"],
        "certificate_pem": cert["certificate_pem"],
        "chain_pem": cert["chain_pem"],
        "profile_name": cert["profile"],
        "subscriber_id": cert["subscriber_id"],
        "application_id": cert["application_id"],
        "request_id": request_id,
        "issued_at": _iso(cert["issued_at"]),
        "revoked": cert["revoked_at"] is not None,
        "revoked_at": _iso(cert["revoked_at"]),
        "revocation_reason": cert["revocation_reason"],
    }


class _Cases:
    def __init__(self, mat: dict[str, Any]) -> None:
        self.mat = mat
        self.files: dict[str, dict[str, Any]] = {}

    def add(
        self,
        name: str,
        version: str,
        description: str,
        *,
        call: tuple[str, dict[str, Any]],
        client_now: datetime,
        client_id: str,
        method: str,
        path: str,
        headers: list[list[str]],
        body: object | None,
        status: int,
        response: dict[str, Any],
        expected: dict[str, Any],
        server_now: datetime | None = None,
        seen_ids: tuple[str, ...] = (),
        backend_calls: list[list[Any]] | None = None,
        credentials: dict[str, str] | None = None,
    ) -> None:
        app = APPS[version]
        creds = credentials or {"app_code": app["username"], "password": app["password"], "client_id": app["client_id"]}
        self.files[f"{name}.json"] = {
            "version": version,
            "description": description,
            "credentials": creds,
            "client": {"now": client_now.isoformat(), "id": client_id},
            "call": {"method": call[0], "kwargs": call[1]},
            "server": {"now": (server_now or client_now + timedelta(seconds=2)).isoformat(), "seen_ids": list(seen_ids)},
            "request": {"method": method, "path": path, "headers": headers, "body": "" if body is None else _json(body)},
            "response": {"status": status, "content_type": "application/json", "body": _json(response)},
            "backend_calls": backend_calls or [],
            "expected": expected,
        }


def _success(result: dict[str, Any]) -> dict[str, Any]:
    return {"status": "success", "result": result}


def _failure(code: str, detail: str = "") -> tuple[int, dict[str, Any], dict[str, Any]]:
    status, message = ERRORS[code]
    if detail:
        message = f"{message}: {detail}"
    body = {"status": "failure", "errorCode": code, "errorMessage": message}
    return status, body, {"failure": {"category": CATEGORY[code], "code": code, "message": message, "http_status": status}}


def cases(mat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = _Cases(mat)
    ca = mat["cas"][0]
    certs, csrs = mat["certificates"], mat["csrs"]
    cas_result = {
        "cas": [{"name": ca["name"], "keyType": ca["key_type"], "certificate": ca["certificate_pem"], "sha256": ca["sha256"]}]
    }
    cas_parsed = [
        {
            "type": "CaEntry",
            "name": ca["name"],
            "key_type": ca["key_type"],
            "certificate_pem": ca["certificate_pem"],
            "sha256": ca["sha256"],
        }
    ]
    profiles_result = {
        "profiles": [
            {
                "name": p["name"],
                "profileId": p["profile_id"],
                "issuingCa": p["issuing_ca"],
                "validityDays": p["validity_days"],
                "keyTypes": p["key_types"],
                "manualApproval": p["manual_approval"],
            }
            for p in mat["profiles"]
        ]
    }
    profiles_parsed = [
        {
            "type": "ProfileEntry",
            "name": p["name"],
            "profile_id": p["profile_id"],
            "issuing_ca": p["issuing_ca"],
            "validity_days": p["validity_days"],
            "key_types": p["key_types"],
            "manual_approval": p["manual_approval"],
        }
        for p in mat["profiles"]
    ]
    pending42 = mat["pending"]["REQ-0000000042"]
    pending_record = {
        "status": "pending",
        "requestId": pending42["request_id"],
        "profileName": pending42["profile"],
        "subscriberId": pending42["subscriber_id"],
        "applicationId": pending42["application_id"],
    }
    pending_parsed = {
        "type": "PendingRequest",
        "request_id": pending42["request_id"],
        "profile_name": pending42["profile"],
        "subscriber_id": pending42["subscriber_id"],
        "application_id": pending42["application_id"],
    }
    rejected_message = f"CSR rejected: {BAD_CSR_DETAIL}"

    def revoked(cert: dict[str, Any], at: datetime, reason: str) -> dict[str, Any]:
        return {**cert, "revoked_at": _time(at), "revocation_reason": reason}

    def create_body(
        csr_names: list[str], application_id: str, profile: str = PROFILE, subscriber: str = SUBSCRIBER
    ) -> dict[str, Any]:
        return {
            "profileName": profile,
            "subscriberId": subscriber,
            "applicationId": application_id,
            "csrs": [csrs[n] for n in csr_names],
        }

    def create_kwargs(
        csr_names: list[str], application_id: str, profile: str = PROFILE, subscriber: str = SUBSCRIBER
    ) -> dict[str, Any]:
        return {
            "profile_name": profile,
            "subscriber_id": subscriber,
            "csrs": [csrs[n] for n in csr_names],
            "application_id": application_id,
        }

    def issue_call(csr_name: str, application_id: str, profile: str = PROFILE) -> list[Any]:
        return [
            "issue",
            {
                "profile": profile,
                "subscriber_id": SUBSCRIBER,
                "csr": csr_name,
                "application_id": application_id,
                "dedupe_by_application_id": False,
            },
        ]

    # -- V4.2.3: AuthKey on every call ---------------------------------------------------------------
    v = "V4.2.3"
    app = APPS[v]
    basic = "Basic " + base64.b64encode(f"{app['username']}:{app['password']}".encode()).decode()

    def v423(
        name: str,
        description: str,
        method: str,
        operation: str,
        call: tuple[str, dict[str, Any]],
        body: object | None,
        status: int,
        response: dict[str, Any],
        expected: dict[str, Any],
        *,
        client_id: str | None = None,
        password: str | None = None,
        **extra: Any,
    ) -> None:
        txn = f"txn-423-{int(name[:2]):04d}-5f0c9a7e"
        ts = _ms(T423)
        headers = [
            [
                "Authorization",
                basic if password is None else "Basic " + base64.b64encode(f"{app['username']}:{password}".encode()).decode(),
            ],
            ["AuthKey", hashlib.sha256(((client_id or app["client_id"]) + ts + txn).encode()).hexdigest()],
            ["ts", ts],
            ["txn", txn],
        ]
        if body is not None:
            headers.append(["Content-Type", "application/json"])
        creds = None
        if client_id is not None or password is not None:
            creds = {
                "app_code": app["username"],
                "password": password or app["password"],
                "client_id": client_id or app["client_id"],
            }
        calls = extra.pop("backend_calls", None)
        if calls is None and status != 401:
            calls = [["remember_txn", {"username": app["username"], "txn": txn}]]
        elif calls is not None:
            calls = [["remember_txn", {"username": app["username"], "txn": txn}], *calls]
        out.add(
            f"v4_2_3-{name}",
            v,
            description,
            call=call,
            client_now=T423,
            client_id=txn,
            method=method,
            path=f"/emCAServices42/rest/{operation}/{app['username']}",
            headers=headers,
            body=body,
            status=status,
            response=response,
            expected=expected,
            credentials=creds,
            backend_calls=calls,
            **extra,
        )

    v423(
        "01-getCAs",
        "List the issuing CAs (exact names, key type, certificate).",
        "GET",
        "getCAs",
        ("get_cas", {}),
        None,
        200,
        _success(cas_result),
        {"result": cas_parsed},
    )
    v423(
        "02-getProfiles",
        "List the certificate profiles with their issuing CA.",
        "GET",
        "getProfiles",
        ("get_profiles", {}),
        None,
        200,
        _success(profiles_result),
        {"result": profiles_parsed},
    )
    v423(
        "03-createCertificates-issued",
        "One CSR on an automatic profile: issued with its chain; no applicationId dedupe.",
        "POST",
        "createCertificates",
        ("create_certificates", create_kwargs(["web1"], "iss-0001")),
        create_body(["web1"], "iss-0001"),
        200,
        _success({"certificates": [_issued_record(certs["web1"])]}),
        {"result": [_parsed_issued(certs["web1"])]},
        backend_calls=[issue_call("web1", "iss-0001")],
    )
    v423(
        "04-createCertificates-pending",
        "A manual-approval profile: held, with a request id to poll.",
        "POST",
        "createCertificates",
        ("create_certificates", create_kwargs(["manual"], "iss-0004", MANUAL_PROFILE)),
        create_body(["manual"], "iss-0004", MANUAL_PROFILE),
        200,
        _success({"certificates": [pending_record]}),
        {"result": [pending_parsed]},
        backend_calls=[issue_call("manual", "iss-0004", MANUAL_PROFILE)],
    )
    v423(
        "05-createCertificates-batch",
        "Two CSRs, the second refused by the CA: one issued, one rejected record.",
        "POST",
        "createCertificates",
        ("create_certificates", create_kwargs(["web2", "bad"], "iss-0002")),
        create_body(["web2", "bad"], "iss-0002"),
        200,
        _success(
            {
                "certificates": [
                    _issued_record(certs["web2"]),
                    {"status": "rejected", "requestId": None, "errorCode": "CSR_REJECTED", "errorMessage": rejected_message},
                ]
            }
        ),
        {
            "result": [
                _parsed_issued(certs["web2"]),
                {"type": "RejectedRequest", "request_id": None, "code": "CSR_REJECTED", "message": rejected_message},
            ]
        },
        backend_calls=[issue_call("web2", "iss-0002"), issue_call("bad", "iss-0002")],
    )
    v423(
        "06-getCertificate-serial",
        "A certificate by serial number.",
        "POST",
        "getCertificate",
        ("get_certificate", {"serial": certs["web1"]["serial"]}),
        {"serialNumber": certs["web1"]["serial"]},
        200,
        _success(_issued_record(certs["web1"])),
        {"result": _parsed_issued(certs["web1"])},
        backend_calls=[["certificate", {"serial": certs["web1"]["serial"]}]],
    )
    v423(
        "07-getCertificate-requestId",
        "An approved request by its request id: the certificate, with the request id.",
        "POST",
        "getCertificate",
        ("get_certificate", {"request_id": "REQ-0000000041"}),
        {"requestId": "REQ-0000000041"},
        200,
        _success(_issued_record(certs["approved"], "REQ-0000000041")),
        {"result": _parsed_issued(certs["approved"], "REQ-0000000041")},
        backend_calls=[["pending", {"request_id": "REQ-0000000041"}]],
    )
    v423(
        "08-getCertificateChain-ca",
        "The chain of an issuing CA, issuing CA first.",
        "POST",
        "getCertificateChain",
        ("get_certificate_chain", {"ca_name": CA_NAME}),
        {"caName": CA_NAME},
        200,
        _success({"chain": ca["chain_pem"]}),
        {"result": ca["chain_pem"]},
        backend_calls=[["chain", {"ca_name": CA_NAME}]],
    )
    revoke_at = T423 + timedelta(seconds=2)
    v423(
        "09-revoke",
        "Revoke with an RFC 5280 reason name.",
        "POST",
        "revoke",
        ("revoke", {"serial": certs["web2"]["serial"], "reason": "keyCompromise", "remarks": "key leaked"}),
        {"serialNumber": certs["web2"]["serial"], "reason": "keyCompromise", "remarks": "key leaked"},
        200,
        _success(_issued_record(revoked(certs["web2"], revoke_at, "keyCompromise"))),
        {"result": _parsed_issued(revoked(certs["web2"], revoke_at.replace(microsecond=0), "keyCompromise"))},
        backend_calls=[["revoke", {"serial": certs["web2"]["serial"], "reason": "keyCompromise"}]],
    )
    v423(
        "10-getCrl",
        "The issuing CA's current CRL, base64 DER.",
        "POST",
        "getCrl",
        ("get_crl", {"ca_name": CA_NAME}),
        {"caName": CA_NAME},
        200,
        _success({"caName": CA_NAME, "crl": ca["crl_der_base64"]}),
        {"result": {"type": "bytes", "base64": ca["crl_der_base64"]}},
        backend_calls=[["crl_der", {"ca_name": CA_NAME}]],
    )
    status, body, expected = _failure("CSR_REJECTED", BAD_CSR_DETAIL)
    v423(
        "11-createCertificates-rejected",
        "The only CSR of the call is refused: the call fails, 422 CSR_REJECTED.",
        "POST",
        "createCertificates",
        ("create_certificates", create_kwargs(["bad"], "iss-0006")),
        create_body(["bad"], "iss-0006"),
        status,
        body,
        expected,
        backend_calls=[issue_call("bad", "iss-0006")],
    )
    status, body, expected = _failure("UNKNOWN_PROFILE")
    v423(
        "12-unknown-profile",
        "A profile emCA does not have: request-permanent.",
        "POST",
        "createCertificates",
        ("create_certificates", create_kwargs(["web1"], "iss-0007", "No Such Profile")),
        create_body(["web1"], "iss-0007", "No Such Profile"),
        status,
        body,
        expected,
        backend_calls=[],
    )
    status, body, expected = _failure("INVALID_AUTH_KEY")
    v423(
        "13-wrong-client-id",
        "The connector holds a wrong ClientID: its AuthKey does not verify.",
        "GET",
        "getCAs",
        ("get_cas", {}),
        None,
        status,
        body,
        expected,
        client_id="CID-423-wrong-wrong-wrong-wrong",
    )
    status, body, expected = _failure("STALE_TIMESTAMP")
    v423(
        "14-stale-ts",
        "The server's clock is 301 s ahead of the request's ts.",
        "GET",
        "getCAs",
        ("get_cas", {}),
        None,
        status,
        body,
        expected,
        server_now=T423 + timedelta(seconds=301),
    )
    status, body, expected = _failure("REPLAYED_TXN")
    v423(
        "15-replayed-txn",
        "A txn the server has seen before.",
        "GET",
        "getCAs",
        ("get_cas", {}),
        None,
        status,
        body,
        expected,
        seen_ids=("txn-423-0015-5f0c9a7e",),
        backend_calls=[],
    )
    status, body, expected = _failure("ALREADY_REVOKED")
    v423(
        "16-already-revoked",
        "Revoking a revoked certificate: 409 (the connector treats it as done).",
        "POST",
        "revoke",
        ("revoke", {"serial": certs["old"]["serial"], "reason": "superseded", "remarks": ""}),
        {"serialNumber": certs["old"]["serial"], "reason": "superseded", "remarks": ""},
        status,
        body,
        expected,
        backend_calls=[["revoke", {"serial": certs["old"]["serial"], "reason": "superseded"}]],
    )
    status, body, expected = _failure("NOT_FOUND")
    v423(
        "17-not-found",
        "A serial emCA never issued.",
        "POST",
        "getCertificate",
        ("get_certificate", {"serial": "0badc0de"}),
        {"serialNumber": "0badc0de"},
        status,
        body,
        expected,
        backend_calls=[["certificate", {"serial": "0badc0de"}]],
    )
    status, body, expected = _failure("INVALID_CREDENTIALS")
    v423(
        "18-wrong-password",
        "The password was rotated at emCA: connector fault.",
        "GET",
        "getCAs",
        ("get_cas", {}),
        None,
        status,
        body,
        expected,
        password="Pw-423-old",
    )
    v423(
        "19-createCertificates-applicationIds",
        "Two CSRs of two issuances in one call, each with its own applicationId (applicationIds).",
        "POST",
        "createCertificates",
        (
            "create_certificates",
            {
                "profile_name": PROFILE,
                "subscriber_id": SUBSCRIBER,
                "csrs": [csrs["web1"], csrs["web2"]],
                "application_ids": ["iss-0001", "iss-0002"],
            },
        ),
        {
            "profileName": PROFILE,
            "subscriberId": SUBSCRIBER,
            "applicationId": None,
            "applicationIds": ["iss-0001", "iss-0002"],
            "csrs": [csrs["web1"], csrs["web2"]],
        },
        200,
        _success({"certificates": [_issued_record(certs["web1"]), _issued_record(certs["web2"])]}),
        {"result": [_parsed_issued(certs["web1"]), _parsed_issued(certs["web2"])]},
        backend_calls=[issue_call("web1", "iss-0001"), issue_call("web2", "iss-0002")],
    )

    # -- V4.2.4+: JWT from /auth/token, Bearer + X-Nonce on every call --------------------------------
    v = "V4.2.4+"
    app = APPS[v]
    iat = int((T424 - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    token_nonce = "nonce-424-0001-c3d2e1f0"
    token = _jwt(app, iat, token_nonce)

    def v424(
        name: str,
        description: str,
        operation: str,
        call: tuple[str, dict[str, Any]],
        body: object | None,
        status: int,
        response: dict[str, Any],
        expected: dict[str, Any],
        *,
        bearer: str = token,
        **extra: Any,
    ) -> None:
        nonce = f"nonce-424-{int(name[:2]):04d}-c3d2e1f0"
        headers = [["Authorization", f"Bearer {bearer}"], ["X-Nonce", nonce]]
        if body is not None:
            headers.append(["Content-Type", "application/json"])
        calls = extra.pop("backend_calls", None)
        if calls is None and status != 401:
            calls = [["remember_txn", {"username": app["username"], "txn": nonce}]]
        elif calls is not None:
            calls = [["remember_txn", {"username": app["username"], "txn": nonce}], *calls]
        call[1]["token"] = bearer
        client_now = extra.pop("client_now", T424 + timedelta(seconds=60))
        out.add(
            f"v4_2_4-{name}",
            v,
            description,
            call=call,
            client_now=client_now,
            client_id=nonce,
            method="GET" if body is None else "POST",
            path=f"/emCAServices42/rest/{operation}/{app['username']}",
            headers=headers,
            body=body,
            status=status,
            response=response,
            expected=expected,
            backend_calls=calls,
            **extra,
        )

    token_body = {
        "username": app["username"],
        "password": app["password"],
        "clientId": app["client_id"],
        "validityInMins": TOKEN_MINS,
    }
    token_requested = T424 - timedelta(seconds=1)
    out.add(
        "v4_2_4-01-token",
        v,
        "Get a JWT: X-Nonce header, credentials and ClientID in the body.",
        call=("token", {"validity_mins": TOKEN_MINS}),
        client_now=token_requested,
        client_id=token_nonce,
        method="POST",
        path="/emCAServices42/auth/token",
        headers=[["X-Nonce", token_nonce], ["Content-Type", "application/json"]],
        body=token_body,
        status=200,
        response=_success({"accessToken": token, "tokenType": "Bearer", "expiresIn": 60 * TOKEN_MINS}),
        expected={
            "result": {
                "type": "AccessToken",
                "value": token,
                "obtained_at": token_requested.isoformat(),
                "expires_at": (token_requested + timedelta(minutes=TOKEN_MINS)).isoformat(),
            }
        },
        server_now=T424,
        backend_calls=[["remember_txn", {"username": app["username"], "txn": token_nonce}]],
    )
    v424(
        "02-getCAs",
        "List the issuing CAs with the bearer token.",
        "getCAs",
        ("get_cas", {}),
        None,
        200,
        _success(cas_result),
        {"result": cas_parsed},
    )
    v424(
        "03-createCertificates-issued",
        "One CSR issued; applicationId recorded, no dedupe.",
        "createCertificates",
        ("create_certificates", create_kwargs(["web1"], "iss-0001")),
        create_body(["web1"], "iss-0001"),
        200,
        _success({"certificates": [_issued_record(certs["web1"])]}),
        {"result": [_parsed_issued(certs["web1"])]},
        backend_calls=[issue_call("web1", "iss-0001")],
    )
    v424(
        "04-getCertificate-pending",
        "Poll a request held for manual approval: still pending.",
        "getCertificate",
        ("get_certificate", {"request_id": "REQ-0000000042"}),
        {"requestId": "REQ-0000000042"},
        200,
        _success(pending_record),
        {"result": pending_parsed},
        backend_calls=[["pending", {"request_id": "REQ-0000000042"}]],
    )
    revoke_at = T424 + timedelta(seconds=62)
    v424(
        "05-revoke",
        "Revoke with reason superseded.",
        "revoke",
        ("revoke", {"serial": certs["web2"]["serial"], "reason": "superseded", "remarks": "renewed"}),
        {"serialNumber": certs["web2"]["serial"], "reason": "superseded", "remarks": "renewed"},
        200,
        _success(_issued_record(revoked(certs["web2"], revoke_at, "superseded"))),
        {"result": _parsed_issued(revoked(certs["web2"], revoke_at, "superseded"))},
        backend_calls=[["revoke", {"serial": certs["web2"]["serial"], "reason": "superseded"}]],
    )
    v424(
        "06-getCrl",
        "The issuing CA's CRL.",
        "getCrl",
        ("get_crl", {"ca_name": CA_NAME}),
        {"caName": CA_NAME},
        200,
        _success({"caName": CA_NAME, "crl": ca["crl_der_base64"]}),
        {"result": {"type": "bytes", "base64": ca["crl_der_base64"]}},
        backend_calls=[["crl_der", {"ca_name": CA_NAME}]],
    )
    v424(
        "07-getCertificateChain-serial",
        "The chain of an issued certificate, by its serial.",
        "getCertificateChain",
        ("get_certificate_chain", {"serial": certs["web1"]["serial"]}),
        {"serialNumber": certs["web1"]["serial"]},
        200,
        _success({"chain": certs["web1"]["chain_pem"]}),
        {"result": certs["web1"]["chain_pem"]},
        backend_calls=[["certificate", {"serial": certs["web1"]["serial"]}]],
    )
    status, body, expected = _failure("INVALID_CREDENTIALS")
    wrong_nonce = "nonce-424-0090-c3d2e1f0"
    out.add(
        "v4_2_4-08-token-wrong-client-id",
        v,
        "A token request with a wrong ClientID: connector fault.",
        call=("token", {"validity_mins": TOKEN_MINS}),
        client_now=T424,
        client_id=wrong_nonce,
        method="POST",
        path="/emCAServices42/auth/token",
        headers=[["X-Nonce", wrong_nonce], ["Content-Type", "application/json"]],
        body={**token_body, "clientId": "CID-424-wrong"},
        status=status,
        response=body,
        expected=expected,
        credentials={"app_code": app["username"], "password": app["password"], "client_id": "CID-424-wrong"},
    )
    status, body, expected = _failure("TOKEN_EXPIRED")
    v424(
        "09-token-expired",
        "The server's clock has reached the token's exp: fetch a new token.",
        "getCAs",
        ("get_cas", {}),
        None,
        status,
        body,
        expected,
        client_now=T424 + timedelta(minutes=TOKEN_MINS, seconds=-1),
        server_now=T424 + timedelta(minutes=TOKEN_MINS),
    )
    status, body, expected = _failure("REPLAYED_NONCE")
    v424(
        "10-replayed-nonce",
        "A nonce the server has seen before.",
        "getCAs",
        ("get_cas", {}),
        None,
        status,
        body,
        expected,
        seen_ids=("nonce-424-0010-c3d2e1f0",),
        backend_calls=[],
    )
    status, body, expected = _failure("UNKNOWN_SUBSCRIBER")
    v424(
        "11-unknown-subscriber",
        "A subscriber id emCA does not know: connector fault.",
        "createCertificates",
        ("create_certificates", create_kwargs(["web1"], "iss-0008", subscriber="SUB-9999")),
        create_body(["web1"], "iss-0008", subscriber="SUB-9999"),
        status,
        body,
        expected,
        backend_calls=[],
    )
    status, body, expected = _failure("TOKEN_INVALID")
    v424(
        "12-token-wrong-key",
        "A token signed with another simulator secret: fetch a new token.",
        "getCAs",
        ("get_cas", {}),
        None,
        status,
        body,
        expected,
        bearer=_jwt(app, iat, token_nonce, secret=bytes(32)),
    )
    return out.files


def build() -> dict[str, str]:
    """File name -> exact file content."""
    mat = material()
    files = {"material.json": mat, **cases(mat)}
    return {name: json.dumps(content, indent=2, ensure_ascii=True) + "\n" for name, content in sorted(files.items())}


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    contents = build()
    for stale in OUT_DIR.glob("*.json"):
        if stale.name not in contents:
            stale.unlink()
    for name, text in contents.items():
        (OUT_DIR / name).write_text(text, encoding="ascii")
    print(f"wrote {len(contents)} files to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
