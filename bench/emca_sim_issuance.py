"""The emCA simulator's issuance rate, beside the raw `cryptography` signing rate measured in the same run.

    .venv/bin/python -m bench.emca_sim_issuance [--certs 2000] [--concurrency 16] [--batch 10] [--json out.json]

One run, the same CSRs throughout (P-256 leaf keys, one DNS SAN each, made up front, not timed) and the same
two issuing CAs ("certrail Sim Issuing CA P-256", and "certrail Sim Issuing CA RSA" with RSA-2048):

- raw: `cryptography` alone, one thread: load the PEM CSR, verify its signature, build a leaf with the
  extensions the simulator writes (basicConstraints, keyUsage, AKI, CRL distribution point, AIA,
  extendedKeyUsage, SKI, the CSR's SANs; the static ones added once to a builder each leaf starts from, as the
  simulator does), sign, take the DER.
- backend: ``SimEmca.issue`` in this process, one thread: the CSR checked against the profile, signed, its
  SQLite row and counters written (batched commits, flushed before the clock stops).
- https: ``certrail emca-sim serve`` in its own process (free ports, a temporary data directory) and an
  ``httpx.AsyncClient`` at a fixed concurrency. The connector's dialect modules
  (``services/common/emca/dialects``) build every request before the clock starts (V4.0.17's CMS signature and
  AES-GCM envelope; 4.2.3's AuthKey, ts and txn; 4.2.4+'s token, fetched once, and nonce) and parse every
  answer: V4.0.17 createCertificate (a new applicationId per call), V4.2.3 and V4.2.4+ createCertificates with
  one CSR per call, and with ``--batch`` CSRs per call. The server's CPU time comes from ``/proc/<pid>/stat``
  (all its threads).

Every measurement is bracketed by two raw measurements with the same CA (a shared machine's speed drifts by
tens of percent within minutes); its "% of raw" compares it with their mean, in rate and in CPU time per
certificate. "other CPU %" is what the rest of the machine used meanwhile (busy time in ``/proc/stat`` that
was neither this process nor the server): above 0.15 cores, in the measurement or its brackets, the row is
marked NOISY; ``--quiet-wait`` waits for an idle machine before each measurement, ``--rounds`` repeats them
and reports medians. At the end the simulator's issuance counters (admin API) must add up to every
certificate the run was told was issued, and after its stop (SIGTERM commits the last batch) ``state.db``
must hold them all, or the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import re
import shlex
import signal
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID
from rich.console import Console
from rich.table import Table

from services.common.emca.dialects import v4_0_17, v4_2

SUBSCRIBER = "SUB-0001"
CAS = {  # label -> (issuing CA of the default configuration, a profile it signs for)
    "P-256": ("certrail Sim Issuing CA P-256", "TLS Server"),
    "RSA-2048": ("certrail Sim Issuing CA RSA", "TLS Server RSA"),
}
DIALECTS = ("V4.0.17", "V4.2.3", "V4.2.4+")
APPLICATIONS = {"V4.0.17": "certrail-v4017", "V4.2.3": "certrail-v423", "V4.2.4+": "certrail-v424"}
POOLS = {
    "per-worker": "one client (one connection) per worker",
    "capped": "one client, its pool capped at --concurrency connections",
    "default": "one client with httpx's default Limits() (100 connections, 20 kept alive)",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NOISY = 0.15  # other jobs' CPU (cores) during a measurement or its raw brackets above which a row is marked NOISY

console = Console(stderr=True, width=160)


# --- inputs ---------------------------------------------------------------------------------------


def make_csrs(count: int, tag: str) -> list[str]:
    """``count`` PEM CSRs, each with a new P-256 key and one DNS SAN (also the CN)."""
    csrs = []
    for index in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        host = f"{tag}-{index}.bench.example.test"
        csrs.append(
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
            .decode("ascii")
        )
    return csrs


# --- clocks -----------------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (``/proc/<pid>/stat`` fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (``/proc/stat``: all but idle and iowait), summed over cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS


def wait_for_quiet(limit_s: float, *, threshold: float = 0.15, window_s: float = 0.5) -> bool:
    """Wait (up to ``limit_s``) until the machine is idle: under ``threshold`` cores busy for ``window_s``.
    True when it was; on a shared machine this keeps other people's jobs out of a measurement."""
    deadline = time.monotonic() + limit_s
    while True:
        busy0 = machine_busy_seconds()
        time.sleep(window_s)
        if machine_busy_seconds() - busy0 < threshold * window_s:
            return True
        if time.monotonic() > deadline:
            return False


