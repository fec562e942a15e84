"""The issuer's throughput against the emCA simulator, beside the simulator's direct rate measured in the same run.

    .venv/bin/python bench/issuer_throughput.py [--certs 1000] [--concurrency 16] [--version V4.2.4+] [--rounds 3]
    .venv/bin/python bench/issuer_throughput.py --rounds 2 --batch 8 --baseline-tree /tmp/before

One run: a Kafka broker (a `LocalKafka` on free ports, or ``KAFKA_BOOTSTRAP_SERVERS``) and ``certrail emca-sim serve``
in its own process (free ports, a temporary data directory). Every CSR (P-256, one DNS SAN) is made before any clock
starts. Each round measures, one after the other:

- **direct**: N ``submit_csr`` calls through the real client (``services.common.emca.client.connect`` with
  ``HttpOptions.for_concurrency(C)``, the pool the issuer gives a connector) from C concurrent tasks in this
  process, after 2*C untimed warm-up calls. CPU of this process and of the simulator over the timed block.
- **issuer**: a new connector (concurrency C, topic with 3 partitions) created through the registry
  (``tests/issuer_harness.IssuerBench``), N IssueCertificate commands produced to its topic, then ``certrail serve
  issuer`` started as a subprocess. The clock runs from the first CertificateIssued to the N-th (their envelope
  times, stamped by the issuer), so start-up and the consumer group join are outside it: the rate is (N-1) over
  that span. CPU of the issuer, the simulator, the broker and this process (producer, event reader) comes from
  ``/proc/<pid>/stat`` sampled every 50 ms and interpolated at the two ends.

- **direct batched** (``--batch B``): the same, with ``submit_csrs`` calls of B CSRs (4.2.x createCertificates),
  C // B calls at once, so that C CSRs are in flight as in the other measurements: the fair comparison for an
  issuer that shares calls (its default; ``--issuer-env CERTRAIL_ISSUER_BATCH_MAX_CSRS=1`` turns that off). The
  issuer's rows give its ratio to both direct rates.
- **issuer (baseline)** (``--baseline-tree DIR``): the issuer of another code tree (e.g. ``git archive HEAD | tar -x
  -C DIR``), measured in the same round as the issuer of ``--issuer-tree`` (default: this checkout), alternating
  which goes first, for a before/after comparison on the same machine state.

The issuer's per-connector rate limit (``CERTRAIL_ISSUER_DRAIN_RATE_PER_S``, 500/s by default: how fast a backlog
drains after an outage) is raised to ``--drain-rate`` (default 1e6) so that it measures the issuer, not the limit.
"other CPU" is the rest of the machine (``/proc/stat`` busy time not used by the processes listed).
``--issuer-profile FILE`` runs the issuer under ``cProfile`` (numbers from such a run are not comparable).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `bench` and `tests` are not installed packages
    sys.path.insert(0, str(ROOT))

from bench.emca_sim_issuance import Simulator, machine_busy_seconds, process_cpu_seconds
from services.common.contracts.events import CertificateIssued, IssuanceFailed
from services.common.emca.client import connect
from services.common.emca.types import EmcaError, EmcaVersion, HttpOptions, IssuedCertificate
from services.common.settings import KafkaSettings
from tests.conftest import local_kafka_for_tests, make_kafka_settings
from tests.emca_sim_helpers import sim_endpoint, sim_spec
from tests.issuer_harness import IssuerBench, IssuerProcess, make_csr, metric

SUBSCRIBER = "SUB-0001"
PROFILE = "TLS Server"
SAMPLE_S = 0.05


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --- CPU clocks ---------------------------------------------------------------------------------------


def cpu_of(pids: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds so far of each named process (None: not ours to measure), this process, and the machine."""
    values = {name: process_cpu_seconds(pid) for name, pid in pids.items() if pid is not None}
    values["bench"] = time.process_time()
    values["machine"] = machine_busy_seconds()
    return values


