"""`certrail up --instances N`'s process layout (services/common/stack.py), and that one instance keeps the old names."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.stack import DEFAULT_PORTS, Stack, StackError


def test_one_instance_keeps_the_names_files_and_ports_of_before(tmp_path: Path) -> None:
    stack = Stack(var_dir=tmp_path)
    assert [(s.label, s.port, s.pid_file.name, s.log_file.name) for s in stack.services] == [
        (name, port, f"{name}.pid", f"{name}.log") for name, port in DEFAULT_PORTS.items()]


def test_instances_are_numbered_on_stepped_ports_and_serve_the_same_service(tmp_path: Path) -> None:
    stack = Stack(var_dir=tmp_path, instances=2, port_step=10, service_env={"issuer": {"X": "1"}})
    assert [(s.label, s.port) for s in stack.services] == [
        ("gateway-1", 8080), ("issuer-1", 8081), ("deployer-1", 8082), ("auditor-1", 8083),
        ("gateway-2", 8090), ("issuer-2", 8091), ("deployer-2", 8092), ("auditor-2", 8093)]
    issuers = stack.instances_of("issuer")
    assert [s.argv()[-2:] for s in issuers] == [["serve", "issuer"]] * 2  # one service, one consumer group
    assert all(s.env["X"] == "1" for s in issuers)
    assert {s.pid_file.name for s in stack.services} == {f"{s.label}.pid" for s in stack.services}


def test_no_instance_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="at least 1"):
        Stack(var_dir=tmp_path, instances=0)
