"""One path for every change to the deployer's targets and bindings (issue 19, decision 0019).

Fails when a module under services/ other than the path (services/deployer/config/) writes
``deployer_targets`` or ``deployer_bindings``: calls or passes on a write helper of
services/deployer/store.py (add_target, remove_target, bind, unbind), builds a row of those tables, runs
insert/update/delete on their ORM classes, or names them after INSERT INTO / UPDATE / DELETE FROM in
SQL text (the AST is read as tests/unit/test_config_single_path.py does). Seams that remain are listed
in ALLOWED with what replaces them; an entry no longer needed fails too.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PATH = "services/deployer/config/"
STORE = "services.deployer.store"
WRITE_HELPERS = frozenset({"add_target", "remove_target", "bind", "unbind"})
ORM_CLASSES = frozenset({"DeployerTargetRow", "DeployerBindingRow"})
TABLES = ("deployer_targets", "deployer_bindings")
ROW_WRITERS = ("services/deployer/store.py", PATH)
SQL_WRITE = re.compile(r"\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?(" + "|".join(TABLES) + r")\b", re.I)
EXEMPT = ("services/common/db_schema.py", "services/common/migrations/")

#: (module, what it writes) -> "issue 19: <what replaces it>"
ALLOWED: dict[tuple[str, str], str] = {
    ("services/cli/demo.py", "services.deployer.store.add_target"):
        "issue 19: `certrail demo` seeds its try-out file target through services/deployer/config/ (put_target)",
    ("services/cli/demo.py", "services.deployer.store.bind"):
        "issue 19: `certrail demo` binds its try-out profile through services/deployer/config/ (bind)",
}


def _in(module: str, places: tuple[str, ...]) -> bool:
    return any(module == p or (p.endswith("/") and module.startswith(p)) for p in places)


def _aliases(tree: ast.AST) -> tuple[set[str], dict[str, str]]:
    """Local names bound to the store module, and local names bound to one of its write helpers."""
    modules: set[str] = set()
    functions: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.asname for alias in node.names if alias.name == STORE and alias.asname}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if f"{node.module}.{alias.name}" == STORE:
                    modules.add(alias.asname or alias.name)
                elif node.module == STORE and alias.name in WRITE_HELPERS:
                    functions[alias.asname or alias.name] = f"{STORE}.{alias.name}"
    return modules, functions


def writes_in(module: str, source: str) -> Iterator[str]:
    """What ``module`` (a path relative to the repository) writes outside the one path."""
    if _in(module, (PATH,)):
        return
    tree = ast.parse(source)
    modules, functions = _aliases(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            if isinstance(node.value, ast.Name) and node.value.id in modules and node.attr in WRITE_HELPERS:
                yield f"{STORE}.{node.attr}"
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in functions:
            yield functions[node.id]
        elif isinstance(node, ast.Call) and not _in(module, ROW_WRITERS):
            callee = ast.unparse(node.func).rsplit(".", 1)[-1]
            named = {n.id for arg in node.args for n in ast.walk(arg) if isinstance(n, ast.Name)}
            if callee in ORM_CLASSES:
                yield f"a new {callee} row"
            elif callee in ("insert", "update", "delete") and named & ORM_CLASSES:
                yield f"{callee}({', '.join(sorted(named & ORM_CLASSES))})"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and not _in(module, ROW_WRITERS):
            match = SQL_WRITE.search(node.value)
            if match:
                yield f"SQL {match.group(1).upper()} {match.group(2)}"


def service_modules() -> Iterator[tuple[str, str]]:
    for path in sorted((REPO / "services").rglob("*.py")):
        module = path.relative_to(REPO).as_posix()
        if not module.startswith(EXEMPT):
            yield module, path.read_text(encoding="utf-8")


def test_only_the_one_path_writes_targets_and_bindings() -> None:
    found = {(module, what) for module, source in service_modules() for what in writes_in(module, source)}
    outside = sorted(found - set(ALLOWED))
    assert not outside, "targets or bindings written outside services/deployer/config/ (decision 0019):\n" + "\n".join(
        f"  {module}: {what}" for module, what in outside)
    stale = sorted(set(ALLOWED) - found)
    assert not stale, f"ALLOWED entries no longer needed (remove them): {stale}"


@pytest.mark.parametrize(("source", "expected"), [
    ("from services.deployer import store\nstore.add_target(s, box, 'x')", ["services.deployer.store.add_target"]),
    ("from services.deployer import store as ds\nf(ds.unbind)", ["services.deployer.store.unbind"]),
    ("from services.deployer.store import bind as b\nb(s, 'p', 't', now)", ["services.deployer.store.bind"]),
    ("import services.deployer.store as st\nst.remove_target(s, 'x')", ["services.deployer.store.remove_target"]),
    ("session.add(DeployerBindingRow(profile='p'))", ["a new DeployerBindingRow row"]),
    ("session.execute(delete(DeployerTargetRow).where(x))", ["delete(DeployerTargetRow)"]),
    ("conn.execute(text('DELETE FROM deployer_bindings'))", ["SQL DELETE FROM deployer_bindings"]),
    # reading is not writing; another module's bind is not the store's
    ("from services.deployer import store\nstore.get_target(s, 'x')\nstore.bindings(s)\nstore.targets_for_profile(s, 'p', b)", []),
    ("session.get(DeployerTargetRow, 'x')\nsocket.bind(('', 0))", []),
    ("text('SELECT * FROM deployer_targets')", []),
])
def test_the_rule_sees_each_kind_of_write(source: str, expected: list[str]) -> None:
    assert list(writes_in("services/deployer/somewhere.py", source)) == expected


def test_the_path_and_the_store_may_write() -> None:
    assert list(writes_in(PATH + "targets.py", "from services.deployer import store\nstore.bind(s, 'p', 't', now)")) == []
    assert list(writes_in("services/deployer/store.py", "session.add(DeployerTargetRow(name='x'))")) == []
