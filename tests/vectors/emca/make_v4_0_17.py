"""(Re)write the emCA V4.0.17 golden vectors in ``tests/vectors/emca/v4_0_17/``.

    .venv/bin/python tests/vectors/emca/make_v4_0_17.py             # rewrite from the committed keys
    .venv/bin/python tests/vectors/emca/make_v4_0_17.py --new-keys  # new keys, certificates, CSR, BER sample

Requests come from the connector's dialect module (services/common/emca/dialects/
v4_0_17.py) with a fixed nonce and clock; response bodies are written here, by
hand, in the chosen result format. The committed files are the truth: the tests
compare both the connector's and the simulator's sides to them, so run this only
when a wire-format choice changes, and review the diff. Rewriting from the
committed keys is byte-for-byte stable.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.emca.dialects import v4_0_17 as dialect

OUT = Path(__file__).resolve().parent / "v4_0_17"
KEYS_FILE = OUT / "keys.json"

USERNAME = "certrail-app"
PASSWORD = "s3cret-Pässwort"  # non-ASCII on purpose: pins UTF-8 in emKey and the inner JSON
PFX_PASSWORD = "pfx-pass"
SIGNING_TIME = "2025-06-01T12:00:00Z"
CLIENT_HOST = "127.0.0.1"
PROFILE = "TLS Server 1y"
PROFILE_ID = "PRF-0001"
MANUAL_PROFILE = "TLS Server Manual"
ISSUING_CA = "certrail Sim Issuing CA P-256"
SUBSCRIBER = "SUB-0001"
APPLICATION_ID = "0b5f3c52-6a3e-5c1c-9d0e-3f1f0c1a2b3c"
REQUEST_ID = "REQ-000042"
REMARKS = "key exposed in a CI log"


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certrail test vectors"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _cert(
    subject: x509.Name, issuer: x509.Name, public_key, signing_key, *, serial: int, ca: bool, days: int
) -> x509.Certificate:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    return builder.sign(signing_key, hashes.SHA256())


def _pem(obj) -> str:
    return obj.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _key_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(
        "ascii"
    )


def new_keys() -> dict:
    """Fresh fixed material: signer (RSA, so signatures are deterministic), CA chain, CSR, leaf, PFX."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    issuing_key = ec.generate_private_key(ec.SECP256R1())
    signer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert(
        _name("certrail Sim Root CA"),
        _name("certrail Sim Root CA"),
        root_key.public_key(),
        root_key,
        serial=0x1001,
        ca=True,
        days=3650,
    )
    issuing = _cert(_name(ISSUING_CA), root.subject, issuing_key.public_key(), root_key, serial=0x1002, ca=True, days=1825)
    signer = _cert(_name(USERNAME), root.subject, signer_key.public_key(), root_key, serial=0x0AB1_C2D3, ca=False, days=730)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.test")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("www.example.test")]), critical=False)
        .sign(csr_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(issuing.subject)
        .public_key(csr.public_key())
        .serial_number(0x7F3_A9C4_1D2E_85B0_61A2_B3C4_D5E6_F708)  # 31 hex digits: zero-padded forms pin canonical serials
        .not_valid_before(datetime(2025, 6, 1, tzinfo=UTC))
        .not_valid_after(datetime(2026, 6, 1, tzinfo=UTC))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("www.example.test")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(issuing_key, hashes.SHA256())
    )
    pfx = pkcs12.serialize_key_and_certificates(
        USERNAME.encode(), signer_key, signer, [root], serialization.BestAvailableEncryption(PFX_PASSWORD.encode())
    )
    return {
        "username": USERNAME,
        "password": PASSWORD,
        "aes_key_b64": base64.b64encode(hashlib.sha256(b"certrail V4.0.17 vector AES key").digest()).decode(),
        "signer_key_pem": _key_pem(signer_key),
        "signer_certificate_pem": _pem(signer),
        "pfx_b64": base64.b64encode(pfx).decode(),
        "pfx_password": PFX_PASSWORD,
        "csr_pem": _pem(csr),
        "root_ca_certificate_pem": _pem(root),
        "issuing_ca_certificate_pem": _pem(issuing),
        "leaf_certificate_pem": _pem(leaf),
    }


