"""One path for every configuration change (issue 19, decision 0019), one rule per owner:

- the gateway's (services/gateway/config/): ``gateway_profiles``, ``gateway_tokens``,
  ``gateway_requester_keys`` and ``emca_connectors``;
- the deployer's (services/deployer/config/): ``deployer_targets`` and ``deployer_bindings``.

A rule fails when a module under services/ other than its path writes its tables: calls or passes on
a write helper of the owner's store (services/gateway/store.py: profiles, tokens, requester keys;
services/deployer/store.py: add_target, remove_target, bind, unbind), a write method of the connector
registry (on anything named ``...registry``), a write helper of the connector repository outside the
registry, builds a row of those tables, runs insert/update/delete on their ORM classes, or names them
after INSERT INTO / UPDATE / DELETE FROM in SQL text. The AST is read as
tests/unit/test_service_boundaries.py does.

Seams that remain are listed in a rule's ``allowed`` with what replaces them; an entry no longer
needed fails too.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXEMPT = ("services/common/db_schema.py", "services/common/migrations/")


@dataclass(frozen=True)
class Rule:
    """Who alone may write a set of tables."""

    name: str
    path: str
    #: module -> its write helpers, and the modules that may call them
    write_helpers: dict[str, tuple[frozenset[str], tuple[str, ...]]]
    orm_classes: frozenset[str]
    tables: tuple[str, ...]
    #: where rows are written: the stores and repositories (called only as above), and the path
    row_writers: tuple[str, ...]
    #: (module, what it writes) -> "issue N: <what replaces it>"
    allowed: dict[tuple[str, str], str] = field(default_factory=dict)
    #: method names that write when called on anything named ``...registry``
    registry_writes: frozenset[str] = frozenset()

    @property
    def sql_write(self) -> re.Pattern[str]:
        return re.compile(r"\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?(" + "|".join(self.tables) + r")\b", re.I)


GATEWAY = Rule(
    name="gateway",
    path="services/gateway/config/",
    write_helpers={
        "services.gateway.store": (frozenset({"put_profile", "delete_profile", "add_token", "revoke_token", "add_requester_key",
                                              "revoke_requester_key"}), ("services/gateway/config/",)),
    },
    orm_classes=frozenset({"GatewayProfile", "GatewayToken", "GatewayRequesterKey"}),
    tables=("gateway_profiles", "gateway_tokens", "gateway_requester_keys"),
    row_writers=("services/gateway/store.py", "services/gateway/config/"),
)
#: the emCA connector registry: the issuer's (decision 0034)
ISSUER = Rule(
    name="issuer",
    path="services/issuer/registry/",
    write_helpers={
        "services.issuer.registry.repository": (frozenset({"insert_connector", "update_connector", "delete_connector",
                                                             "rotate_secrets"}), ("services/issuer/registry/registry.py",)),
    },
    orm_classes=frozenset({"EmcaConnectorRow"}),
    tables=("emca_connectors",),
    row_writers=("services/issuer/registry/",),
    registry_writes=frozenset({"create", "update", "enable", "disable", "delete", "rotate_secrets"}),
)
DEPLOYER = Rule(
    name="deployer",
    path="services/deployer/config/",
    write_helpers={"services.deployer.store": (frozenset({"add_target", "remove_target", "bind", "unbind"}),
                                               ("services/deployer/config/",))},
    orm_classes=frozenset({"DeployerTargetRow", "DeployerBindingRow"}),
    tables=("deployer_targets", "deployer_bindings"),
    row_writers=("services/deployer/store.py", "services/deployer/config/"),
)
RULES = {rule.name: rule for rule in (GATEWAY, ISSUER, DEPLOYER)}


def _allowed(module: str, places: tuple[str, ...]) -> bool:
    return any(module == p or (p.endswith("/") and module.startswith(p)) for p in places)


def _aliases(rule: Rule, tree: ast.AST) -> tuple[dict[str, str], dict[str, str]]:
    """Local names bound to a guarded module, and local names bound to one of its functions (-> module.function)."""
    modules: dict[str, str] = {}
    functions: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in rule.write_helpers and alias.asname:
                    modules[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in rule.write_helpers:
                    modules[alias.asname or alias.name] = full
                elif node.module in rule.write_helpers and alias.name in rule.write_helpers[node.module][0]:
                    functions[alias.asname or alias.name] = full
    return modules, functions


def writes_in(rule: Rule, module: str, source: str) -> Iterator[str]:
    """What ``module`` (a path relative to the repository) writes of ``rule``'s tables outside its path."""
    tree = ast.parse(source)
    modules, functions = _aliases(rule, tree)
    sql_write = rule.sql_write
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            target = modules.get(node.value.id) if isinstance(node.value, ast.Name) else None
            if target is not None and node.attr in rule.write_helpers[target][0]:
                if not _allowed(module, rule.write_helpers[target][1]):
                    yield f"{target}.{node.attr}"
            elif node.attr in rule.registry_writes and ast.unparse(node.value).lower().endswith("registry"):
                if not _allowed(module, (rule.path,)):
                    yield f"ConnectorRegistry.{node.attr}"
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in functions:
            target = functions[node.id].rsplit(".", 1)[0]
            if not _allowed(module, rule.write_helpers[target][1]):
                yield functions[node.id]
        elif isinstance(node, ast.Call) and not _allowed(module, rule.row_writers):
            callee = ast.unparse(node.func).rsplit(".", 1)[-1]
            named = {n.id for arg in node.args for n in ast.walk(arg) if isinstance(n, ast.Name)}
            if callee in rule.orm_classes:
                yield f"a new {callee} row"
            elif callee in ("insert", "update", "delete") and named & rule.orm_classes:
                yield f"{callee}({', '.join(sorted(named & rule.orm_classes))})"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and not _allowed(module, rule.row_writers):
            match = sql_write.search(node.value)
            if match:
                yield f"SQL {match.group(1).upper()} {match.group(2)}"


