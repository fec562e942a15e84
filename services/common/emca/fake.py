"""A fake emCA for unit tests: `FakeEmca` keeps a real (in-memory) CA, `FakeEmcaConnection`
implements `EmcaConnection` against it. It passes the same contract tests as the real client.

    emca = FakeEmca()
    connection = emca.connect(emca.endpoint_for("app-v423"))   # or registry(connect=emca.connect)
    emca.faults.down = True                                      # -> TransientError(CA_UNREACHABLE)

It behaves as the dialects do where the contract says so: the checks come in the real order
(reachable, TLS trust, 429/5xx, credentials, profile, subscriber, CSR), V4.0.17 alone dedupes on
applicationId, certificates are really signed (P-256 root and issuing CA) and the CRL is a real
signed CRL. Credentials are compared as given (no wire format).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import RevocationReason
from services.common.emca.support import certificate_sha256
from services.common.emca.types import (
    BatchOutcome,
    ConnectorFaultError,
    EmcaEndpoint,
    EmcaVersion,
    HttpOptions,
    IssuedCertificate,
    IssueOutcome,
    IssuingCa,
    PendingIssuance,
    ProfileInfo,
    RequestPermanentError,
    Revocation,
    SubscriberProbe,
    TransientError,
    UnsupportedOperation,
)

FAKE_BASE_URL = "https://fake-emca.invalid"
CRL_BASE = "http://fake-emca.invalid/crl/"
FAKE_MAX_CSRS_PER_CALL = 50  # as the 4.2.x simulator


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _slug(name: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


@dataclass
class FakeApp:
    username: str
    password: str
    version: EmcaVersion
    client_id: str | None = None
    aes_key: str | None = None
    pfx: bytes | None = None


@dataclass
class FakeFaults:
    down: bool = False
    rate_limit_retry_after: float | None = None  # set: every call is answered 429 with this Retry-After
    server_error: int | None = None  # set: every call is answered with this 5xx status


@dataclass
class _Ca:
    name: str
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    cert: x509.Certificate
    chain: tuple[str, ...]  # this CA first, then the root


@dataclass
class _Record:
    issued: IssuedCertificate
    issuing_ca: str
    application_id: str | None
    revoked_at: datetime | None = None
    reason: RevocationReason | None = None


@dataclass
class _Held:
    request_id: str
    profile: str
    csr: x509.CertificateSigningRequest
    application_id: str | None
    state: str = "pending"  # approved | rejected
    serial: str | None = None
    rejection: str = ""


class FakeEmca:
    """An in-memory emCA: one root, issuing CAs, profiles, subscribers and registered applications."""

    def __init__(
        self,
        *,
        issuing_cas: Sequence[str] = ("Fake Issuing CA P-256",),
        profiles: Sequence[ProfileInfo] | None = None,
        subscribers: Sequence[str] = ("SUB-0001",),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.clock = clock
        now = clock()
        root_key = ec.generate_private_key(ec.SECP384R1())
        root = self._ca_cert(_name("Fake Root CA"), root_key.public_key(), _name("Fake Root CA"), root_key, now, path_len=1)
        self.root_pem = _pem(root)
        self._cas: dict[str, _Ca] = {}
        for ca_name in issuing_cas:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = self._ca_cert(_name(ca_name), key.public_key(), root.subject, root_key, now, path_len=0)
            self._cas[ca_name] = _Ca(ca_name, key, cert, (_pem(cert), self.root_pem))
        first = issuing_cas[0]
        self.profiles: dict[str, ProfileInfo] = {
            p.name: p
            for p in profiles
            or (
                ProfileInfo("TLS Server", "1001", first, 90, ("EC-P256", "RSA-2048"), False),
                ProfileInfo("TLS Server Manual", "1004", first, 90, ("EC-P256", "RSA-2048"), True),
            )
        }
        self.subscribers = set(subscribers)
        self.apps: dict[str, FakeApp] = {}
        self.faults = FakeFaults()
        tls_key = ec.generate_private_key(ec.SECP256R1())
        self.tls_ca_pem = _pem(self._ca_cert(_name("Fake TLS CA"), tls_key.public_key(), _name("Fake TLS CA"), tls_key, now, 0))
        self._records: dict[str, _Record] = {}
        self._held: dict[str, _Held] = {}
        self._by_application_id: dict[str, str] = {}
        self.issued_by_application_id: dict[str, int] = {}
        self.calls: list[str] = []
        self._crl_numbers = itertools.count(1)
        for version, username in ((EmcaVersion.V4_0_17, "app-v4017"), (EmcaVersion.V4_2_3, "app-v423"), (EmcaVersion.V4_2_4, "app-v424")):
            self.register(username, version)

    # -- administration (what an emCA admin or the test does) ------------------------------------

    def register(self, username: str, version: EmcaVersion) -> FakeApp:
        legacy = version is EmcaVersion.V4_0_17
        app = FakeApp(
            username=username,
            password=uuid.uuid4().hex,
            version=version,
            client_id=None if legacy else str(uuid.uuid4()),
            aes_key=uuid.uuid4().hex + uuid.uuid4().hex if legacy else None,
            pfx=b"fake-pfx-" + uuid.uuid4().bytes if legacy else None,
        )
        self.apps[username] = app
        return app

    def rotate_credentials(self, username: str) -> FakeApp:
        app = self.apps[username]
        app.password = uuid.uuid4().hex
        if app.client_id is not None:
            app.client_id = str(uuid.uuid4())
        return app

    def endpoint_for(self, username: str, *, base_url: str = FAKE_BASE_URL, **overrides: object) -> EmcaEndpoint:
        app = self.apps[username]
        endpoint = EmcaEndpoint(
            version=app.version,
            base_url=base_url,
            username=app.username,
            password=app.password,
            ca_bundle_pem=self.tls_ca_pem,
            client_id=app.client_id,
            aes_key=app.aes_key,
            pfx=app.pfx,
            pfx_password="fake" if app.pfx else None,
        )
        return replace(endpoint, **overrides)  # type: ignore[arg-type]

    def connect(self, endpoint: EmcaEndpoint, options: HttpOptions | None = None) -> FakeEmcaConnection:
        """A `ConnectionFactory`: the fake's connection for ``endpoint``."""
        return FakeEmcaConnection(self, endpoint)

    def approve(self, request_id: str) -> IssuedCertificate:
        held = self._held[request_id]
        if held.serial is None:
            issued = self._sign(self.profiles[held.profile], held.csr, held.application_id, request_id=request_id)
            held.state, held.serial = "approved", issued.serial
        return self._records[held.serial].issued

    def reject(self, request_id: str, reason: str = "rejected by the CA officer") -> None:
        held = self._held[request_id]
        held.state, held.rejection = "rejected", reason

    def issuing_ca(self, name: str) -> IssuingCa:
        pem = self._cas[name].chain[0]
        return IssuingCa(name, pem, certificate_sha256(pem))

    def crl_der(self, issuing_ca: str) -> bytes:
        ca = self._cas[issuing_ca]
        now = self.clock()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.cert.subject)
            .last_update(now - timedelta(minutes=1))
            .next_update(now + timedelta(hours=24))
            .add_extension(x509.CRLNumber(next(self._crl_numbers)), critical=False)
        )
        for record in self._records.values():
            if record.issuing_ca == issuing_ca and record.revoked_at is not None:
                entry = x509.RevokedCertificateBuilder().serial_number(int(record.issued.serial, 16)).revocation_date(record.revoked_at)
                if record.reason and record.reason is not RevocationReason.UNSPECIFIED:
                    entry = entry.add_extension(x509.CRLReason(x509.ReasonFlags(record.reason.value)), critical=False)
                builder = builder.add_revoked_certificate(entry.build())
        return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    # -- the CA ----------------------------------------------------------------------------------

    @staticmethod
    def _ca_cert(
        subject: x509.Name, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
        now: datetime, path_len: int,
    ) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(key, hashes.SHA384() if isinstance(key.curve, ec.SECP384R1) else hashes.SHA256())
        )

    def _check_csr(self, csr_pem: str) -> x509.CertificateSigningRequest:
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
        except ValueError as exc:
            raise RequestPermanentError(ErrorCode.CA_REJECTED, f"emCA: Invalid CSR: {exc}", detail="csr_rejected") from None
        if not csr.is_signature_valid:
            raise RequestPermanentError(ErrorCode.CA_REJECTED, "emCA: Invalid CSR: bad signature", detail="csr_rejected")
        return csr

    def _sign(
        self, profile: ProfileInfo, csr: x509.CertificateSigningRequest, application_id: str | None, request_id: str | None = None
    ) -> IssuedCertificate:
        assert profile.issuing_ca is not None
        ca = self._cas[profile.issuing_ca]
        now = self.clock()
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(ca.cert.subject)
            .public_key(csr.public_key())  # type: ignore[arg-type]
            .serial_number(serial)
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=profile.validity_days or 90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.CRLDistributionPoints(
                    [x509.DistributionPoint([x509.UniformResourceIdentifier(CRL_BASE + _slug(ca.name) + ".crl")], None, None, None)]
                ),
                critical=False,
            )
        )
        try:
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            builder = builder.add_extension(sans, critical=False)
        except x509.ExtensionNotFound:
            pass
        cert = builder.sign(ca.key, hashes.SHA256())
        issued = IssuedCertificate(
            serial=format(serial, "x"), certificate_pem=_pem(cert), chain_pem=ca.chain, request_id=request_id, revoked=False
        )
        self._records[issued.serial] = _Record(issued, ca.name, application_id)
        if application_id is not None:
            self.issued_by_application_id[application_id] = self.issued_by_application_id.get(application_id, 0) + 1
            self._by_application_id.setdefault(application_id, issued.serial)
        return issued

    def _gate(self, connection: FakeEmcaConnection, operation: str) -> FakeApp:
        """Faults, TLS trust and credentials, in the order a real call meets them."""
        self.calls.append(operation)
        endpoint = connection.endpoint
        if self.faults.down or not endpoint.base_url.startswith(FAKE_BASE_URL):
            raise TransientError(f"{endpoint.base_url} unreachable: connection refused", detail="unreachable")
        if self.tls_ca_pem not in (endpoint.ca_bundle_pem or ""):
            raise ConnectorFaultError(ErrorCode.CA_TLS_UNTRUSTED, "the TLS certificate of emCA is not trusted", detail="tls_untrusted")
        if self.faults.rate_limit_retry_after is not None:
            raise TransientError("HTTP 429", http_status=429, retry_after=self.faults.rate_limit_retry_after, detail="rate_limited")
        if self.faults.server_error is not None:
            raise TransientError(f"HTTP {self.faults.server_error}", http_status=self.faults.server_error, detail="server_error")
        app = self.apps.get(endpoint.username)
        if app is None or app.version is not endpoint.version or app.password != endpoint.password:
            raise ConnectorFaultError(ErrorCode.CA_AUTH_FAILED, "emCA: invalid credentials", detail="authentication_failed")
        if app.version is EmcaVersion.V4_0_17:
            if app.aes_key != endpoint.aes_key:
                raise ConnectorFaultError(ErrorCode.CA_DECRYPTION_FAILED, "emCA: Invalid input data", detail="decryption_failed")
            if app.pfx != endpoint.pfx:
                raise ConnectorFaultError(ErrorCode.CA_SIGNATURE_FAILED, "emCA: Signature verification failed", detail="signature")
        elif app.client_id != endpoint.client_id:
            raise ConnectorFaultError(ErrorCode.CA_AUTH_FAILED, "emCA: INVALID_AUTH_KEY", detail="INVALID_AUTH_KEY")
        return app

    def _profile(self, name: str) -> ProfileInfo:
        profile = self.profiles.get(name)
        if profile is None:
            raise RequestPermanentError(ErrorCode.CA_PROFILE_NOT_FOUND, f"emCA: no profile {name!r}", detail="unknown_profile")
        return profile

    def _submit(self, app: FakeApp, csr_pem: str, profile_name: str, subscriber_id: str, application_id: str | None) -> IssueOutcome:
        profile = self._profile(profile_name)
        if subscriber_id not in self.subscribers:
            raise ConnectorFaultError(ErrorCode.SUBSCRIBER_INVALID, "emCA: Invalid Subscriber ID", detail="unknown_subscriber")
        if app.version is EmcaVersion.V4_0_17 and application_id in self._by_application_id:
            return self._records[self._by_application_id[application_id]].issued  # documented dedupe
        if app.version is EmcaVersion.V4_0_17:
            for held in self._held.values():
                if held.application_id == application_id and held.state == "pending":
                    return PendingIssuance(held.request_id, "Request processed successfully")
        csr = self._check_csr(csr_pem)
        if profile.manual_approval:
            held = _Held(uuid.uuid4().hex[:16], profile.name, csr, application_id)
            self._held[held.request_id] = held
            return PendingIssuance(held.request_id, "Request processed successfully")
        return self._sign(profile, csr, application_id)

    def _poll(self, request_id: str) -> IssueOutcome:
        held = self._held.get(request_id)
        if held is None:
            raise RequestPermanentError(ErrorCode.CERTIFICATE_NOT_FOUND, "emCA: No record found", detail="not_found")
        if held.state == "rejected":
            raise RequestPermanentError(ErrorCode.APPROVAL_REJECTED, f"emCA: Request rejected: {held.rejection}", detail="rejected")
        if held.serial is not None:
            return self._records[held.serial].issued
        return PendingIssuance(request_id, "Request is pending for approval")

    def _record(self, serial: str) -> _Record:
        key = format(int(serial.replace(":", ""), 16), "x")
        if key not in self._records:
            raise RequestPermanentError(ErrorCode.CERTIFICATE_NOT_FOUND, "emCA: No record found", detail="not_found")
        return self._records[key]

    def _revoke(self, serial: str, reason: RevocationReason) -> Revocation:
        record = self._record(serial)
        if record.revoked_at is not None:
            return Revocation(record.issued.serial, reason, already_revoked=True)
        record.revoked_at, record.reason = self.clock().replace(microsecond=0), reason
        record.issued = replace(record.issued, revoked=True)
        return Revocation(record.issued.serial, reason)