def ber_sample(keys: dict) -> dict:
    """A signature made by OpenSSL (another implementation), streamed as BER like emCA's samples."""
    payload = PROFILE
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "key.pem").write_text(keys["signer_key_pem"])
        (d / "cert.pem").write_text(keys["signer_certificate_pem"])
        (d / "payload").write_bytes(payload.encode())
        der = subprocess.run(
            [
                "openssl",
                "cms",
                "-sign",
                "-binary",
                "-nodetach",
                "-stream",
                "-md",
                "sha256",
                "-outform",
                "DER",
                "-signer",
                str(d / "cert.pem"),
                "-inkey",
                str(d / "key.pem"),
                "-in",
                str(d / "payload"),
            ],
            check=True,
            capture_output=True,
        ).stdout
    return {
        "description": "CMS SignedData made by `openssl cms -sign -binary -nodetach -stream -md sha256` "
        "(BER, indefinite lengths, signed attributes incl. S/MIME capabilities), like the documented emCA samples",
        "payload": payload,
        "signature": base64.b64encode(der).decode(),
    }


# ---------------------------------------------------------------- envelopes (the chosen result formats)


def envelope(status: str, result, subscriber_id=None, request_id=None) -> str:
    body = {"status": status, "result": result, "subscriberId": subscriber_id, "requestId": request_id}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def b64_der(pem: str) -> str:
    return base64.b64encode(x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)).decode()


def failure(name: str, message: str, parsed_reason: str, category: str, backend: dict | None = None, cause: str = "") -> dict:
    case = {
        "name": name,
        "status_code": 200,
        "body": envelope("failure", message),
        "parsed": {"type": "failure", "reason": parsed_reason, "category": category, "message": message},
    }
    if backend is not None:
        case["backend"] = backend
    if cause:
        case["cause"] = cause
    return case