class _Clock:
    """Wall and CPU time of a block: this process, ``server_pid``'s when given, and the rest of the machine."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid

    def __enter__(self) -> _Clock:
        self._server0 = process_cpu_seconds(self.server_pid) if self.server_pid else 0.0
        self._busy0 = machine_busy_seconds()
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.process_time() - self._cpu0
        server = process_cpu_seconds(self.server_pid) - self._server0 if self.server_pid else 0.0
        self.server = server if self.server_pid else None
        self.other = max(0.0, machine_busy_seconds() - self._busy0 - self.cpu - server)


@dataclass
class Result:
    path: str  # raw, backend, https
    ca: str
    dialect: str = ""
    csrs_per_call: int = 1
    certs: int = 0
    errors: int = 0
    wall_s: float = 0.0
    client_cpu_s: float = 0.0  # this process
    server_cpu_s: float | None = None  # the simulator's process (https only)
    other_cpu_s: float = 0.0  # the rest of the machine
    raw: list[Result] = field(default_factory=list)  # the bracketing raw measurements
    notes: list[str] = field(default_factory=list)
    round: int = 0

    @classmethod
    def timed(cls, clock: _Clock, path: str, ca: str, **values: Any) -> Result:
        return cls(path, ca, wall_s=clock.wall, client_cpu_s=clock.cpu, server_cpu_s=clock.server,
                   other_cpu_s=clock.other, **values)

    @property
    def rate(self) -> float:
        return self.certs / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_ms(self) -> float:
        """CPU per certificate of whoever issued: the server over HTTPS, else this process."""
        seconds = self.server_cpu_s if self.server_cpu_s is not None else self.client_cpu_s
        return 1000 * seconds / self.certs if self.certs else float("nan")

    @property
    def client_cpu_ms(self) -> float:
        return 1000 * self.client_cpu_s / self.certs if self.certs else float("nan")

    @property
    def raw_rate(self) -> float:
        return sum(r.rate for r in self.raw) / len(self.raw)

    @property
    def raw_cpu_ms(self) -> float:
        return sum(r.cpu_ms for r in self.raw) / len(self.raw)

    @property
    def label(self) -> str:
        if self.path != "https":
            return self.path
        return f"https {self.dialect}" + (f" {self.csrs_per_call}/call" if self.csrs_per_call > 1 else "")

    @property
    def rate_share(self) -> float:
        return self.rate / self.raw_rate

    @property
    def cpu_share(self) -> float:
        return self.raw_cpu_ms / self.cpu_ms

    @property
    def noisy(self) -> bool:
        return max(x.other_cpu_s / x.wall_s for x in (self, *self.raw)) > NOISY

    def summary(self) -> dict[str, Any]:
        document = asdict(self)
        document["raw"] = [asdict(r) | {"rate": r.rate, "cpu_ms": r.cpu_ms} for r in self.raw]
        return document | {"label": self.label, "rate": self.rate, "cpu_ms": self.cpu_ms, "client_cpu_ms": self.client_cpu_ms,
                           "raw_rate": self.raw_rate, "raw_cpu_ms": self.raw_cpu_ms, "rate_share": self.rate_share,
                           "cpu_share": self.cpu_share, "noisy": self.noisy}


# --- raw cryptography -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RawCa:
    """An issuing CA as plain `cryptography` objects: its key, and a builder holding the issuer name and the leaf
    extensions that do not depend on the CSR (a builder is immutable: each leaf starts from it)."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    base: x509.CertificateBuilder

    @classmethod
    def load(cls, data_dir: Path, ca_name: str, public_base_url: str) -> RawCa:
        slug = re.sub(r"[^a-z0-9]+", "-", ca_name.lower()).strip("-")  # as the simulator names its files
        key = serialization.load_pem_private_key((data_dir / "private" / f"{slug}.key.pem").read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
        cert = x509.load_pem_x509_certificate((data_dir / "cas" / f"{slug}.crt.pem").read_bytes())
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        key_usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                  data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                                  encipher_only=False, decipher_only=False)  # what the profile gives a P-256 leaf key
        crl = x509.UniformResourceIdentifier(f"{public_base_url}/crl/{slug}.crl")
        ca_issuers = x509.UniformResourceIdentifier(f"{public_base_url}/ca/{slug}.crt")
        base = (
            x509.CertificateBuilder()
            .issuer_name(cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage, critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(full_name=[crl], relative_name=None,
                                                                              reasons=None, crl_issuer=None)]), critical=False)
            .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                                                                   ca_issuers)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        return cls(key=key, base=base)

    def issue(self, csr_pem: bytes) -> bytes:
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise ValueError("bad CSR signature")
        public_key = csr.public_key()
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        now = datetime.now(UTC)
        return (
            self.base.subject_name(csr.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=90))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
            .add_extension(sans, critical=False)
            .sign(self.key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )


