"""The probe a target passes before it is stored (services/deployer/config/probe.py), against the real
filesystem and a real local TLS listener: what answers passes; what does not is TARGET_UNREACHABLE; what
answers no (not writable, untrusted TLS) is INSTALL_FAILED."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.contracts.errors import ErrorCode
from services.common.throwaway_tls import make_throwaway_tls
from services.deployer.config.probe import probe_target
from services.deployer.store import TargetSpec, parse_config
from services.deployer.targets.base import TargetError
from services.deployer.targets.config import TargetKind
from tests.conftest import free_ports
from tests.tls_listener import tls_listener


def spec(kind: TargetKind, config: dict[str, Any]) -> TargetSpec:
    secrets = {"hmac_secret": "h" * 40} if kind is TargetKind.WEBHOOK else {}
    return TargetSpec("t", kind, parse_config(kind, config), tuple(secrets), secrets)


async def test_a_file_target_needs_a_directory_it_can_create_or_write(tmp_path: Path) -> None:
    await probe_target(spec(TargetKind.FILE, {"dir": str(tmp_path / "new" / "deeper")}))  # created on first deploy
    (tmp_path / "plain").write_text("not a directory")
    with pytest.raises(TargetError) as refused:
        await probe_target(spec(TargetKind.FILE, {"dir": str(tmp_path / "plain" / "certs")}))
    assert refused.value.code is ErrorCode.INSTALL_FAILED and "not a directory" in refused.value.message


async def test_a_webhook_needs_a_verified_tls_answer(tmp_path: Path) -> None:
    (closed,) = free_ports(1)
    with pytest.raises(TargetError) as down:
        await probe_target(spec(TargetKind.WEBHOOK, {"url": f"https://localhost:{closed}/in", "timeout_s": 3}))
    assert down.value.code is ErrorCode.TARGET_UNREACHABLE
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_text(make_throwaway_tls({"localhost"})[0])
    with tls_listener(tmp_path) as (port, ca_file):
        await probe_target(spec(TargetKind.WEBHOOK, {"url": f"https://localhost:{port}/in", "ca_file": str(ca_file)}))
        with pytest.raises(TargetError) as untrusted:
            await probe_target(spec(TargetKind.WEBHOOK, {"url": f"https://localhost:{port}/in", "ca_file": str(other_ca)}))
    assert untrusted.value.code is ErrorCode.INSTALL_FAILED and "does not verify" in untrusted.value.message