def build(keys: dict) -> dict[str, dict]:
    signer_key = serialization.load_pem_private_key(keys["signer_key_pem"].encode(), None)
    signer = dialect.Signer(
        private_key=signer_key, certificate=x509.load_pem_x509_certificate(keys["signer_certificate_pem"].encode())
    )
    creds = dialect.Credentials(
        username=keys["username"], password=keys["password"], aes_key=base64.b64decode(keys["aes_key_b64"]), signer=signer
    )
    leaf = x509.load_pem_x509_certificate(keys["leaf_certificate_pem"].encode())
    serial = dialect.canonical_serial(leaf.serial_number)
    clock_time = datetime.fromisoformat(SIGNING_TIME.replace("Z", "+00:00"))

    def vector(name: str, builder: str, inputs: dict, responses: list[dict], description: str) -> dict:
        nonce = hashlib.sha256(f"v4_0_17/{name}".encode()).digest()[: dialect.NONCE_BYTES]
        requests = dialect.V4017Requests(creds, random_bytes=lambda n: nonce[:n], clock=lambda: clock_time)
        request = getattr(requests, builder)(**inputs)
        inner = json.loads(_decrypt(creds.aes_key, json.loads(request.body)["requestData"]))
        return {
            "dialect": "V4.0.17",
            "description": description,
            "method": request.method,
            "builder": builder,
            "inputs": inputs,
            "nonce_hex": nonce.hex(),
            "signing_time": SIGNING_TIME,
            "client_host": CLIENT_HOST,
            "intermediate": {
                "em_key": dialect.em_key(creds.username, creds.password),
                "inner_json": _decrypt(creds.aes_key, json.loads(request.body)["requestData"]).decode("utf-8"),
                "signature": inner["signature"],
            },
            "request": {
                "http_method": "POST",
                "path": request.path,
                "headers": dict(request.headers),
                "body": request.body.decode("utf-8"),
            },
            "responses": responses,
        }

    issued_backend = {
        "serial": serial,
        "certificate": "leaf",
        "chain": ["issuing_ca", "root_ca"],
        "subscriber_id": SUBSCRIBER,
        "application_id": APPLICATION_ID,
        "profile": PROFILE,
    }
    parsed_issued = {
        "type": "issued",
        "certificate": "leaf",
        "chain": [],
        "serial": serial,
        "subscriber_id": SUBSCRIBER,
        "request_id": None,
    }
    create_inputs = {
        "profile_name": PROFILE,
        "subscriber_id": SUBSCRIBER,
        "application_id": APPLICATION_ID,
        "csr_pem": keys["csr_pem"],
    }
    create_call = {
        "issue": {
            "profile": PROFILE,
            "subscriber_id": SUBSCRIBER,
            "csr_pem": keys["csr_pem"],
            "application_id": APPLICATION_ID,
            "dedupe_by_application_id": True,
        }
    }
    pending_backend = {
        "request_id": REQUEST_ID,
        "state": "pending",
        "subscriber_id": SUBSCRIBER,
        "application_id": APPLICATION_ID,
        "profile": MANUAL_PROFILE,
    }
    vectors: dict[str, dict] = {}

    vectors["create_certificate"] = vector(
        "create_certificate",
        "create_certificate",
        create_inputs,
        [
            {
                "name": "issued",
                "backend": {"calls": create_call, "issue": {"issued": issued_backend}},
                "status_code": 200,
                "body": envelope("success", b64_der(keys["leaf_certificate_pem"]), SUBSCRIBER),
                "parsed": parsed_issued,
            },
            {
                "name": "pending_manual_approval",
                "backend": {"calls": create_call, "issue": {"pending": pending_backend}},
                "status_code": 200,
                "body": envelope("success", "Request processed successfully", SUBSCRIBER, REQUEST_ID),
                "parsed": {
                    "type": "pending",
                    "request_id": REQUEST_ID,
                    "message": "Request processed successfully",
                    "subscriber_id": SUBSCRIBER,
                },
            },
            failure(
                "unknown_profile",
                "Invalid Certificate Profile name",
                "unknown_profile",
                "request_permanent",
                {"issue": {"raises": {"kind": "unknown_profile", "detail": PROFILE}}},
            ),
            failure(
                "unknown_subscriber",
                "Invalid Subscriber ID",
                "unknown_subscriber",
                "connector_fault",
                {"issue": {"raises": {"kind": "unknown_subscriber", "detail": SUBSCRIBER}}},
            ),
            failure(
                "csr_rejected",
                "Invalid CSR: key type EC-P384 not allowed by the profile",
                "csr_rejected",
                "request_permanent",
                {"issue": {"raises": {"kind": "csr_rejected", "detail": "key type EC-P384 not allowed by the profile"}}},
            ),
            failure(
                "internal_error",
                "Internal server error",
                "internal_error",
                "transient",
                {"issue": {"raises": {"kind": "internal", "detail": "database unavailable"}}},
            ),
        ],
        "createCertificate: a signed CSR under a profile, applicationId = certrail's issuance_id",
    )
    vectors["create_certificate_p7b"] = vector(
        "create_certificate_p7b",
        "create_certificate",
        {**create_inputs, "p7b": True},
        [
            {
                "name": "issued_with_chain",
                "backend": {"calls": create_call, "issue": {"issued": issued_backend}},
                "status_code": 200,
                "body": envelope(
                    "success",
                    base64.b64encode(
                        pkcs7.serialize_certificates(
                            [
                                x509.load_pem_x509_certificate(keys[k].encode())
                                for k in ("leaf_certificate_pem", "issuing_ca_certificate_pem", "root_ca_certificate_pem")
                            ],
                            serialization.Encoding.DER,
                        )
                    ).decode(),
                    SUBSCRIBER,
                ),
                "parsed": {**parsed_issued, "chain": ["issuing_ca", "root_ca"]},
            },
        ],
        "createCertificateP7B: as createCertificate, the answer is a certs-only PKCS#7 with the chain",
    )
    approved_backend = {**pending_backend, "state": "approved", "issued": issued_backend}
    vectors["get_certificate_by_request_id"] = vector(
        "get_certificate_by_request_id",
        "get_certificate_by_request_id",
        {"request_id": REQUEST_ID},
        [
            {
                "name": "still_pending",
                "backend": {"calls": {"pending": {"request_id": REQUEST_ID}}, "pending": pending_backend},
                "status_code": 200,
                "body": envelope("pending", "Request is pending for approval", SUBSCRIBER, REQUEST_ID),
                "parsed": {
                    "type": "pending",
                    "request_id": REQUEST_ID,
                    "message": "Request is pending for approval",
                    "subscriber_id": SUBSCRIBER,
                },
            },
            {
                "name": "approved",
                "backend": {"pending": approved_backend},
                "status_code": 200,
                "body": envelope("success", b64_der(keys["leaf_certificate_pem"]), SUBSCRIBER, REQUEST_ID),
                "parsed": {**parsed_issued, "request_id": REQUEST_ID},
            },
            {
                "name": "rejected",
                "backend": {
                    "pending": {**pending_backend, "state": "rejected", "rejection": "SAN not permitted for this subscriber"}
                },
                "status_code": 200,
                "body": envelope("failure", "Request rejected: SAN not permitted for this subscriber", SUBSCRIBER, REQUEST_ID),
                "parsed": {
                    "type": "failure",
                    "reason": "approval_rejected",
                    "category": "request_permanent",
                    "message": "Request rejected: SAN not permitted for this subscriber",
                },
            },
            failure(
                "unknown_request",
                "No record found",
                "not_found",
                "request_permanent",
                {"pending": {"raises": {"kind": "not_found", "detail": REQUEST_ID}}},
            ),
        ],
        "getCertificateByRequestID: poll a request held for manual approval",
    )
    vectors["get_certificate"] = vector(
        "get_certificate",
        "get_certificate",
        {"serial": format(leaf.serial_number, "032X")},
        [
            {
                "name": "found",
                "backend": {"calls": {"certificate": {"serial": serial}}, "certificate": issued_backend},
                "status_code": 200,
                "body": envelope("success", b64_der(keys["leaf_certificate_pem"]), SUBSCRIBER),
                "parsed": parsed_issued,
            },
            failure(
                "not_found",
                "No record found",
                "not_found",
                "request_permanent",
                {"certificate": {"raises": {"kind": "not_found", "detail": serial}}},
            ),
        ],
        "getCertificate: by serial (given upper-case and zero-padded; sent canonical)",
    )
    revoked = {**issued_backend, "revoked_at": "2025-06-02T00:00:00Z", "revocation_reason": "keyCompromise"}
    vectors["revoke"] = vector(
        "revoke",
        "revoke",
        {"serial": serial, "reason": "keyCompromise", "remarks": REMARKS},
        [
            {
                "name": "revoked",
                "backend": {"calls": {"revoke": {"serial": serial, "reason": "keyCompromise"}}, "revoke": revoked},
                "status_code": 200,
                "body": envelope("success", "Certificate revoked successfully", SUBSCRIBER),
                "parsed": {
                    "type": "revocation",
                    "serial": serial,
                    "reason": "keyCompromise",
                    "already_revoked": False,
                    "message": "Certificate revoked successfully",
                },
            },
            {
                **failure(
                    "already_revoked",
                    "Certificate already revoked",
                    "already_revoked",
                    "request_permanent",
                    {"revoke": {"raises": {"kind": "already_revoked", "detail": serial}}},
                ),
                "parsed": {
                    "type": "revocation",
                    "serial": serial,
                    "reason": "keyCompromise",
                    "already_revoked": True,
                    "message": "Certificate already revoked",
                },
            },
            failure(
                "not_found",
                "No record found",
                "not_found",
                "request_permanent",
                {"revoke": {"raises": {"kind": "not_found", "detail": serial}}},
            ),
        ],
        "revoke: serial, remarks, revokeMode 1 (keyCompromise)",
    )
    profiles = [
        {
            "name": PROFILE,
            "profile_id": PROFILE_ID,
            "issuing_ca": ISSUING_CA,
            "validity_days": 365,
            "key_types": ["EC-P256", "RSA-2048"],
            "manual_approval": False,
        },
        {
            "name": MANUAL_PROFILE,
            "profile_id": "PRF-0002",
            "issuing_ca": ISSUING_CA,
            "validity_days": 90,
            "key_types": ["EC-P256"],
            "manual_approval": True,
        },
        {
            "name": "Other CA profile",
            "profile_id": "PRF-0003",
            "issuing_ca": "Another Issuing CA",
            "validity_days": 30,
            "key_types": ["RSA-2048"],
            "manual_approval": False,
        },
    ]
    vectors["get_certificate_profile_list"] = vector(
        "get_certificate_profile_list",
        "get_certificate_profile_list",
        {"ca_name": ISSUING_CA},
        [
            {
                "name": "profiles_of_the_ca",
                "backend": {"profiles": profiles},
                "status_code": 200,
                "body": envelope(
                    "success",
                    [{"profileName": PROFILE, "profileId": PROFILE_ID}, {"profileName": MANUAL_PROFILE, "profileId": "PRF-0002"}],
                ),
                "parsed": {
                    "type": "profiles",
                    "profiles": [{"name": PROFILE, "profile_id": PROFILE_ID}, {"name": MANUAL_PROFILE, "profile_id": "PRF-0002"}],
                },
            },
        ],
        "getCertificateProfileList: the documented signed data is the issuing CA's name",
    )
    info_result = {
        "profileName": PROFILE,
        "profileId": PROFILE_ID,
        "issuingCA": ISSUING_CA,
        "validityDays": 365,
        "keyTypes": ["EC-P256", "RSA-2048"],
        "manualAuthorization": False,
        "issuingCAChain": [b64_der(keys["issuing_ca_certificate_pem"]), b64_der(keys["root_ca_certificate_pem"])],
    }
    vectors["get_profile_info"] = vector(
        "get_profile_info",
        "get_profile_info",
        {"profile_name": PROFILE},
        [
            {
                "name": "found",
                "backend": {
                    "calls": {"profile": {"name": PROFILE}, "chain": {"ca_name": ISSUING_CA}},
                    "profiles": profiles,
                    "chain": ["issuing_ca", "root_ca"],
                },
                "status_code": 200,
                "body": envelope("success", info_result),
                "parsed": {
                    "type": "profile_info",
                    "name": PROFILE,
                    "profile_id": PROFILE_ID,
                    "issuing_ca": ISSUING_CA,
                    "validity_days": 365,
                    "key_types": ["EC-P256", "RSA-2048"],
                    "manual_approval": False,
                    "issuing_ca_chain": ["issuing_ca", "root_ca"],
                },
            },
            failure(
                "unknown_profile",
                "Invalid Certificate Profile name",
                "unknown_profile",
                "request_permanent",
                {"profiles": [p for p in profiles if p["name"] != PROFILE]},
                cause="a profile name the backend does not know",
            ),
        ],
        "getProfileInfoByProfileName (URL spelt getProfileinfoByProfilename): the issuing CA a profile implies",
    )
    vectors["errors"] = {
        "dialect": "V4.0.17",
        "description": "The documented refusals, each caused by altering the createCertificate vector request",
        "responses": [
            failure(
                "invalid_parameter",
                "Invalid parameter",
                "invalid_parameter",
                "connector_fault",
                cause="the inner JSON lacks applicationId",
            ),
            failure(
                "invalid_input_data",
                "Invalid input data",
                "decryption_failed",
                "connector_fault",
                cause="requestData altered or encrypted with another key",
            ),
            failure(
                "invalid_request_details",
                "Invalid request details found",
                "authentication_failed",
                "connector_fault",
                cause="wrong password, wrong emKey, unknown userName or unregistered source address",
            ),
            failure(
                "signature_verification_failed",
                "Signature verification failed",
                "signature_failed",
                "connector_fault",
                cause="signed with another key, or the payload altered",
            ),
            failure(
                "internal_server_error",
                "Internal server error",
                "internal_error",
                "transient",
                cause="the CA core raised an unexpected exception",
            ),
        ],
    }
    return vectors


def _decrypt(key: bytes, request_data: str) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    raw = base64.b64decode(request_data)
    return AESGCM(key).decrypt(raw[: dialect.NONCE_BYTES], raw[dialect.NONCE_BYTES :], None)


def write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-keys", action="store_true", help="generate new keys, certificates, CSR and BER sample")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.new_keys or not KEYS_FILE.exists():
        keys = new_keys()
        write(
            KEYS_FILE, {"description": "Fixed material for the V4.0.17 vectors: test-only keys, never used anywhere else", **keys}
        )
        write(OUT / "ber_signature.json", ber_sample(keys))
    keys = json.loads(KEYS_FILE.read_text(encoding="utf-8"))
    for name, data in build(keys).items():
        write(OUT / f"{name}.json", data)
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
