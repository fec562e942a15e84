"""Small process and port checks shared by the local broker, the embedded
stack and the tests."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from pathlib import Path


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (TIME_WAIT leftovers do not count,
    as for servers that set SO_REUSEADDR). Raises OSError for other bind errors."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def pid_exists(pid: int) -> bool:
    """True when a process with this pid exists (possibly owned by someone else,
    possibly a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_zombie(pid: int) -> bool:
    """True when the process has exited but its parent has not reaped it yet (state ``Z`` in /proc/<pid>/stat).
    A zombie whose parent is not us (an orphan re-parented to an init that reaps late) stays visible to
    `pid_exists`, yet it is dead: its ports are free and it will never run again."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


PARENT_CHECK_INTERVAL_S = 1.0


def exit_with_parent(parent_pid: int, interval_s: float = PARENT_CHECK_INTERVAL_S) -> None:
    """For a worker process: exit at once when ``parent_pid`` is no longer its parent.

    A pool worker outlives a parent killed with SIGKILL (nobody closes its pipe), and would stay
    idle forever holding its memory. A daemon thread checks the parent every ``interval_s`` (cheap,
    and portable to every POSIX system, unlike Linux's PR_SET_PDEATHSIG) and ends the worker with
    ``os._exit`` when the parent is gone (the worker holds nothing that needs flushing)."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