class FakeEmcaConnection:
    """`EmcaConnection` against a `FakeEmca` (no network)."""

    def __init__(self, emca: FakeEmca, endpoint: EmcaEndpoint) -> None:
        self.emca = emca
        self.endpoint = endpoint
        self.closed = False

    @property
    def version(self) -> EmcaVersion:
        return EmcaVersion(self.endpoint.version)

    async def check_connection(self) -> None:
        self.emca._gate(self, "check_connection")

    async def list_issuing_cas(self, *, via_profiles: Sequence[str] = ()) -> tuple[IssuingCa, ...]:
        self.emca._gate(self, "list_issuing_cas")
        if self.version is EmcaVersion.V4_0_17:  # no CA listing: through the profiles named
            names = [self.emca.profiles[p].issuing_ca for p in via_profiles if p in self.emca.profiles]
        else:
            names = list(self.emca._cas)
        return tuple(self.emca.issuing_ca(n) for n in dict.fromkeys(n for n in names if n))

    async def list_profiles(self, issuing_ca: str) -> tuple[ProfileInfo, ...]:
        self.emca._gate(self, "list_profiles")
        return tuple(p for p in self.emca.profiles.values() if p.issuing_ca == issuing_ca)

    async def profile_info(self, profile_name: str) -> ProfileInfo:
        self.emca._gate(self, "profile_info")
        return self.emca._profile(profile_name)

    async def check_subscriber(self, *, profile_name: str, subscriber_id: str) -> SubscriberProbe:
        self.emca._gate(self, "check_subscriber")
        self.emca._profile(profile_name)
        if subscriber_id not in self.emca.subscribers:
            raise ConnectorFaultError(ErrorCode.SUBSCRIBER_INVALID, "emCA: Invalid Subscriber ID", detail="unknown_subscriber")
        return SubscriberProbe(note="subscriber accepted; the probe CSR was refused as intended (fake)")

    async def submit_csr(self, *, csr_pem: str, profile_name: str, subscriber_id: str, application_id: str) -> IssueOutcome:
        app = self.emca._gate(self, "submit_csr")
        return self.emca._submit(app, csr_pem, profile_name, subscriber_id, application_id)

    @property
    def max_csrs_per_call(self) -> int:
        return 1 if self.version is EmcaVersion.V4_0_17 else FAKE_MAX_CSRS_PER_CALL

    async def submit_csrs(
        self, *, csr_pems: Sequence[str], profile_name: str, subscriber_id: str, application_ids: Sequence[str | None]
    ) -> tuple[BatchOutcome, ...]:
        app = self.emca._gate(self, "submit_csrs")
        if (
            not 1 <= len(csr_pems) <= self.max_csrs_per_call
            or len(application_ids) != len(csr_pems)
            or (self.version is EmcaVersion.V4_0_17 and None in application_ids)
        ):
            raise UnsupportedOperation(f"{self.version.value} takes 1..{self.max_csrs_per_call} CSRs per call, an id each")
        outcomes: list[BatchOutcome] = []
        for csr_pem, application_id in zip(csr_pems, application_ids, strict=True):  # as 4.2.x: a refused CSR is a record
            try:
                outcomes.append(self.emca._submit(app, csr_pem, profile_name, subscriber_id, application_id))
            except RequestPermanentError as refusal:
                if refusal.code is not ErrorCode.CA_REJECTED:
                    raise
                outcomes.append(refusal)
        first = outcomes[0]
        if isinstance(first, RequestPermanentError) and all(isinstance(o, RequestPermanentError) for o in outcomes):
            raise first  # nothing issued or held: the call fails with the first refusal
        return tuple(outcomes)

    async def poll_request(self, request_id: str) -> IssueOutcome:
        self.emca._gate(self, "poll_request")
        return self.emca._poll(request_id)

    async def get_certificate(self, serial: str) -> IssuedCertificate:
        self.emca._gate(self, "get_certificate")
        return self.emca._record(serial).issued

    async def revoke(self, serial: str, reason: RevocationReason, *, remarks: str = "") -> Revocation:
        self.emca._gate(self, "revoke")
        return self.emca._revoke(serial, reason)

    async def get_chain(self, issuing_ca: str) -> tuple[str, ...]:
        self.emca._gate(self, "get_chain")
        if issuing_ca not in self.emca._cas:
            raise ConnectorFaultError(ErrorCode.ISSUING_CA_NOT_FOUND, f"emCA: CA not found: {issuing_ca!r}", detail="unknown_ca")
        return self.emca._cas[issuing_ca].chain

    async def get_crl(self, issuing_ca: str, *, distribution_point: str | None = None) -> bytes:
        if distribution_point is None and self.version is EmcaVersion.V4_0_17:
            raise UnsupportedOperation("V4.0.17 has no CRL method: give the CRL distribution point of a certificate")
        if distribution_point is not None:  # "fetched over HTTP": the fake CA publishes at CRL_BASE
            if self.emca.faults.down or distribution_point != CRL_BASE + _slug(issuing_ca) + ".crl":
                raise TransientError(f"{distribution_point} unreachable", detail="unreachable")
            return self.emca.crl_der(issuing_ca)
        self.emca._gate(self, "get_crl")
        if issuing_ca not in self.emca._cas:
            raise ConnectorFaultError(ErrorCode.ISSUING_CA_NOT_FOUND, f"emCA: CA not found: {issuing_ca!r}", detail="unknown_ca")
        return self.emca.crl_der(issuing_ca)

    async def aclose(self) -> None:
        self.closed = True

