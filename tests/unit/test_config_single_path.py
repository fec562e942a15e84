"""One path for every change to the configuration the gateway owns (issue 19, decision 0019).

Fails when a module under services/ other than the path (services/gateway/config/) writes the
gateway's configuration tables: calls or passes on a write helper of services/gateway/store.py
(profiles, tokens, requester keys), a write method of the connector registry (on anything named
``...registry``), a write helper of the connector repository outside the registry, builds a row of
those tables, runs insert/update/delete on their ORM classes, or names them after INSERT INTO /
UPDATE / DELETE FROM in SQL text. The AST is read as tests/unit/test_service_boundaries.py does.

Seams that remain are listed in ALLOWED with what replaces them; an entry no longer needed fails too.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PATH = "services/gateway/config/"

STORE = "services.gateway.store"
REPOSITORY = "services.common.connectors.repository"
#: module -> its write helpers, and the modules that may call them
WRITE_HELPERS: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    STORE: (frozenset({"put_profile", "delete_profile", "add_token", "revoke_token", "add_requester_key",
                       "revoke_requester_key"}), (PATH,)),
    REPOSITORY: (frozenset({"insert_connector", "update_connector", "delete_connector", "rotate_secrets"}),
                 ("services/common/connectors/registry.py",)),
}
REGISTRY_WRITES = frozenset({"create", "update", "enable", "disable", "delete", "rotate_secrets"})
ORM_CLASSES = frozenset({"GatewayProfile", "GatewayToken", "GatewayRequesterKey", "EmcaConnectorRow"})
TABLES = ("gateway_profiles", "gateway_tokens", "gateway_requester_keys", "emca_connectors")
#: where the rows are written: the store and the repository (called only as above), and the path
ROW_WRITERS = ("services/gateway/store.py", "services/common/connectors/repository.py", PATH)
SQL_WRITE = re.compile(r"\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?(" + "|".join(TABLES) + r")\b", re.I)
EXEMPT = ("services/common/db_schema.py", "services/common/migrations/")

#: (module, what it writes) -> "issue 19: <what replaces it>"
ALLOWED: dict[tuple[str, str], str] = {
}


def _allowed(module: str, places: tuple[str, ...]) -> bool:
    return any(module == p or (p.endswith("/") and module.startswith(p)) for p in places)


def _aliases(tree: ast.AST) -> tuple[dict[str, str], dict[str, str]]:
    """Local names bound to a guarded module, and local names bound to one of its functions (-> module.function)."""
    modules: dict[str, str] = {}
    functions: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in WRITE_HELPERS and alias.asname:
                    modules[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in WRITE_HELPERS:
                    modules[alias.asname or alias.name] = full
                elif node.module in WRITE_HELPERS and alias.name in WRITE_HELPERS[node.module][0]:
                    functions[alias.asname or alias.name] = full
    return modules, functions


def writes_in(module: str, source: str) -> Iterator[str]:
    """What ``module`` (a path relative to the repository) writes outside the one path."""
    tree = ast.parse(source)
    modules, functions = _aliases(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            target = modules.get(node.value.id) if isinstance(node.value, ast.Name) else None
            if target is not None and node.attr in WRITE_HELPERS[target][0]:
                if not _allowed(module, WRITE_HELPERS[target][1]):
                    yield f"{target}.{node.attr}"
            elif node.attr in REGISTRY_WRITES and ast.unparse(node.value).lower().endswith("registry"):
                if not _allowed(module, (PATH,)):
                    yield f"ConnectorRegistry.{node.attr}"
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in functions:
            target = functions[node.id].rsplit(".", 1)[0]
            if not _allowed(module, WRITE_HELPERS[target][1]):
                yield functions[node.id]
        elif isinstance(node, ast.Call) and not _allowed(module, ROW_WRITERS):
            callee = ast.unparse(node.func).rsplit(".", 1)[-1]
            named = {n.id for arg in node.args for n in ast.walk(arg) if isinstance(n, ast.Name)}
            if callee in ORM_CLASSES:
                yield f"a new {callee} row"
            elif callee in ("insert", "update", "delete") and named & ORM_CLASSES:
                yield f"{callee}({', '.join(sorted(named & ORM_CLASSES))})"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and not _allowed(module, ROW_WRITERS):
            match = SQL_WRITE.search(node.value)
            if match:
                yield f"SQL {match.group(1).upper()} {match.group(2)}"


def service_modules() -> Iterator[tuple[str, str]]:
    for path in sorted((REPO / "services").rglob("*.py")):
        module = path.relative_to(REPO).as_posix()
        if not module.startswith(EXEMPT):
            yield module, path.read_text(encoding="utf-8")


def test_only_the_one_path_writes_the_gateways_configuration() -> None:
    found = {(module, what) for module, source in service_modules() for what in writes_in(module, source)}
    outside = sorted(found - set(ALLOWED))
    assert not outside, "configuration written outside services/gateway/config/ (decision 0019):\n" + "\n".join(
        f"  {module}: {what}" for module, what in outside)
    stale = sorted(set(ALLOWED) - found)
    assert not stale, f"ALLOWED entries no longer needed (remove them): {stale}"


@pytest.mark.parametrize(("source", "expected"), [
    ("from services.gateway import store\nstore.add_token(s)", ["services.gateway.store.add_token"]),
    ("from services.gateway import store as gs\nf(gs.revoke_requester_key)", ["services.gateway.store.revoke_requester_key"]),
    ("from services.gateway.store import put_profile as p\np(s, x, now)", ["services.gateway.store.put_profile"]),
    ("import services.gateway.store as st\nst.delete_profile(s, 'x')", ["services.gateway.store.delete_profile"]),
    ("from services.common.connectors import repository as repo\nrepo.insert_connector(s)",
     ["services.common.connectors.repository.insert_connector"]),
    ("await self.registry.delete('c')", ["ConnectorRegistry.delete"]),
    ("asyncio.to_thread(registry.disable, 'c', None)", ["ConnectorRegistry.disable"]),
    ("session.add(GatewayToken(token_id='x'))", ["a new GatewayToken row"]),
    ("session.execute(delete(GatewayProfile).where(x))", ["delete(GatewayProfile)"]),
    ("conn.execute(text('UPDATE gateway_requester_keys SET revoked_at = now()'))", ["SQL UPDATE gateway_requester_keys"]),
    # reading is not writing
    ("from services.gateway import store\nstore.get_profile(s, 'x')\nstore.list_tokens(s)", []),
    ("session.execute(select(GatewayProfile.name))\nregistry.get('c')\nregistry.test('c')", []),
    ("text('SELECT * FROM gateway_tokens')", []),
])
def test_the_rule_sees_each_kind_of_write(source: str, expected: list[str]) -> None:
    assert list(writes_in("services/gateway/somewhere.py", source)) == expected


def test_the_path_itself_and_the_helpers_own_modules_may_write() -> None:
    assert list(writes_in(PATH + "tokens.py", "from services.gateway import store\nstore.add_token(s)")) == []
    assert list(writes_in("services/common/connectors/registry.py",
                          "from services.common.connectors import repository as repo\nrepo.delete_connector(s, n)")) == []
    assert list(writes_in("services/gateway/store.py", "session.add(GatewayToken(token_id='x'))")) == []
