"""Generates ``schemas/`` from the message models: one JSON Schema (draft
2020-12) per message type and version, describing the whole CloudEvent, and
an AsyncAPI 3.0 document of the topics. Upstream teams build against these
files; a test fails when the committed files drift from the models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.common.contracts.catalog import ALL_TYPES, CHANNELS
from services.common.contracts.envelope import CONTENT_TYPE, TYPE_HEADER, Message, envelope_model

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_FILE = "asyncapi.json"

_CHANNEL_DOCS: dict[str, tuple[str, str]] = {
    # channel -> (address with the default prefix, description)
    "requests": ("certrail.requests", "Certificate requests from upstream systems (signed by the requester)."),
    "commands": (
        "certrail.commands.{connector}",
        "Commands for one emCA connector's issuer; one topic per connector, so one outage never blocks another.",
    ),
    "provisioning": ("certrail.provisioning", "Commands for the deployer's bots (bot-held keys); only the deployer reads them."),
    "events.gateway": ("certrail.events.gateway", "What the gateway did: request outcomes, renewals due, expiry warnings, "
                       "admin actions. Only the gateway writes it (decision 0016)."),
    "events.issuer": ("certrail.events.issuer", "What the issuer did: issuance, revocation, connector status. Only the issuer "
                      "writes it (decision 0016)."),
    "events.deployer": ("certrail.events.deployer", "What the deployer did: deployments and their failures, destroyed bot-held keys. Only the deployer "
                        "writes it (decision 0016)."),
    "deadletter": ("certrail.deadletter", "Records a consumer could not decode or validate, with the reason and the original bytes."),
    "audit.checkpoints": ("certrail.audit.checkpoints", "The auditor's signed hash-chain heads, kept outside the database."),
}

# (operation id, action, channel) from certrail's point of view
_OPERATIONS: list[tuple[str, str, str]] = [
    ("receiveRequests", "receive", "requests"),
    ("sendCommands", "send", "commands"),
    ("receiveCommands", "receive", "commands"),
    ("sendProvisioning", "send", "provisioning"),
    ("receiveProvisioning", "receive", "provisioning"),
    ("sendGatewayEvents", "send", "events.gateway"),
    ("receiveGatewayEvents", "receive", "events.gateway"),
    ("sendIssuerEvents", "send", "events.issuer"),
    ("receiveIssuerEvents", "receive", "events.issuer"),
    ("sendDeployerEvents", "send", "events.deployer"),
    ("receiveDeployerEvents", "receive", "events.deployer"),
    ("sendDeadLetters", "send", "deadletter"),
    ("sendCheckpoints", "send", "audit.checkpoints"),
]


def schema_file_name(cls: type[Message]) -> str:
    return f"{cls.TYPE}.json"


def message_schema(cls: type[Message]) -> dict[str, Any]:
    """The JSON Schema of one message type's whole CloudEvent."""
    body = envelope_model(cls).model_json_schema(mode="validation")
    body.pop("title", None)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": cls.schema_uri(),
        "title": cls.__name__,
        "description": f"{cls.SUMMARY} CloudEvents 1.0, structured JSON mode; schema version {cls.schema_version()}.",
        **body,
    }


def _channel_key(channel: str) -> str:
    return channel.replace(".", "_")


def asyncapi_document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel, classes in CHANNELS.items():
        address, description = _CHANNEL_DOCS[channel]
        entry: dict[str, Any] = {
            "address": address,
            "description": description + " The 'certrail' prefix is configurable (CERTRAIL_KAFKA_TOPIC_PREFIX).",
            "messages": {cls.__name__: {"$ref": f"#/components/messages/{cls.__name__}"} for cls in classes},
        }
        if "{connector}" in address:
            entry["parameters"] = {"connector": {"description": "The emCA connector's name."}}
        channels[_channel_key(channel)] = entry
        for cls in classes:
            messages[cls.__name__] = {
                "name": cls.TYPE,
                "title": cls.__name__,
                "summary": cls.SUMMARY,
                "contentType": CONTENT_TYPE,
                "headers": {
                    "type": "object",
                    "properties": {
                        "content-type": {"type": "string", "const": CONTENT_TYPE},
                        TYPE_HEADER: {
                            "type": "string",
                            "const": cls.TYPE,
                            "description": "The event's type, beside the body (CloudEvents Kafka binding); "
                            "optional, the body's type is authoritative (decision 0010).",
                        },
                    },
                },
                "payload": {"$ref": f"./{schema_file_name(cls)}"},
            }
    operations = {
        op_id: {
            "action": action,
            "channel": {"$ref": f"#/channels/{_channel_key(channel)}"},
            "messages": [
                {"$ref": f"#/channels/{_channel_key(channel)}/messages/{cls.__name__}"} for cls in CHANNELS[channel]
            ],
        }
        for op_id, action, channel in _OPERATIONS
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "certrail",
            "version": "1.0.0",
            "description": "certrail's Kafka topics and messages. Every record is a CloudEvents 1.0 event in "
            "structured JSON mode, keyed by the certificate id, with the extensions correlationid and causationid.",
        },
        "defaultContentType": CONTENT_TYPE,
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generated_files() -> dict[str, str]:
    """File name -> content of everything in ``schemas/``."""
    files = {schema_file_name(cls): render(message_schema(cls)) for cls in ALL_TYPES}
    files[ASYNCAPI_FILE] = render(asyncapi_document())
    return files


def export(directory: Path) -> list[str]:
    """Write ``schemas/`` (removing stale generated files); returns the names written."""
    directory.mkdir(parents=True, exist_ok=True)
    files = generated_files()
    for stale in directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    for name, content in files.items():
        (directory / name).write_text(content, encoding="utf-8")
    return sorted(files)


def drift(directory: Path) -> list[str]:
    """Names of files in ``directory`` that differ from the models (missing, stale or changed)."""
    files = generated_files()
    problems = []
    present = {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()
    for name, content in sorted(files.items()):
        path = directory / name
        if name not in present:
            problems.append(f"missing: {name}")
        elif path.read_text(encoding="utf-8") != content:
            problems.append(f"changed: {name}")
    problems.extend(f"stale: {name}" for name in sorted(present - set(files)))
    return problems
