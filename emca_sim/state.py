"""The simulated emCA's state: what it issued, holds for approval, revoked and counted.

`SimEmca` is the `emca_sim.backend.SimBackend` the dialects call: it ties the
certificate work of `emca_sim.ca` to `emca_sim.store.Store`, the SQLite file
``DIR/state.db`` (batched commits: see there).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from emca_sim.backend import (
    CaInfo,
    Counters,
    Dialect,
    Issued,
    Pending,
    ProfileInfo,
    RegisteredApp,
    SimError,
    SimErrorKind,
)
from emca_sim.ca import (
    CaHierarchy,
    Clock,
    LeafTemplate,
    ValidatedCsr,
    application_pfx,
    build_crl,
    parse_serial,
    random_serial,
    revocation_reason,
    serial_hex,
    sign_leaf,
    utcnow,
    validate_csr,
    write_file,
)
from emca_sim.config import ApplicationConfig, ProfileConfig, SimConfig
from emca_sim.store import (
    ISSUED_BY_APPLICATION_ID,
    ISSUED_BY_PUBLIC_KEY,
    REQUESTS_BY_METHOD,
    AppRow,
    CertRow,
    PendingRow,
    Store,
)

log = logging.getLogger("emca_sim")

DEFAULT_PUBLIC_BASE_URL = "http://127.0.0.1:8444"


@dataclass(frozen=True)
class _CachedCrl:
    revision: int
    refresh_at: datetime
    der: bytes


class SimEmca:
    """The simulated emCA: implements `SimBackend`, plus what the admin API and the CRL server need.

    ``SimEmca(data_dir)`` creates everything on first use (see `CaHierarchy`)
    and registers the configured applications, writing what an emCA admin
    hands over into ``DIR/applications/<username>/``. Call `close` (or use it
    as a context manager) to commit the last batch.
    """

    def __init__(self, data_dir: Path | str, config: SimConfig | None = None, *, public_base_url: str | None = None,
                 clock: Clock = utcnow, commit_interval: float = 0.05) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.config = config or SimConfig()
        self.public_base_url = (public_base_url or self.config.public_base_url or DEFAULT_PUBLIC_BASE_URL).rstrip("/")
        self._clock = clock
        self.hierarchy = CaHierarchy.load_or_create(self.data_dir, self.config, self.public_base_url)
        self.store = Store(self.data_dir / "state.db", commit_interval=commit_interval)
        self._profiles = {p.name: p for p in self.config.profiles}
        self._profiles_by_id = {p.profile_id: p for p in self.config.profiles}
        self._templates = {p.name: LeafTemplate.build(p, self.hierarchy.issuing[p.issuing_ca]) for p in self.config.profiles}
        self._subscribers = frozenset(self.config.subscribers)
        self._lock = threading.Lock()  # approvals, revocations, credential rotation
        self._crl_lock = threading.Lock()
        self._crl_cache: dict[str, _CachedCrl] = {}
        self._crl_revision: dict[str, int] = {ca.name: 0 for ca in self.hierarchy.all()}
        self._apps: dict[str, RegisteredApp] = {}
        self._apps_by_client_id: dict[str, RegisteredApp] = {}
        try:
            for app_config in self.config.applications:
                row = self.store.application(app_config.username)
                if row is None or row.dialect != app_config.dialect:
                    row = self._register(app_config)
                self._cache_app(row, app_config)
        except BaseException:
            self.store.close()
            raise

    def __enter__(self) -> SimEmca:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    # -- registered applications
    def _app_config(self, username: str) -> ApplicationConfig:
        return next(a for a in self.config.applications if a.username == username)

    def _register(self, app: ApplicationConfig) -> AppRow:
        log.info("registering external application %r (%s)", app.username, app.dialect.value)
        password = app.password.get_secret_value() if app.password else secrets.token_urlsafe(18)
        app_dir = self.data_dir / "applications" / app.username
        app_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if app.dialect is Dialect.V4_0_17:
            ca = next(iter(self.hierarchy.issuing.values()))
            pfx = application_pfx(app.username, ca, self.hierarchy.chain(ca.name), self.config.application_key_type)
            aes_key = secrets.token_bytes(32)
            write_file(app_dir / "application.pfx", pfx.pfx, 0o600)
            write_file(app_dir / "aes.key", (aes_key.hex() + "\n").encode(), 0o600)
            row = AppRow(app.username, app.dialect, password, aes_key=aes_key, pfx_password=pfx.password,
                         signer_certificate_pem=pfx.certificate_pem)
        else:
            row = AppRow(app.username, app.dialect, password, client_id=str(uuid.uuid4()))
        self.store.put_application(row)
        self._write_credentials(row, app)
        return row

    def _write_credentials(self, row: AppRow, app: ApplicationConfig) -> None:
        document: dict[str, object] = {"username": row.username, "password": row.password, "dialect": row.dialect.value,
                                       "source_addresses": list(app.source_addresses)}
        if row.dialect is Dialect.V4_0_17:
            document.update(pfx_file="application.pfx", pfx_password=row.pfx_password, aes_key_file="aes.key",
                            aes_key_encoding="hex")
        else:
            document["client_id"] = row.client_id
        path = self.data_dir / "applications" / row.username / "credentials.json"
        write_file(path, (json.dumps(document, indent=2) + "\n").encode(), 0o600)

    def _cache_app(self, row: AppRow, app: ApplicationConfig) -> RegisteredApp:
        registered = RegisteredApp(username=row.username, password=row.password, dialect=row.dialect,
                                   source_addresses=tuple(app.source_addresses), aes_key=row.aes_key,
                                   signer_certificate_pem=row.signer_certificate_pem, client_id=row.client_id)
        previous = self._apps.get(row.username)
        if previous is not None and previous.client_id:
            self._apps_by_client_id.pop(previous.client_id, None)
        self._apps[row.username] = registered
        if registered.client_id:
            self._apps_by_client_id[registered.client_id] = registered
        return registered

    def application(self, username: str) -> RegisteredApp | None:
        return self._apps.get(username)

    def application_by_client_id(self, client_id: str) -> RegisteredApp | None:
        return self._apps_by_client_id.get(client_id)

    def applications(self) -> list[RegisteredApp]:
        return list(self._apps.values())

    def rotate_credentials(self, username: str) -> RegisteredApp:
        """A new password (and, for 4.2.x, a new ClientID); credentials.json is rewritten. Raises SimError(NOT_FOUND)."""
        with self._lock:
            row = self.store.application(username)
            if row is None or username not in self._apps:
                raise SimError(SimErrorKind.NOT_FOUND, f"no registered application {username!r}")
            row = replace(row, password=secrets.token_urlsafe(18),
                          client_id=None if row.dialect is Dialect.V4_0_17 else str(uuid.uuid4()))
            self.store.put_application(row)
            app = self._app_config(username)
            self._write_credentials(row, app)
            return self._cache_app(row, app)

    def remember_txn(self, username: str, txn: str) -> bool:
        return self.store.remember_txn(username, txn)

    def count_request(self, method: str) -> None:
        self.store.increment(REQUESTS_BY_METHOD, method)

    # -- catalogue
    @staticmethod
    def _info(profile: ProfileConfig) -> ProfileInfo:
        return ProfileInfo(name=profile.name, profile_id=profile.profile_id, issuing_ca=profile.issuing_ca,
                           validity_days=profile.catalogue_validity_days, key_types=tuple(profile.key_types),
                           manual_approval=profile.manual_approval)

    def profiles(self) -> list[ProfileInfo]:
        return [self._info(p) for p in self._profiles.values()]

    def profile(self, name: str) -> ProfileInfo | None:
        found = self._profiles.get(name)
        return None if found is None else self._info(found)

    def profile_by_id(self, profile_id: str) -> ProfileInfo | None:
        found = self._profiles_by_id.get(profile_id)
        return None if found is None else self._info(found)

    def cas(self) -> list[CaInfo]:
        return [CaInfo(name=ca.name, key_type=ca.config.key_type, certificate_pem=ca.pem, sha256=ca.sha256)
                for ca in self.hierarchy.issuing.values()]

    def subscriber_exists(self, subscriber_id: str) -> bool:
        return subscriber_id in self._subscribers

    def chain(self, ca_name: str) -> tuple[str, ...]:
        return self.hierarchy.chain(ca_name)

    # -- issuance
    def issue(self, *, profile: str, subscriber_id: str, csr_pem: str, application_id: str | None,
              dedupe_by_application_id: bool) -> Issued | Pending:
        config = self._profiles.get(profile)
        if config is None:
            raise SimError(SimErrorKind.UNKNOWN_PROFILE, f"no certificate profile named {profile!r}")
        if subscriber_id not in self._subscribers:
            raise SimError(SimErrorKind.UNKNOWN_SUBSCRIBER, f"no subscriber {subscriber_id!r}")
        dedupe = dedupe_by_application_id and application_id is not None
        if dedupe:
            assert application_id is not None
            existing = self.store.certificate_for_application_id(application_id)
            if existing is not None:
                return self._issued(existing)
            waiting = self.store.open_pending_for_application_id(application_id)
            if waiting is not None:
                return self._pending(waiting)
        csr = validate_csr(csr_pem, config)
        if config.manual_approval:
            row = PendingRow(request_id=secrets.token_hex(8), profile=profile, subscriber_id=subscriber_id,
                             application_id=application_id, csr=csr_pem, state="pending", serial=None, rejection=None,
                             created_at=self._clock())
            self.store.insert_pending(row)
            return self._pending(row)
        signed = self._sign(config, subscriber_id, application_id, csr)
        return self._issued(self.store.insert_certificate(signed, dedupe_application_id=dedupe))

    def _sign(self, profile: ProfileConfig, subscriber_id: str, application_id: str | None, csr: ValidatedCsr) -> CertRow:
        template = self._templates[profile.name]
        serial, now = random_serial(), self._clock()
        certificate = sign_leaf(template, csr, serial, now)
        return CertRow(serial=serial_hex(serial), ca_name=template.ca.name, profile=profile.name, subscriber_id=subscriber_id,
                       application_id=application_id, public_key_sha256=csr.public_key_sha256,
                       certificate_pem=certificate.public_bytes(Encoding.PEM).decode(), issued_at=now)

    def _issued(self, row: CertRow) -> Issued:
        return Issued(serial=row.serial, certificate_pem=row.certificate_pem, chain_pem=self.hierarchy.chain(row.ca_name),
                      profile=row.profile, subscriber_id=row.subscriber_id, application_id=row.application_id,
                      issued_at=row.issued_at, revoked_at=row.revoked_at, revocation_reason=row.revocation_reason)

    def _pending(self, row: PendingRow) -> Pending:
        issued = None
        if row.serial is not None:
            cert = self.store.certificate(row.serial)
            issued = None if cert is None else self._issued(cert)
        return Pending(request_id=row.request_id, profile=row.profile, subscriber_id=row.subscriber_id,
                       application_id=row.application_id, state=row.state, issued=issued, rejection=row.rejection)

    def pending(self, request_id: str) -> Pending:
        row = self.store.pending(request_id)
        if row is None:
            raise SimError(SimErrorKind.NOT_FOUND, f"no request with id {request_id!r}")
        return self._pending(row)

    def pending_requests(self, state: str | None = "pending") -> list[Pending]:
        return [self._pending(row) for row in self.store.pending_list(state)]

    def approve(self, request_id: str) -> Pending:
        """Sign a held request (its CSR is checked again). Approving twice returns the same result.

        Raises SimError(NOT_FOUND), SimError(CSR_REJECTED) or `RequestSettled` for a rejected request."""
        with self._lock:
            row = self.store.pending(request_id)
            if row is None:
                raise SimError(SimErrorKind.NOT_FOUND, f"no request with id {request_id!r}")
            if row.state == "approved":
                return self._pending(row)
            if row.state != "pending":
                raise RequestSettled(f"request {request_id} was already {row.state}")
            profile = self._profiles.get(row.profile)
            if profile is None:
                raise SimError(SimErrorKind.UNKNOWN_PROFILE, f"profile {row.profile!r} is no longer configured")
            signed = self._sign(profile, row.subscriber_id, row.application_id, validate_csr(row.csr, profile))
            self.store.settle_pending(request_id, "approved", certificate=signed)
            return self.pending(request_id)

    def reject(self, request_id: str, reason: str = "rejected by the CA administrator") -> Pending:
        with self._lock:
            row = self.store.pending(request_id)
            if row is None:
                raise SimError(SimErrorKind.NOT_FOUND, f"no request with id {request_id!r}")
            if row.state == "rejected":
                return self._pending(row)
            if row.state != "pending":
                raise RequestSettled(f"request {request_id} was already {row.state}")
            self.store.settle_pending(request_id, "rejected", rejection=reason)
            return self.pending(request_id)

    def _row(self, serial: str) -> CertRow:
        row = self.store.certificate(serial_hex(parse_serial(serial)))
        if row is None:
            raise SimError(SimErrorKind.NOT_FOUND, f"no certificate with serial {serial!r}")
        return row

    def certificate(self, serial: str) -> Issued:
        return self._issued(self._row(serial))

    def certificates_for_application_id(self, application_id: str) -> list[Issued]:
        """The admin console's search (not the API's): what emCA's own console shows an operator."""
        return [self._issued(row) for row in self.store.certificates_for_application_id(application_id)]

    # -- revocation and CRLs
    def revoke(self, serial: str, reason: str) -> Issued:
        """Revoke (``certificateHold`` suspends; a held certificate may then be revoked for good)."""
        name = revocation_reason(reason)
        with self._lock:
            row = self._row(serial)
            if row.revoked_at is not None and (row.revocation_reason != "certificateHold" or name == "certificateHold"):
                raise SimError(SimErrorKind.ALREADY_REVOKED, f"certificate {row.serial} is already revoked")
            self.store.revoke(row.serial, self._clock(), name)
            self._crl_revision[row.ca_name] += 1
            return self.certificate(row.serial)

    def reinstate(self, serial: str) -> Issued:
        """Lift a ``certificateHold``; raises SimError(NOT_FOUND) if the certificate is not on hold."""
        with self._lock:
            row = self._row(serial)
            if row.revocation_reason != "certificateHold":
                raise SimError(SimErrorKind.NOT_FOUND, f"certificate {row.serial} is not on hold")
            self.store.revoke(row.serial, None, None)
            self._crl_revision[row.ca_name] += 1
            return self.certificate(row.serial)

    def crl_der(self, ca_name: str) -> bytes:
        ca = self.hierarchy.by_name(ca_name)
        if ca is None:
            raise SimError(SimErrorKind.UNKNOWN_CA, f"no CA named {ca_name!r}")
        validity = timedelta(hours=self.config.crl_next_update_hours)
        with self._crl_lock:
            revision, now = self._crl_revision[ca.name], self._clock()
            cached = self._crl_cache.get(ca.name)
            if cached is not None and cached.revision == revision and now < cached.refresh_at:
                return cached.der
            der = build_crl(ca, self.store.revoked(ca.name), self.store.next_crl_number(ca.name), now, validity)
            self._crl_cache[ca.name] = _CachedCrl(revision, now + validity / 2, der)
            return der

    def crl_der_by_slug(self, slug: str) -> bytes | None:
        ca = self.hierarchy.by_slug(slug)
        return None if ca is None else self.crl_der(ca.name)

    def ca_certificate_der_by_slug(self, slug: str) -> bytes | None:
        ca = self.hierarchy.by_slug(slug)
        return None if ca is None else ca.der

    # -- counters
    def counters(self) -> Counters:
        values = self.store.counters()
        return Counters(issued_by_application_id=values.get(ISSUED_BY_APPLICATION_ID, {}),
                        issued_by_public_key_sha256=values.get(ISSUED_BY_PUBLIC_KEY, {}),
                        requests_by_method=values.get(REQUESTS_BY_METHOD, {}))

    def reset_counters(self) -> None:
        self.store.reset_counters()


class RequestSettled(Exception):
    """An approval or rejection of a request that was already settled the other way."""