class Raw:
    """Raw measurements, one per call, with each CA; `settle` first waits (up to ``quiet_wait`` s) for an idle machine."""

    def __init__(self, data_dir: Path, csrs: Sequence[str], public_base_url: str, quiet_wait: float) -> None:
        self.cas = {label: RawCa.load(data_dir, ca_name, public_base_url) for label, (ca_name, _) in CAS.items()}
        self.csrs = [csr.encode("ascii") for csr in csrs]
        self.quiet_wait = quiet_wait
        for ca in self.cas.values():
            ca.issue(self.csrs[0])  # warm

    def settle(self) -> None:
        if self.quiet_wait > 0 and not wait_for_quiet(self.quiet_wait):
            console.log(f"[yellow]the machine was still busy after {self.quiet_wait:.0f} s: measuring anyway[/yellow]")

    def measure(self, ca: str) -> Result:
        issue = self.cas[ca].issue
        with _Clock() as clock:
            for csr in self.csrs:
                issue(csr)
        return Result.timed(clock, "raw", ca, certs=len(self.csrs))


def bracketed(raw: Raw, ca: str, measure: Callable[[], Result]) -> Result:
    """``measure()`` between two raw measurements with the same CA."""
    raw.settle()
    before = raw.measure(ca)
    result = measure()
    result.raw = [before, raw.measure(ca)]
    return result


# --- the backend in process ----------------------------------------------------------------------


def measure_backend(data_dir: Path, csrs: Sequence[str], raw: Raw, cas: Sequence[str], rounds: int) -> list[Result]:
    from emca_sim.backend import Issued
    from emca_sim.state import SimEmca

    results = []
    with SimEmca(data_dir) as sim:
        for round_ in range(rounds):
            for label in cas:
                profile = CAS[label][1]

                def run(label: str = label, profile: str = profile, round_: int = round_) -> Result:
                    issued = 0
                    with _Clock() as clock:
                        for index, csr in enumerate(csrs):
                            outcome = sim.issue(profile=profile, subscriber_id=SUBSCRIBER, csr_pem=csr,
                                                application_id=f"bench-backend-{label}-{round_}-{index}",
                                                dedupe_by_application_id=False)
                            issued += isinstance(outcome, Issued)
                        sim.store.flush()
                    return Result.timed(clock, "backend", label, certs=issued, errors=len(csrs) - issued, round=round_)

                results.append(bracketed(raw, label, run))
                console.log(f"backend {label}: {results[-1].rate:,.0f}/s")
    return results


