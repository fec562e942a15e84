"""The auditor's prepare workers do not outlive an auditor killed with SIGKILL (they would
otherwise stay idle forever, each holding ~110 MiB)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from services.common.proc import pid_exists
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parents[2]

PARENT = """
import os, sys, time
from services.auditor.app import prepare_pool_factory
pool = prepare_pool_factory(1)()
print(pool.submit(os.getpid).result(), flush=True)  # the worker's pid, once it runs
time.sleep(600)
"""


def _is_gone(pid: int) -> bool:
    if not pid_exists(pid):
        return True
    try:  # an exited child of someone else may linger as a zombie until reaped
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


def test_prepare_worker_exits_when_the_auditor_is_killed() -> None:
    with subprocess.Popen([sys.executable, "-c", PARENT], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as parent:
        try:
            assert parent.stdout is not None
            worker = int(parent.stdout.readline())
            assert worker != parent.pid and not _is_gone(worker)
            os.kill(parent.pid, signal.SIGKILL)
            parent.wait(timeout=10)
            wait_until(lambda: _is_gone(worker), f"prepare worker {worker} to exit after its parent was killed", 15, interval_s=0.1)
        finally:
            if parent.poll() is None:
                parent.kill()
