"""A zombie is dead: `certrail up --detach` restarts a service whose process exited even when its parent (not us)
has not reaped it yet (services/common/proc.is_zombie, stack._alive)."""

from __future__ import annotations

import signal
import subprocess
import sys

from services.common.proc import is_zombie, pid_exists
from services.common.stack import _alive
from tests.conftest import wait_until


def test_a_zombie_another_process_has_not_reaped_is_not_alive() -> None:
    # the holder forks a child that exits at once and never reaps it: a zombie whose parent is not us (a Python
    # holder, not a shell: a shell may reap its background job before it execs; SIGCHLD at its default in the
    # holder, as another test may leave it ignored in this process, and then the kernel would reap it at once)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\npid = os.fork()\nif pid == 0:\n    os._exit(0)\n"
                               "print(pid, flush=True)\ntime.sleep(30)\n"],
        stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_DFL))  # noqa: PLW1509
    try:
        assert holder.stdout is not None
        orphan = int(holder.stdout.readline())
        wait_until(lambda: is_zombie(orphan), "the background process to exit unreaped", 10, interval_s=0.05)
        assert pid_exists(orphan) and not _alive(orphan)
        assert _alive(holder.pid) and not is_zombie(holder.pid)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert not is_zombie(holder.pid) and not _alive(holder.pid)  # reaped: gone
