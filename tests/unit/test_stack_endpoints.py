"""`certrail up` prints where each door is: the HTTP API and the ACME directory of every gateway instance
(services/cli/stack_cmd.py ``_print_endpoints``; nothing is started)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from services.cli import stack_cmd
from services.common.stack import Stack


class _Kafka:
    """What ``_print_endpoints`` reads of the local Kafka: its address and the principals' env files."""

    def __init__(self, var_dir: Path) -> None:
        self.bootstrap_servers = "127.0.0.1:9092"
        self.var_dir = var_dir

    def env_file(self, principal: str) -> Path:
        return self.var_dir / "kafka" / f"{principal}.env"


def _printed(stack: Stack) -> str:
    console = Console(record=True, width=400)
    stack_cmd._print_endpoints(console, stack, _Kafka(stack.var_dir))  # type: ignore[arg-type]
    return console.export_text()


def test_the_acme_directory_is_printed_with_the_gateway(tmp_path: Path) -> None:
    printed = _printed(Stack(var_dir=tmp_path))
    assert "ACME directory: http://127.0.0.1:8080/acme/directory" in printed
    assert "HTTP API: http://127.0.0.1:8080/v1" in printed


def test_every_gateway_instance_has_its_acme_directory(tmp_path: Path) -> None:
    printed = _printed(Stack(var_dir=tmp_path, instances=2, ports={"gateway": 9180, "issuer": 9181, "deployer": 9182,
                                                                   "auditor": 9183}))
    directories = [line.split()[2] for line in printed.splitlines() if line.startswith("ACME directory:")]
    assert directories == ["http://127.0.0.1:9180/acme/directory", "http://127.0.0.1:9190/acme/directory"]