class Sampler:
    """CPU seconds of the named processes every ``SAMPLE_S`` (a thread), read back at any wall time by interpolation."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.times: list[float] = []
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        try:
            values = cpu_of(self.pids)
        except (FileNotFoundError, ProcessLookupError):  # a process ended: keep the samples so far
            return
        self.times.append(time.time())
        self.samples.append(values)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def at(self, when: float) -> dict[str, float]:
        index = bisect.bisect_left(self.times, when)
        if index == 0:
            return self.samples[0]
        if index >= len(self.times):
            return self.samples[-1]
        t0, t1 = self.times[index - 1], self.times[index]
        s0, s1 = self.samples[index - 1], self.samples[index]
        share = (when - t0) / (t1 - t0) if t1 > t0 else 1.0
        return {name: s0[name] + share * (s1[name] - s0[name]) for name in s0}

    def between(self, start: float, end: float) -> dict[str, float]:
        first, last = self.at(start), self.at(end)
        return {name: last[name] - first[name] for name in first}


def other_cpu(spent: dict[str, float]) -> float:
    return max(0.0, spent["machine"] - sum(value for name, value in spent.items() if name != "machine"))


# --- results ------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    certs: int  # certificates the rate counts
    errors: int
    wall_s: float
    cpu_s: dict[str, float]  # process role -> CPU seconds over wall_s ("other": the rest of the machine)

    @property
    def rate(self) -> float:
        return self.certs / self.wall_s if self.wall_s else 0.0

    def ms_per_cert(self, role: str) -> float | None:
        return 1000 * self.cpu_s[role] / self.certs if role in self.cpu_s and self.certs else None


@dataclass
class Round:
    index: int
    direct: Measurement
    issuer: Measurement
    baseline: Measurement | None = None  # the issuer of --baseline-tree, measured in the same round
    direct_batched: Measurement | None = None  # --batch: the direct rate with that many CSRs per call

    @property
    def ratio(self) -> float:
        return self.issuer.rate / self.direct.rate if self.direct.rate else 0.0


# --- the direct rate ----------------------------------------------------------------------------------


async def _submit(connection: Any, csrs: Sequence[str], concurrency: int, tag: str) -> tuple[int, list[str]]:
    pending: Iterator[tuple[int, str]] = iter(enumerate(csrs))
    issued, errors = 0, []

    async def worker() -> None:
        nonlocal issued
        for index, csr in pending:
            try:
                outcome = await connection.submit_csr(csr_pem=csr, profile_name=PROFILE, subscriber_id=SUBSCRIBER,
                                                      application_id=f"bench-{tag}-{index}")
            except EmcaError as exc:  # counted and reported, the run goes on
                errors.append(repr(exc))
                continue
            issued += isinstance(outcome, IssuedCertificate)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return issued, errors


async def _submit_batched(connection: Any, csrs: Sequence[str], concurrency: int, batch: int) -> tuple[int, list[str]]:
    """``concurrency`` CSRs in flight as calls of ``batch`` CSRs (``submit_csrs``): concurrency // batch calls at once."""
    chunks: Iterator[Sequence[str]] = iter([csrs[i : i + batch] for i in range(0, len(csrs), batch)])
    issued, errors = 0, []

    async def worker() -> None:
        nonlocal issued
        for chunk in chunks:
            try:
                outcomes = await connection.submit_csrs(
                    csr_pems=chunk, profile_name=PROFILE, subscriber_id=SUBSCRIBER, application_ids=[None] * len(chunk)
                )
            except EmcaError as exc:  # counted and reported, the run goes on
                errors.append(repr(exc))
                continue
            issued += sum(isinstance(outcome, IssuedCertificate) for outcome in outcomes)
            errors.extend(repr(outcome) for outcome in outcomes if isinstance(outcome, EmcaError))

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency // batch))))
    return issued, errors


