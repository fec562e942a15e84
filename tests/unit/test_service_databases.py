"""Which database each service opens (decision 0017, "Storage"): its own variable, else the shared one, else its
own SQLite file; and what `certrail db` and `certrail up` make of that."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from services.auditor.settings import AuditorSettings
from services.common.migrate import distinct_databases, same_database
from services.common.settings import (
    DATABASE_OWNERS,
    DatabaseSettings,
    service_database_url,
    service_databases,
)
from services.common.stack_db import database_urls, postgres_urls, sqlite_urls, stored_url
from services.gateway.settings import GatewaySettings

SHARED = "postgresql+psycopg://u:pw@db/certrail"
OWN = "sqlite:////data/gateway.db"


@pytest.mark.parametrize(
    ("name", "environ", "expected"),
    [
        ("nothing set: the service's own file", {}, "sqlite:///var/gateway.db"),
        ("the shared database", {"CERTRAIL_DB_URL": SHARED}, SHARED),
        ("the service's own wins over the shared", {"CERTRAIL_DB_URL": SHARED, "CERTRAIL_GATEWAY_DB_URL": OWN}, OWN),
        ("the service's own alone", {"CERTRAIL_GATEWAY_DB_URL": OWN}, OWN),
        ("another service's own is not ours", {"CERTRAIL_ISSUER_DB_URL": OWN}, "sqlite:///var/gateway.db"),
        ("an empty value counts as unset", {"CERTRAIL_GATEWAY_DB_URL": "", "CERTRAIL_DB_URL": SHARED}, SHARED),
    ],
)
def test_resolution_order(name: str, environ: dict[str, str], expected: str) -> None:  # noqa: ARG001 - the case's name
    assert service_database_url("gateway", environ) == expected


def test_every_service_defaults_to_its_own_file() -> None:
    assert {s: d.url for s, d in service_databases({}).items()} == {s: f"sqlite:///var/{s}.db" for s in DATABASE_OWNERS}
    assert len(distinct_databases(service_databases({}))) == 4


def test_one_shared_database_is_migrated_once() -> None:
    [only] = distinct_databases(service_databases({"CERTRAIL_DB_URL": SHARED}))
    assert only.services == DATABASE_OWNERS
    mixed = distinct_databases(service_databases({"CERTRAIL_DB_URL": SHARED, "CERTRAIL_AUDITOR_DB_URL": OWN}))
    assert [d.services for d in mixed] == [("gateway", "issuer", "deployer"), ("auditor",)]


def test_an_unknown_service_is_refused() -> None:
    with pytest.raises(ValueError, match="no service 'console'"):
        service_database_url("console", {})


def test_the_other_fields_stay_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTRAIL_DB_BUSY_TIMEOUT_MS", "1234")
    monkeypatch.setenv("CERTRAIL_ISSUER_DB_URL", OWN)
    settings = DatabaseSettings.for_service("issuer")
    assert (settings.url, settings.busy_timeout_ms) == (OWN, 1234)


def test_a_services_settings_open_its_own_database(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CERTRAIL_DB_URL", *(f"CERTRAIL_{s.upper()}_DB_URL" for s in DATABASE_OWNERS)):
        monkeypatch.delenv(name, raising=False)
    assert GatewaySettings().db.url == "sqlite:///var/gateway.db"
    monkeypatch.setenv("CERTRAIL_DB_URL", SHARED)
    monkeypatch.setenv("CERTRAIL_AUDITOR_DB_URL", OWN)
    assert (GatewaySettings().db.url, AuditorSettings().db.url) == (SHARED, OWN)
    assert GatewaySettings(db=DatabaseSettings(url=OWN)).db.url == OWN  # a test's own settings win


def test_the_same_sqlite_file_by_a_relative_and_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert same_database("sqlite:///var/gateway.db", f"sqlite:///{tmp_path}/var/gateway.db")
    assert not same_database("sqlite:///var/gateway.db", "sqlite:///var/issuer.db")


def test_certrail_up_gives_each_service_a_file_in_its_var_dir(tmp_path: Path) -> None:
    assert sqlite_urls(tmp_path) == {s: f"sqlite:///{tmp_path}/{s}.db" for s in DATABASE_OWNERS}


def test_certrail_up_passes_each_service_its_own_file_or_the_shared_database(tmp_path: Path) -> None:
    from services.cli.stack_cmd import database_env, services_env

    own = database_env({s: DatabaseSettings(url=url) for s, url in sqlite_urls(tmp_path).items()})
    assert own["deployer"] == {"CERTRAIL_DEPLOYER_DB_URL": f"sqlite:///{tmp_path}/deployer.db"}
    assert "CERTRAIL_DB_URL" not in services_env(tmp_path, "127.0.0.1:9092", "certrail", None)
    assert services_env(tmp_path, "127.0.0.1:9092", "certrail", SHARED)["CERTRAIL_DB_URL"] == SHARED


def test_certrail_up_asks_for_a_split_of_the_shared_file_of_an_earlier_run(tmp_path: Path) -> None:
    from services.cli.stack_cmd import unsplit_database

    assert unsplit_database(tmp_path) is None  # a fresh var dir
    (tmp_path / "certrail.db").write_bytes(b"")
    assert unsplit_database(tmp_path) == tmp_path / "certrail.db"
    (tmp_path / "gateway.db").write_bytes(b"")  # split (the source stays): the services' own files are used
    assert unsplit_database(tmp_path) is None


def test_the_stacks_postgresql_database_gives_each_service_its_schema_or_stays_shared_if_made_before(
        tmp_path: Path) -> None:
    url = "postgresql+psycopg://certrail:pw@127.0.0.1:5432/certrail_0123456789ab"
    assert postgres_urls(tmp_path) is None and database_urls(tmp_path) == sqlite_urls(tmp_path)
    (tmp_path / "database.json").write_text(json.dumps({"url": url, "server": url, "schemas": True}))
    urls = postgres_urls(tmp_path)
    assert urls == {s: f"{url}?options=-csearch_path%3D{s}" for s in DATABASE_OWNERS} == database_urls(tmp_path)
    assert len(distinct_databases({s: DatabaseSettings(url=u) for s, u in urls.items()})) == 4  # each migrated
    assert make_url(urls["issuer"]).query["options"] == "-csearch_path=issuer" and stored_url(tmp_path) == url
    # a database `certrail up` made before the schemas: the services keep sharing it
    (tmp_path / "database.json").write_text(json.dumps({"url": url, "server": url}))
    assert postgres_urls(tmp_path) == dict.fromkeys(DATABASE_OWNERS, url)