def service_modules() -> Iterator[tuple[str, str]]:
    for path in sorted((REPO / "services").rglob("*.py")):
        module = path.relative_to(REPO).as_posix()
        if not module.startswith(EXEMPT):
            yield module, path.read_text(encoding="utf-8")


@pytest.mark.parametrize("rule", list(RULES.values()), ids=list(RULES))
def test_only_the_one_path_writes_its_configuration(rule: Rule) -> None:
    found = {(module, what) for module, source in service_modules() for what in writes_in(rule, module, source)}
    outside = sorted(found - set(rule.allowed))
    assert not outside, f"configuration written outside {rule.path} (decision 0019):\n" + "\n".join(
        f"  {module}: {what}" for module, what in outside)
    stale = sorted(set(rule.allowed) - found)
    assert not stale, f"ALLOWED entries no longer needed (remove them): {stale}"


@pytest.mark.parametrize(("rule", "source", "expected"), [
    ("gateway", "from services.gateway import store\nstore.add_token(s)", ["services.gateway.store.add_token"]),
    ("gateway", "from services.gateway import store as gs\nf(gs.revoke_requester_key)", ["services.gateway.store.revoke_requester_key"]),
    ("gateway", "from services.gateway.store import put_profile as p\np(s, x, now)", ["services.gateway.store.put_profile"]),
    ("gateway", "import services.gateway.store as st\nst.delete_profile(s, 'x')", ["services.gateway.store.delete_profile"]),
    ("issuer", "from services.issuer.registry import repository as repo\nrepo.insert_connector(s)",
     ["services.issuer.registry.repository.insert_connector"]),
    ("issuer", "await self.registry.delete('c')", ["ConnectorRegistry.delete"]),
    ("issuer", "asyncio.to_thread(registry.disable, 'c', None)", ["ConnectorRegistry.disable"]),
    ("issuer", "session.add(EmcaConnectorRow(name='c'))", ["a new EmcaConnectorRow row"]),
    ("issuer", "conn.execute(text('DELETE FROM emca_connectors'))", ["SQL DELETE FROM emca_connectors"]),
    ("gateway", "session.add(GatewayToken(token_id='x'))", ["a new GatewayToken row"]),
    ("gateway", "session.execute(delete(GatewayProfile).where(x))", ["delete(GatewayProfile)"]),
    ("gateway", "conn.execute(text('UPDATE gateway_requester_keys SET revoked_at = now()'))",
     ["SQL UPDATE gateway_requester_keys"]),
    ("deployer", "from services.deployer import store\nstore.add_target(s, box, 'x')", ["services.deployer.store.add_target"]),
    ("deployer", "from services.deployer import store as ds\nf(ds.unbind)", ["services.deployer.store.unbind"]),
    ("deployer", "from services.deployer.store import bind as b\nb(s, 'p', 't', now)", ["services.deployer.store.bind"]),
    ("deployer", "import services.deployer.store as st\nst.remove_target(s, 'x')", ["services.deployer.store.remove_target"]),
    ("deployer", "session.add(DeployerBindingRow(profile='p'))", ["a new DeployerBindingRow row"]),
    ("deployer", "session.execute(delete(DeployerTargetRow).where(x))", ["delete(DeployerTargetRow)"]),
    ("deployer", "conn.execute(text('DELETE FROM deployer_bindings'))", ["SQL DELETE FROM deployer_bindings"]),
    # reading is not writing; another module's bind is not the store's; one owner's rule ignores the other's tables
    ("gateway", "from services.gateway import store\nstore.get_profile(s, 'x')\nstore.list_tokens(s)", []),
    ("gateway", "session.execute(select(GatewayProfile.name))", []),
    ("issuer", "registry.get('c')\nregistry.test('c')\nregistry.list()", []),
    ("gateway", "await self.registry.delete('c')", []),
    ("gateway", "text('SELECT * FROM gateway_tokens')", []),
    ("gateway", "from services.deployer import store\nstore.bind(s, 'p', 't', now)", []),
    ("deployer", "from services.deployer import store\nstore.get_target(s, 'x')\nstore.bindings(s)\n"
                 "store.targets_for_profile(s, 'p', b)", []),
    ("deployer", "session.get(DeployerTargetRow, 'x')\nsocket.bind(('', 0))", []),
    ("deployer", "text('SELECT * FROM deployer_targets')", []),
    ("deployer", "await self.registry.delete('c')", []),
])
def test_the_rule_sees_each_kind_of_write(rule: str, source: str, expected: list[str]) -> None:
    assert list(writes_in(RULES[rule], f"services/{rule}/somewhere.py", source)) == expected


@pytest.mark.parametrize(("rule", "module", "source"), [
    ("gateway", "services/gateway/config/tokens.py", "from services.gateway import store\nstore.add_token(s)"),
    ("issuer", "services/issuer/registry/registry.py",
     "from services.issuer.registry import repository as repo\nrepo.delete_connector(s, n)"),
    ("issuer", "services/issuer/registry/changes.py", "await registry.create(spec, record=hook)"),
    ("gateway", "services/gateway/store.py", "session.add(GatewayToken(token_id='x'))"),
    ("deployer", "services/deployer/config/targets.py", "from services.deployer import store\nstore.bind(s, 'p', 't', now)"),
    ("deployer", "services/deployer/store.py", "session.add(DeployerTargetRow(name='x'))"),
])
def test_the_path_itself_and_the_helpers_own_modules_may_write(rule: str, module: str, source: str) -> None:
    assert list(writes_in(RULES[rule], module, source)) == []
