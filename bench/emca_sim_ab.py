"""A/B of two or more emCA simulator servers that differ by environment (another checkout on PYTHONPATH, a
package hidden...), interleaved so that a shared machine's drift hits them alike.

    .venv/bin/python -m bench.emca_sim_ab --per-call 10 before=PYTHONPATH=/tmp/before after=

Each variant is ``NAME=`` followed by ``VAR=VALUE`` pairs separated by commas (none: this environment). Every
variant gets its own ``certrail emca-sim serve`` (own data directory and ports) and its own clients (one
connection per worker, as in bench.emca_sim_issuance); then ``--slices`` times, in alternating order, each
variant issues ``--per-slice`` certificates (createCertificates / createCertificate built by the connector's
dialect module, ``--concurrency`` in flight) while its server's CPU time is read from ``/proc``. Reported per
variant: certificates/s over its slices, the server's and this process's CPU milliseconds per certificate,
and what the rest of the machine used meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from bench.emca_sim_issuance import CAS, DIALECTS, Requests, Simulator, _Clock, http_clients, make_csrs, run_requests


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=[VAR=VALUE,...]")
    env = {}
    for assignment in filter(None, assignments.split(",")):
        var, sep, value = assignment.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{assignment!r}: expected VAR=VALUE")
        env[var] = value
    return name, env


async def compare(args: argparse.Namespace) -> None:
    from emca_sim.state import SimEmca

    profile = CAS[args.ca][1]
    csrs = make_csrs(args.slices * args.per_slice, "ab")
    with tempfile.TemporaryDirectory(prefix="emca-sim-ab-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            variants = {}
            for name, env in args.variants:
                data_dir = Path(tmp) / name
                SimEmca(data_dir).close()
                saved = dict(os.environ)
                os.environ.update(env)
                try:
                    sim = Simulator.start(data_dir, Path(tmp) / f"{name}.log")
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
                stack.callback(sim.stop)
                clients = [await stack.enter_async_context(c) for c in http_clients(sim, args.concurrency, "per-worker", False)]
                builders = Requests(sim)
                await builders.fetch_token(clients[0])
                variants[name] = (sim, clients, builders)
            totals: dict[tuple[str, str], float] = defaultdict(float)
            for index in range(args.slices):
                chunk = csrs[index * args.per_slice:(index + 1) * args.per_slice]
                for name in (list(variants) if index % 2 == 0 else list(reversed(variants))):
                    sim, clients, builders = variants[name]
                    warm = builders.prepare(args.dialect, profile, make_csrs(args.concurrency, "warm"), 1, f"warm-{index}")
                    await run_requests(clients, args.dialect, warm, args.concurrency)  # live connections, not timed
                    requests = builders.prepare(args.dialect, profile, chunk, args.per_call, f"ab-{index}")
                    with _Clock(sim.process.pid) as clock:
                        issued, errors = await run_requests(clients, args.dialect, requests, args.concurrency)
                    if issued != len(chunk):
                        raise RuntimeError(f"{name}: {len(chunk) - issued} not issued, e.g. {errors[:1]}")
                    for key, value in (("wall", clock.wall), ("server", clock.server or 0.0), ("client", clock.cpu),
                                       ("other", clock.other)):
                        totals[(name, key)] += value
    certs = args.slices * args.per_slice
    print(f"{args.dialect}, {args.per_call} CSR(s) per call, {args.ca} CA, {certs} certificates per variant", file=sys.stderr)
    rows = []
    for name in variants:
        wall = totals[(name, "wall")]
        row = {"variant": name, "certs_per_s": certs / wall, "server_cpu_ms": 1000 * totals[(name, "server")] / certs,
               "client_cpu_ms": 1000 * totals[(name, "client")] / certs, "other_cpu_share": totals[(name, "other")] / wall}
        rows.append(row)
        print(f"  {name:24s} {row['certs_per_s']:7,.0f} certs/s  server {row['server_cpu_ms']:.3f} ms/cert  "
              f"client {row['client_cpu_ms']:.3f} ms/cert  other jobs {100 * row['other_cpu_share']:.0f}%", file=sys.stderr)
    settings = {"dialect": args.dialect, "ca": args.ca, "per_call": args.per_call, "slices": args.slices,
                "per_slice": args.per_slice, "concurrency": args.concurrency,
                "variants": {name: env for name, env in args.variants}}
    print(json.dumps({"benchmark": "emca_sim_ab", "settings": settings, "results": rows}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.emca_sim_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", type=parse_variant, metavar="NAME=[VAR=VALUE,...]")
    parser.add_argument("--dialect", choices=DIALECTS, default="V4.2.3")
    parser.add_argument("--ca", choices=tuple(CAS), default="P-256")
    parser.add_argument("--per-call", type=int, default=1, help="CSRs per createCertificates call (4.2.x; default 1)")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--per-slice", type=int, default=250, help="certificates per variant and slice (default 250)")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    if args.dialect == "V4.0.17" and args.per_call != 1:
        parser.error("V4.0.17 createCertificate takes one CSR")
    asyncio.run(compare(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