async def measure_direct(sim: Simulator, sim_view: Any, version: EmcaVersion, csrs: Sequence[str], warm: Sequence[str],
                         concurrency: int, pids: dict[str, int | None], tag: str, batch: int = 1) -> Measurement:
    connection = connect(sim_endpoint(sim_view, version), HttpOptions.for_concurrency(concurrency))
    try:
        await _submit(connection, warm, concurrency, f"warm-{tag}")  # connections open, token fetched: not timed
        before, wall0 = cpu_of(pids), time.perf_counter()
        if batch > 1:
            issued, errors = await _submit_batched(connection, csrs, concurrency, batch)
        else:
            issued, errors = await _submit(connection, csrs, concurrency, tag)
        wall, after = time.perf_counter() - wall0, cpu_of(pids)
    finally:
        await connection.aclose()
    if errors:
        log(f"direct: {len(errors)} errors, first: {errors[0]}")
    spent = {name: after[name] - before[name] for name in before}
    spent["other"] = other_cpu(spent)
    del spent["machine"]
    return Measurement(issued, len(csrs) - issued, wall, spent)


# --- the issuer -----------------------------------------------------------------------------------------


def start_issuer(process: IssuerProcess, extra_env: dict[str, str], profile: Path | None, tree: Path) -> None:
    """As ``IssuerProcess.start``, from the code in ``tree`` (a checkout or a ``git archive`` copy), optionally
    under cProfile (which writes its file when the issuer stops)."""
    env = {**os.environ, **process.env, "CERTRAIL_ISSUER_HTTP_PORT": str(process.port), **extra_env, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "services.cli.main", "serve", "issuer"]
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), *command[1:]]
    with process.log_file.open("ab") as log_file:
        process.process = subprocess.Popen(command, cwd=tree, env=env, stdout=log_file, stderr=subprocess.STDOUT)


async def measure_issuer(kafka: KafkaSettings, sim_view: Any, version: EmcaVersion, csrs: Sequence[str], concurrency: int,
                         pids: dict[str, int | None], tmp: Path, args: argparse.Namespace, round_: int,
                         tree: Path, variant: str) -> Measurement:
    name = f"bench-r{round_}-{variant}"
    async with IssuerBench(kafka, tmp) as bench:
        await bench.registry.create(sim_spec(sim_view, version, name, concurrency=concurrency))
        commands = [bench.issue_command(name, n=index, csr=csr) for index, csr in enumerate(csrs)]
        for start in range(0, len(commands), 500):  # produced before the issuer starts: it finds a backlog
            await asyncio.gather(*(bench.send(name, command) for command in commands[start:start + 500]))
        log(f"issuer: {len(commands)} commands produced to {bench.topics.commands(name)}")
        issuer = bench.issuer()
        extra_env = {"CERTRAIL_ISSUER_DRAIN_RATE_PER_S": str(args.drain_rate)}
        if variant == "issuer":
            extra_env.update(item.split("=", 1) for item in args.issuer_env)
        start_issuer(issuer, extra_env, args.issuer_profile, tree)
        assert issuer.process is not None
        with Sampler({**pids, "issuer": issuer.process.pid}) as sampler:
            deadline = time.monotonic() + args.timeout
            while True:
                issued = bench.of_type(CertificateIssued, connector=name)
                failed = bench.of_type(IssuanceFailed, connector=name)
                if len(issued) + len(failed) >= len(csrs):
                    break
                if issuer.process.poll() is not None:
                    raise RuntimeError(f"the issuer exited with {issuer.process.returncode}:\n{issuer.tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(issued)} of {len(csrs)} issued after {args.timeout} s:\n{issuer.tail()}")
                await asyncio.sleep(0.05)
            await asyncio.sleep(2 * SAMPLE_S)  # a sample after the last event
        text = issuer.metrics()
        calls = metric(text, "certrail_issuer_emca_submit_batch_csrs_count")
        if calls:
            log(f"issuer: {calls:.0f} submission calls, {metric(text, 'certrail_issuer_emca_submit_batch_csrs_sum') / calls:.1f}"
                " CSRs per call on average")
        # uvicorn re-raises the signal after its shutdown: SIGINT becomes KeyboardInterrupt, which lets cProfile write
        issuer.kill(signal.SIGINT if args.issuer_profile else signal.SIGTERM)
    if failed:
        log(f"issuer: {len(failed)} IssuanceFailed, first: {failed[0].data.error}")
    times = sorted(event.time.timestamp() for event in issued)
    first, last = times[0], times[-1]
    spent = sampler.between(first, last)
    spent["other"] = other_cpu(spent)
    del spent["machine"]
    duplicates = sum(event.data.possible_duplicate for event in issued)
    if duplicates:
        log(f"issuer: {duplicates} possible duplicates")
    return Measurement(len(times) - 1, len(failed), last - first, spent)


