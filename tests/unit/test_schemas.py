"""schemas/ is generated from the models; a drift between them fails here.
Upstream teams validate against these files, so the files must agree with the
models on valid and invalid messages alike."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource

from services.common.contracts.catalog import ALL_TYPES
from services.common.contracts.envelope import Message, encode, make_event
from services.common.contracts.schema_export import ASYNCAPI_FILE, drift, export, schema_file_name
from tests.unit.examples import CERT_ID, NOW, examples

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES = examples()


def test_committed_schemas_match_the_models() -> None:
    problems = drift(SCHEMAS)
    assert problems == [], "schemas/ drifted from the models; run `certrail schemas export`: " + ", ".join(problems)


def test_drift_is_detected(tmp_path: Path) -> None:
    export(tmp_path)
    assert drift(tmp_path) == []
    victim = tmp_path / schema_file_name(ALL_TYPES[0])
    victim.write_text(victim.read_text().replace('"additionalProperties": false', '"additionalProperties": true', 1))
    (tmp_path / "io.certrail.retired.v1.json").write_text("{}")
    (tmp_path / ASYNCAPI_FILE).unlink()
    assert sorted(drift(tmp_path)) == sorted(
        [f"changed: {victim.name}", f"missing: {ASYNCAPI_FILE}", "stale: io.certrail.retired.v1.json"]
    )


def _validator(cls: type[Message]) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / schema_file_name(cls)).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=Registry().with_resource(schema["$id"], Resource.from_contents(schema)))


@pytest.mark.parametrize("cls", ALL_TYPES, ids=[c.__name__ for c in ALL_TYPES])
def test_schema_file_accepts_valid_and_rejects_invalid_messages(cls: type[Message]) -> None:
    validator = _validator(cls)
    body = json.loads(encode(make_event(EXAMPLES[cls], id="e-1", source="/t", time=NOW, subject=CERT_ID)))
    validator.validate(body)
    for mutate in (
        lambda b: b["data"].update(unexpected=True),
        lambda b: b.update(type="io.certrail.other.v1"),
        lambda b: b.pop("specversion"),
        lambda b: b["data"].pop(next(n for n, f in cls.model_fields.items() if f.is_required())),
    ):
        broken = json.loads(json.dumps(body))
        mutate(broken)
        assert list(validator.iter_errors(broken)), f"{cls.__name__}: schema accepted {broken}"


def test_asyncapi_document_names_every_topic_and_message() -> None:
    doc = json.loads((SCHEMAS / ASYNCAPI_FILE).read_text())
    assert doc["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {
        "certrail.requests",
        "certrail.commands.{connector}",
        "certrail.provisioning",
        "certrail.events.gateway",
        "certrail.events.issuer",
        "certrail.events.deployer",
        "certrail.deadletter",
        "certrail.audit.checkpoints",
    }
    messages = doc["components"]["messages"]
    assert {m["name"] for m in messages.values()} == {cls.TYPE for cls in ALL_TYPES}
    for message in messages.values():
        ref = message["payload"]["$ref"]
        assert (SCHEMAS / ref.removeprefix("./")).is_file(), ref
    for op in doc["operations"].values():
        channel = op["channel"]["$ref"].removeprefix("#/channels/")
        assert channel in doc["channels"]
    by_address = {c["address"]: set(c["messages"]) for c in doc["channels"].values()}
    for cls in ALL_TYPES:  # each message on exactly its producer's channel
        holding = {address for address, names in by_address.items() if cls.__name__ in names}
        assert holding == {f"certrail.{cls.CHANNEL}" if cls.CHANNEL != "commands" else "certrail.commands.{connector}"}
