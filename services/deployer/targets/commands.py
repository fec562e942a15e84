"""Running a local command (reload, ``nginx -t``) with a timeout: argv only, never a shell."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from services.common.contracts.errors import ErrorCode
from services.deployer.targets.base import TargetError


async def run_command(argv: Sequence[str], *, timeout_s: float, what: str, code: ErrorCode = ErrorCode.INSTALL_FAILED) -> str:
    """Run ``argv``; raise TargetError(``code``) when it cannot start, times out or exits non-zero.
    Returns its combined output (tail)."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        raise TargetError(code, f"{what}: cannot run {argv[0]!r}: {exc.strerror or exc}") from None
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise TargetError(code, f"{what}: {argv[0]!r} did not finish within {timeout_s:g}s") from None
    text = output.decode("utf-8", errors="replace").strip()[-800:]
    if process.returncode != 0:
        raise TargetError(code, f"{what}: {argv[0]!r} exited with {process.returncode}: {text or '(no output)'}")
    return text
