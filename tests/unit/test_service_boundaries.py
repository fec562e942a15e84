"""Each service owns its state (issue 18, decision 0017).

Fails when a module of one of the four services imports another service's
package (import or from-import, also inside a function, or importlib), when
services/common imports any of the four, and when a module names a table that
another service owns: its ORM class from services.common.db_schema, or its name
in a string (SQL text; docstrings do not count). services/common may name no
service's table. services/cli is the operator's tool and may use any service.

The seams that remain are listed in ALLOWED, each with what replaces it. An
entry that is no longer needed fails too: the list only shrinks.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.db_schema import SHARED, Base, owner_of

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "issuer", "deployer", "auditor")
COMMON = "common"

#: the schema itself and the migrations that create every table
SCHEMA_MODULES = ("services/common/db_schema.py", "services/common/migrations/")

#: (module, what it crosses) -> "issue 18: <what replaces it>"
ALLOWED: dict[tuple[str, str], str] = {}


def orm_tables() -> dict[str, str]:
    """ORM class name -> table name, from services.common.db_schema."""
    return {mapper.class_.__name__: mapper.class_.__tablename__ for mapper in Base.registry.mappers}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imported(tree: ast.AST, module: str, is_package: bool = False) -> Iterator[str]:
    """Every module a module imports, anywhere in it."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            callee = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if callee in {"import_module", "__import__"} and isinstance(node.args[0].value, str):
                yield node.args[0].value


def service_of(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "services" and parts[1] in SERVICES else None


def tables_named(tree: ast.AST, classes: dict[str, str], names: re.Pattern[str]) -> Iterator[str]:
    """Every table a module names: an ORM class (imported, used or an attribute) or a table name in a string."""
    docstrings = {
        id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            name: str | None = node.id
        elif isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.alias):
            name = node.name.rsplit(".", 1)[-1]
        else:
            name = None
        if name in classes:
            yield classes[name]
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield from names.findall(node.value)


def crossings(rel: str, source: str, classes: dict[str, str], names: re.Pattern[str]) -> set[tuple[str, str]]:
    """What one module (``rel``: path from the repository root) crosses: ``imports services.X``, ``table T``."""
    area = rel.split("/")[1]
    tree = ast.parse(source, filename=rel)
    found = set()
    for dotted in imported(tree, module_name(REPO / rel), rel.endswith("__init__.py")):
        other = service_of(dotted)
        if other is not None and other != area:
            found.add((rel, f"imports services.{other}"))
    if not rel.startswith(SCHEMA_MODULES):
        for table in tables_named(tree, classes, names):
            owner = owner_of(table)
            if owner not in (area, SHARED):
                found.add((rel, f"table {table}"))
    return found


def table_pattern(tables: list[str]) -> re.Pattern[str]:
    return re.compile(r"\b(" + "|".join(sorted(map(re.escape, tables), key=len, reverse=True)) + r")\b")


@pytest.fixture(scope="module")
def found() -> set[tuple[str, str]]:
    classes = orm_tables()
    names = table_pattern(list(Base.metadata.tables))
    result: set[tuple[str, str]] = set()
    for area in (*SERVICES, COMMON):
        for path in sorted((REPO / "services" / area).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            result |= crossings(rel, path.read_text(encoding="utf-8"), classes, names)
    return result


def test_every_table_has_one_owner() -> None:
    unowned = sorted(table for table in Base.metadata.tables if owner_of(table) is None)
    assert not unowned, f"give these tables an owner in services/common/db_schema.py TABLE_OWNERS or PREFIX_OWNERS: {unowned}"
    assert set(orm_tables().values()) == set(Base.metadata.tables)


def test_no_service_imports_another_service(found: set[tuple[str, str]]) -> None:
    crossed = sorted(item for item in found - ALLOWED.keys() if item[1].startswith("imports "))
    assert not crossed, "a service imports another service's package (or services/common imports a service):\n" + "\n".join(
        f"  {rel}: {what}" for rel, what in crossed
    )


def test_no_service_names_another_services_table(found: set[tuple[str, str]]) -> None:
    crossed = sorted(item for item in found - ALLOWED.keys() if item[1].startswith("table "))
    assert not crossed, "a module names a table another service owns (consume its events or call its API):\n" + "\n".join(
        f"  {rel}: {what}" for rel, what in crossed
    )


def test_allowed_seams_are_still_needed(found: set[tuple[str, str]]) -> None:
    stale = sorted(ALLOWED.keys() - found)
    assert not stale, "these seams are gone: remove them from ALLOWED:\n" + "\n".join(f"  {rel}: {what}" for rel, what in stale)
    assert all(reason.startswith("issue 18: ") for reason in ALLOWED.values())


CLASSES = {"GatewayRequest": "gateway_requests", "AuditRecord": "audit_records", "EmcaConnectorRow": "emca_connectors"}
NAMES = table_pattern(["gateway_requests", "audit_records", "emca_connectors", "service_heartbeats"])


@pytest.mark.parametrize(
    ("rel", "source", "expected"),
    [
        ("services/gateway/a.py", "from services.auditor import trail\n", {"imports services.auditor"}),
        ("services/gateway/a.py", "def f():\n    import services.issuer.state\n", {"imports services.issuer"}),
        ("services/gateway/a.py", "from services import deployer\n", {"imports services.deployer"}),
        ("services/gateway/a.py", "import importlib\nimportlib.import_module('services.auditor.trail')\n",
         {"imports services.auditor"}),
        ("services/gateway/a.py", "from services.gateway.policy import x\nfrom . import store\n", set()),
        ("services/auditor/x/b.py", "from ..inventory import x\nfrom ... import gateway\n", {"imports services.gateway"}),
        ("services/common/a.py", "from services.issuer.state import x\n", {"imports services.issuer"}),
        ("services/gateway/a.py", "from services.common.db_schema import AuditRecord\n", {"table audit_records"}),
        ("services/gateway/a.py", "from services.common import db_schema as s\ns.AuditRecord.id\n", {"table audit_records"}),
        ("services/gateway/a.py", "def f(c):\n    c.execute(text('SELECT * FROM audit_records'))\n", {"table audit_records"}),
        ("services/gateway/a.py", '"""Reads nothing from audit_records."""\n', set()),
        ("services/gateway/a.py", "from services.common.db_schema import GatewayRequest\nq = 'gateway_requests'\n", set()),
        ("services/gateway/a.py", "q = 'service_heartbeats'\n", set()),
        ("services/common/a.py", "q = 'DELETE FROM emca_connectors'\n", {"table emca_connectors"}),
        ("services/common/db_schema.py", "class AuditRecord: ...\n", set()),
    ],
)
def test_crossings_are_found(rel: str, source: str, expected: set[str]) -> None:
    assert {what for _, what in crossings(rel, source, CLASSES, NAMES)} == expected