# --- report ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "nproc": os.cpu_count(), "cpu": model,
            "python": platform.python_version(),
            "command": shlex.join([".venv/bin/python", "bench/issuer_throughput.py", *sys.argv[1:]])}


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def report(rounds: Sequence[Round], info: dict[str, Any], args: argparse.Namespace) -> str:
    """One row per measurement: the direct rate(s), the issuer (and the baseline issuer), each with the CPU of every
    process per certificate; the issuer's rows give its ratio to each direct rate of the same round."""
    lines = [f"Issuer throughput, {info['date']}, {info['nproc']} x {info['cpu']}, Python {info['python']}",
             f"`{info['command']}`: {args.version}, N={args.certs}, concurrency {args.concurrency}, "
             f"{len(rounds)} round(s)", ""]
    lines += ["| round | measurement | certs/s | / direct | / direct batched | client or issuer CPU ms/cert | "
              "simulator CPU ms/cert | Kafka CPU ms/cert | bench CPU ms/cert | other CPU (cores) | errors |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    table: dict[str, list[dict[str, float | None]]] = {}
    for r in rounds:
        direct, batched = r.direct.rate, r.direct_batched.rate if r.direct_batched else None
        measurements = [("direct", r.direct), ("direct batched", r.direct_batched), ("issuer (baseline)", r.baseline),
                        ("issuer", r.issuer)]
        for label, m in measurements:
            if m is None:
                continue
            own = "bench" if label.startswith("direct") else "issuer"
            is_issuer = label.startswith("issuer")
            v = {"rate": m.rate, "ratio": m.rate / direct if is_issuer and direct else None,
                 "ratio_b": m.rate / batched if is_issuer and batched else None, "own": m.ms_per_cert(own),
                 "sim": m.ms_per_cert("emca-sim"), "kafka": m.ms_per_cert("kafka") if is_issuer else None,
                 "bench": m.ms_per_cert("bench") if is_issuer else None, "other": m.cpu_s["other"] / m.wall_s,
                 "errors": float(m.errors)}
            table.setdefault(label, []).append(v)
            lines.append(row(str(r.index + 1), label, v))
    if len(rounds) > 1:
        for label, values in table.items():
            lines.append(row("**median**", label, {key: median([v[key] for v in values]) for key in values[0]}))
    ratios = [v["ratio"] for v in table.get("issuer", [])]
    lines += ["", f"target: issuer / direct >= 0.80; median {fmt(median(ratios), 2)}"]
    return "\n".join(lines)


def row(label: str, measurement: str, v: dict[str, float | None]) -> str:
    return (f"| {label} | {measurement} | {fmt(v['rate'], 0)} | {fmt(v['ratio'], 2)} | {fmt(v['ratio_b'], 2)} | "
            f"{fmt(v['own'])} | {fmt(v['sim'])} | {fmt(v['kafka'])} | {fmt(v['bench'])} | {fmt(v['other'], 2)} | "
            f"{fmt(v['errors'], 0)} |")


# --- the run ------------------------------------------------------------------------------------------------


@contextmanager
def kafka_broker(tmp: Path) -> Iterator[tuple[KafkaSettings, int | None]]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield make_kafka_settings(external), None
        return
    broker = local_kafka_for_tests(tmp / "kafka", sasl_ssl=False)
    broker.fetch()
    status = broker.start(wait_timeout=120)
    try:
        yield make_kafka_settings(broker.bootstrap_servers), status.pid
    finally:
        broker.stop()


async def run(args: argparse.Namespace) -> tuple[list[Round], dict[str, Any]]:
    version = EmcaVersion(args.version)
    info = machine()
    log("making the CSRs (not timed)")
    direct_csrs = [[make_csr(f"direct-{r}-{i}.bench.example.test") for i in range(args.certs)] for r in range(args.rounds)]
    direct_batched_csrs = [
        [make_csr(f"direct-b-{r}-{i}.bench.example.test") for i in range(args.certs if args.batch > 1 else 0)]
        for r in range(args.rounds)
    ]
    variants = [("issuer", args.issuer_tree)] + ([("baseline", args.baseline_tree)] if args.baseline_tree else [])
    issuer_csrs = {
        variant: [[make_csr(f"host-{i}.bench-r{r}-{variant}.example.com") for i in range(args.certs)] for r in range(args.rounds)]
        for variant, _ in variants
    }
    warm = [make_csr(f"warm-{i}.bench.example.test") for i in range(2 * args.concurrency)]
    rounds = []
    with tempfile.TemporaryDirectory(prefix="issuer-throughput-") as tmp_name:
        tmp = Path(tmp_name)
        with kafka_broker(tmp) as (kafka, kafka_pid):
            log(f"Kafka at {kafka.bootstrap_servers} (pid {kafka_pid or 'external'})")
            sim = Simulator.start(tmp / "sim", tmp / "sim.log")
            try:
                sim_view = SimpleNamespace(data_dir=sim.data_dir, endpoints=SimpleNamespace(api_url=sim.api_url))
                pids = {"emca-sim": sim.process.pid, "kafka": kafka_pid}
                for r in range(args.rounds):
                    direct = await measure_direct(sim, sim_view, version, direct_csrs[r], warm, args.concurrency,
                                                  pids, f"r{r}")
                    log(f"round {r + 1}: direct {direct.rate:,.0f} certs/s")
                    batched = None
                    if args.batch > 1:
                        batched = await measure_direct(sim, sim_view, version, direct_batched_csrs[r], warm,
                                                       args.concurrency, pids, f"r{r}b", args.batch)
                        log(f"round {r + 1}: direct batched ({args.batch} per call) {batched.rate:,.0f} certs/s")
                    measured: dict[str, Measurement] = {}
                    # alternate which variant goes first, so that neither always follows the direct measurement
                    for variant, tree in (variants if r % 2 == 0 else variants[::-1]):
                        round_tmp = tmp / f"round-{r}-{variant}"
                        round_tmp.mkdir()
                        measured[variant] = await measure_issuer(kafka, sim_view, version, issuer_csrs[variant][r],
                                                                 args.concurrency, pids, round_tmp, args, r, tree, variant)
                        log(f"round {r + 1}: {variant} {measured[variant].rate:,.0f} certs/s, "
                            f"{measured[variant].rate / direct.rate:.2f} of direct")
                    rounds.append(Round(r, direct, measured["issuer"], measured.get("baseline"), batched))
            finally:
                sim.stop()
    return rounds, info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--certs", type=int, default=1000, help="certificates per measurement (N)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight: the client's and the connector's (C)")
    parser.add_argument("--version", default="V4.2.4+", choices=[v.value for v in EmcaVersion])
    parser.add_argument("--rounds", type=int, default=1, help="direct + issuer measurements, one after the other")
    parser.add_argument("--drain-rate", type=float, default=1e6, help="the issuer's per-connector call rate limit")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds the issuer may take for N certificates")
    parser.add_argument("--issuer-profile", type=Path, help="run the issuer under cProfile, its stats written here")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--batch", type=int, default=1,
                        help="also measure the direct rate with this many CSRs per createCertificates call (4.2.x)")
    parser.add_argument("--issuer-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the issuer of --issuer-tree only (e.g. CERTRAIL_ISSUER_BATCH_MAX_CSRS=1)")
    parser.add_argument("--issuer-tree", type=Path, default=ROOT, help="run the issuer from this code tree (default: this one)")
    parser.add_argument("--baseline-tree", type=Path,
                        help="also measure the issuer of this tree in every round (e.g. `git archive HEAD | tar -x -C DIR`)")
    args = parser.parse_args(argv)
    rounds, info = asyncio.run(run(args))
    print(report(rounds, info, args))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                         "rounds": [asdict(r) | {"ratio": r.ratio} for r in rounds]}, indent=2))
    measured = [m for r in rounds for m in (r.direct, r.issuer, r.baseline, r.direct_batched) if m is not None]
    return 0 if all(m.errors == 0 for m in measured) else 1


if __name__ == "__main__":
    sys.exit(main())