# --- over HTTPS --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass
class Simulator:
    process: subprocess.Popen[bytes]
    data_dir: Path
    api_url: str
    admin_url: str

    @classmethod
    def start(cls, data_dir: Path, log_path: Path, *, profile: Path | None = None, timeout: float = 60.0) -> Simulator:
        """``certrail emca-sim serve`` on free ports; with ``profile``, under pyinstrument (an investigation aid)."""
        command = [str(Path(sys.executable).with_name("certrail")), "emca-sim", "serve", "--data-dir", str(data_dir),
                   "--port", "0", "--crl-port", "0", "--admin-port", "0", "--log-level", "warning"]
        if profile is not None:  # pyinstrument runs the module in its own process, so the pid stays the server's
            command = [sys.executable, "-m", "pyinstrument", "-o", str(profile), "-m", "services.cli.main", *command[1:]]
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=False)
        deadline = time.monotonic() + timeout
        server_json = data_dir / "server.json"
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the simulator exited with {process.returncode}; see {log_path}")
            if server_json.exists():
                document = json.loads(server_json.read_text())
                if document.get("pid") == process.pid:
                    return cls(process, data_dir, document["api_url"], document["admin_url"])
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise RuntimeError(f"the simulator did not start within {timeout} s; see {log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def issued_counted(self) -> int:
        """The running simulator's issuance counters (per public key), added up, through its admin API."""
        trust = ssl.create_default_context(cafile=str(self.data_dir / "tls-ca.pem"))
        token = (self.data_dir / "admin-token").read_text().strip()
        with httpx.Client(base_url=self.admin_url, verify=trust, headers={"Authorization": f"Bearer {token}"}) as admin:
            response = admin.get("/admin/counters")
            response.raise_for_status()
        return sum(response.json()["issued_by_public_key_sha256"].values())

    def credentials(self, dialect: str) -> tuple[Path, dict[str, Any]]:
        app_dir = self.data_dir / "applications" / APPLICATIONS[dialect]
        return app_dir, json.loads((app_dir / "credentials.json").read_text())


class Requests:
    """The connector's request builders for the simulator's three registered applications."""

    def __init__(self, sim: Simulator) -> None:
        app_dir, v4017 = sim.credentials("V4.0.17")
        signer = v4_0_17.load_pfx((app_dir / v4017["pfx_file"]).read_bytes(), v4017["pfx_password"])
        aes_key = v4_0_17.parse_aes_key((app_dir / v4017["aes_key_file"]).read_text())
        self.v4017 = v4_0_17.V4017Requests(v4_0_17.Credentials(v4017["username"], v4017["password"], aes_key, signer))
        self.v42 = {}
        for dialect, version in (("V4.2.3", v4_2.Version.V4_2_3), ("V4.2.4+", v4_2.Version.V4_2_4)):
            _, creds = sim.credentials(dialect)
            self.v42[dialect] = v4_2.RequestBuilder(version, v4_2.Credentials(creds["username"], creds["password"],
                                                                                creds["client_id"]))
        self.token: str | None = None

    async def fetch_token(self, client: httpx.AsyncClient) -> None:
        request = self.v42["V4.2.4+"].token(validity_mins=60)
        sent = datetime.now(UTC)
        response = await client.request(request.method, request.path, headers=list(request.headers), content=request.body)
        self.token = v4_2.parse_token(v4_2.HttpResponse(response.status_code, response.content), requested_at=sent).value

    def prepare(self, dialect: str, profile: str, csrs: Sequence[str], per_call: int, tag: str) -> list[Prepared]:
        prepared = []
        for start in range(0, len(csrs), per_call):
            chunk = list(csrs[start:start + per_call])
            application_id = f"bench-{tag}-{start}"
            if dialect == "V4.0.17":
                assert per_call == 1
                request = self.v4017.create_certificate(profile_name=profile, subscriber_id=SUBSCRIBER,
                                                        application_id=application_id, csr_pem=chunk[0])
                prepared.append(Prepared("POST", request.path, request.headers, request.body))
            else:
                token = self.token if dialect == "V4.2.4+" else None
                http = self.v42[dialect].create_certificates(profile_name=profile, subscriber_id=SUBSCRIBER, csrs=chunk,
                                                             application_id=application_id, token=token)
                prepared.append(Prepared(http.method, http.path, http.headers, http.body))
        return prepared


def issued_in(dialect: str, response: httpx.Response) -> int:
    """How many certificates an answer carries, parsed (and so checked) by the connector's dialect module."""
    if dialect == "V4.0.17":
        outcome = v4_0_17.parse_issue_response(response.status_code, response.headers, response.content)
        return int(isinstance(outcome, v4_0_17.IssuedCertificate))
    outcomes = v4_2.parse_create_certificates(v4_2.HttpResponse(response.status_code, response.content,
                                                                tuple(response.headers.items())))
    return sum(isinstance(outcome, v4_2.IssuedCertificate) for outcome in outcomes)


async def run_requests(clients: Sequence[httpx.AsyncClient], dialect: str, requests: Sequence[Prepared],
                       concurrency: int) -> tuple[int, list[str]]:
    """Send every request with ``concurrency`` workers, worker i on ``clients[i % len(clients)]``;
    (certificates issued, the first few errors)."""
    pending: Iterator[Prepared] = iter(requests)
    issued, errors = 0, []

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        for request in pending:
            try:
                response = await client.request(request.method, request.path, headers=list(request.headers),
                                                content=request.body)
                issued += issued_in(dialect, response)
            except (httpx.HTTPError, v4_0_17.EmcaFailure, v4_2.EmcaFailure) as exc:
                errors.append(repr(exc))

    await asyncio.gather(*(worker(clients[index % len(clients)]) for index in range(concurrency)))
    return issued, errors


def http_clients(sim: Simulator, concurrency: int, pool: str, http2: bool) -> list[httpx.AsyncClient]:
    trust = ssl.create_default_context(cafile=str(sim.data_dir / "tls-ca.pem"))
    if pool == "default":
        return [httpx.AsyncClient(base_url=sim.api_url, verify=trust, http2=http2, timeout=120)]
    connections = 1 if pool == "per-worker" else concurrency
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return [httpx.AsyncClient(base_url=sim.api_url, verify=trust, limits=limits, http2=http2, timeout=120)
            for _ in range(concurrency if pool == "per-worker" else 1)]


async def measure_https(sim: Simulator, csrs: Sequence[str], raw: Raw, args: argparse.Namespace) -> tuple[list[Result], int]:
    """The HTTPS measurements, and how many certificates were issued in all (warm-ups included)."""
    builders = Requests(sim)
    results: list[Result] = []
    warm_csrs = make_csrs(args.concurrency * 2, "warm")
    warm_issued = 0
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(c) for c in http_clients(sim, args.concurrency, args.pool, args.http2)]
        await builders.fetch_token(clients[0])
        plan = [(dialect, 1) for dialect in args.dialects]
        plan += [(dialect, args.batch) for dialect in args.dialects if dialect != "V4.0.17" and args.batch > 1]
        for round_, (dialect, per_call), label in itertools.product(range(args.rounds), plan, args.cas):
            profile = CAS[label][1]
            tag = f"{dialect}-{label}-{per_call}-{round_}"
            requests = builders.prepare(dialect, profile, csrs, per_call, tag)  # not timed

            async def run(dialect: str = dialect, label: str = label, per_call: int = per_call,
                          requests: list[Prepared] = requests, tag: str = tag, round_: int = round_) -> Result:
                nonlocal warm_issued
                # not timed: a live connection per worker (the raw measurement may outlast uvicorn's keep-alive)
                warm = builders.prepare(dialect, "TLS Server", warm_csrs, 1, f"warm-{tag}")
                warm_issued += (await run_requests(clients, dialect, warm, args.concurrency))[0]
                with _Clock(sim.process.pid) as clock:
                    issued, errors = await run_requests(clients, dialect, requests, args.concurrency)
                return Result.timed(clock, "https", label, dialect=dialect, csrs_per_call=per_call, certs=issued,
                                    errors=len(csrs) - issued, notes=errors[:3], round=round_)

            raw.settle()
            before = raw.measure(label)
            result = await run()
            result.raw = [before, raw.measure(label)]
            results.append(result)
            console.log(f"{result.label} {label}: {result.rate:,.0f}/s"
                        + (f" [red]{len(csrs) - result.certs} not issued[/red]: {result.notes[0]}" if result.notes else ""))
        http_version = (await clients[0].get("/emCAServices42/rest/getCAs/nobody")).http_version
    for result in results:
        result.notes.append(http_version)
    return results, warm_issued


def stored_rows(data_dir: Path) -> int:
    """Rows in the certificates table of a stopped simulator's state.db."""
    conn = sqlite3.connect(data_dir / "state.db")
    try:
        return int(conn.execute("SELECT count(*) FROM certificates").fetchone()[0])
    finally:
        conn.close()


# --- report ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout.strip()
    versions = {name: metadata.version(name) for name in ("cryptography", "httpx", "httpcore", "uvicorn", "starlette")}
    optional = {name: find_spec(name) is not None for name in ("httptools", "uvloop", "h2")}
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "nproc": os.cpu_count(), "cpu": model,
            "free_h": free, "python": platform.python_version(), "openssl": openssl_backend.openssl_version_text(),
            "versions": versions, "importable": optional,
            "command": shlex.join([".venv/bin/python", "-m", "bench.emca_sim_issuance", *sys.argv[1:]])}


def report(results: list[Result], info: dict[str, Any]) -> None:
    title = f"emCA simulator issuance, {info['date']}, {info['nproc']} x {info['cpu']}"
    table = Table(title=title + " - every measurement")
    columns = ("round", "path", "CA", "certs", "wall s", "certs/s", "raw certs/s", "rate % of raw", "CPU ms/cert",
               "raw CPU ms/cert", "CPU % of raw", "client CPU ms/cert", "other CPU %", "errors", "notes")
    for column in columns:
        table.add_column(column, justify="left" if column in ("path", "CA", "notes") else "right")
    for r in results:
        table.add_row(str(r.round + 1), r.label, r.ca, str(r.certs), f"{r.wall_s:.2f}", f"{r.rate:,.0f}", f"{r.raw_rate:,.0f}",
                      f"{100 * r.rate_share:.0f}%", f"{r.cpu_ms:.3f}", f"{r.raw_cpu_ms:.3f}", f"{100 * r.cpu_share:.0f}%",
                      f"{r.client_cpu_ms:.3f}", f"{100 * r.other_cpu_s / r.wall_s:.0f}%", str(r.errors),
                      "; ".join([*r.notes, *(["NOISY"] if r.noisy else [])]))
    out = Console(stderr=True, width=260)
    out.print(table)
    rounds = max(r.round for r in results) + 1
    if rounds == 1:
        return
    summary = Table(title=title + f" - medians of {rounds} rounds")
    for column in ("path", "CA", "certs/s", "rate % of raw (min-max)", "CPU ms/cert", "raw CPU ms/cert",
                   "CPU % of raw (min-max)", "client CPU ms/cert", "noisy rounds"):
        summary.add_column(column, justify="left" if column in ("path", "CA") else "right")
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.label, r.ca), []).append(r)
    for (label, ca), group in groups.items():
        shares, cpu_shares = [r.rate_share for r in group], [r.cpu_share for r in group]
        summary.add_row(label, ca, f"{statistics.median(r.rate for r in group):,.0f}",
                        f"{100 * statistics.median(shares):.0f}% ({100 * min(shares):.0f}-{100 * max(shares):.0f})",
                        f"{statistics.median(r.cpu_ms for r in group):.3f}",
                        f"{statistics.median(r.raw_cpu_ms for r in group):.3f}",
                        f"{100 * statistics.median(cpu_shares):.0f}% ({100 * min(cpu_shares):.0f}-{100 * max(cpu_shares):.0f})",
                        f"{statistics.median(r.client_cpu_ms for r in group):.3f}", str(sum(r.noisy for r in group)))
    out.print(summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.emca_sim_issuance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--certs", type=int, default=2000, help="certificates per measurement (default 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="HTTPS requests in flight (default 16)")
    parser.add_argument("--batch", type=int, default=10,
                        help="CSRs per 4.2.x createCertificates call in the batched variant (1..50, 1 skips it; default 10)")
    parser.add_argument("--dialects", nargs="+", choices=DIALECTS, default=list(DIALECTS))
    parser.add_argument("--cas", nargs="+", choices=tuple(CAS), default=list(CAS))
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every measurement this many times, round-robin, and also report medians (default 1)")
    parser.add_argument("--skip", nargs="*", choices=("backend", "https"), default=[], help="leave these out")
    parser.add_argument("--pool", choices=tuple(POOLS), default="per-worker",
                        help="httpx connections: " + "; ".join(f"{k}: {v}" for k, v in POOLS.items()) + " (default per-worker)")
    parser.add_argument("--http2", action="store_true", help="offer HTTP/2 (needs h2; the simulator answers HTTP/1.1)")
    parser.add_argument("--server-profile", type=Path,
                        help="run the simulator under pyinstrument (install it; not a dependency) and write its profile "
                        "here (.html, .txt, .pstats ...)")
    parser.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                        help="before each measurement wait up to this long for the machine to be idle (other jobs under "
                        "0.15 cores for 0.5 s); default 0: do not wait")
    parser.add_argument("--json", type=Path, help="also write the machine, the settings and the results as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= v4_2.MAX_CSRS_PER_CALL:
        parser.error(f"--batch must be within 1..{v4_2.MAX_CSRS_PER_CALL}")

    from emca_sim.state import DEFAULT_PUBLIC_BASE_URL, SimEmca

    info = machine()
    console.log(f"{info['command']}: {info['nproc']} x {info['cpu']}")
    results: list[Result] = []
    stored = expected = None
    with tempfile.TemporaryDirectory(prefix="emca-sim-bench-") as tmp:
        data_dir = Path(tmp) / "sim"
        with console.status("CSRs and CAs"):
            csrs = make_csrs(args.certs, "bench")
            SimEmca(data_dir).close()  # the CAs and applications, created on first use
            raw = Raw(data_dir, csrs, DEFAULT_PUBLIC_BASE_URL, args.quiet_wait)
        if "backend" not in args.skip:
            results += measure_backend(data_dir, csrs, raw, args.cas, args.rounds)
        if "https" not in args.skip:
            sim = Simulator.start(data_dir, Path(tmp) / "sim.log", profile=args.server_profile)
            try:
                https, warm_issued = asyncio.run(measure_https(sim, csrs, raw, args))
                counted = sim.issued_counted()
            finally:
                sim.stop()
            results += https
            expected = sum(r.certs for r in results) + warm_issued
            stored = (stored_rows(data_dir), counted)
    report(results, info)
    ok = all(r.errors == 0 for r in results)
    if stored is not None:
        ok = ok and stored == (expected, expected)
        console.print(f"{expected} certificates issued; the simulator's counters said {stored[1]}, and after its stop "
                      f"state.db holds {stored[0]}" + ("" if stored == (expected, expected) else " [red]MISMATCH[/red]"))
    document = {"benchmark": "emca_sim_issuance", "machine": info,
                "settings": {k: v for k, v in vars(args).items() if k not in ("json", "server_profile")},
                "results": [r.summary() for r in results], "stored": stored, "expected": expected, "ok": ok}
    print(json.dumps(document, default=str))  # the one JSON line of the run (bench/README.md); tables went to stderr
    if args.json:
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
