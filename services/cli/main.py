"""The `certrail` command line. Each command group lives in its own module."""

from __future__ import annotations

import typer

from services.cli import (
    acme_cmd,
    audit_cmd,
    connectors_cmd,
    db_cmd,
    duplicates_cmd,
    emca_sim_cmd,
    kafka_cmd,
    request_cmd,
    schemas_cmd,
    serve_cmd,
    stack_cmd,
    targets_cmd,
    tokens_cmd,
    topics_cmd,
)

app = typer.Typer(
    name="certrail",
    help="certrail: event-driven certificate lifecycle orchestration for emCA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold secrets (database URL, passwords)
)
app.add_typer(kafka_cmd.app, name="kafka", help="The local Apache Kafka broker (KRaft): one node, or a three-node cluster with --brokers 3.")
app.add_typer(topics_cmd.app, name="topics", help="certrail's Kafka topics.")
app.add_typer(schemas_cmd.app, name="schemas", help="JSON Schema and AsyncAPI documents of the messages.")
app.add_typer(db_cmd.app, name="db", help="The SQL database (migrations).")
app.add_typer(
    emca_sim_cmd.app, name="emca-sim", help="The emCA simulator (a real CA over HTTPS, for trials and tests) and its faults."
)
app.add_typer(connectors_cmd.app, name="connectors", help="emCA connectors: create (validated), list, show, test, enable, disable, delete.")
app.add_typer(audit_cmd.app, name="audit", help="The audit log: timelines, verification, replay, export.")
app.add_typer(targets_cmd.app, name="targets", help="Deployment targets of the deployer and their profile bindings.")
app.add_typer(tokens_cmd.app, name="tokens", help="HTTP API tokens: create (printed once), list, revoke.")
app.add_typer(duplicates_cmd.app, name="duplicates", help="Possible duplicate issuances (emCA 4.2.x): list, resolve.")
app.add_typer(acme_cmd.app, name="acme", help="The ACME door: External Account Binding keys (create, list, revoke) and accounts.")
app.add_typer(request_cmd.app, name="request", help="Ask the gateway's HTTP API for certificates: issue, renew, revoke, status.")
serve_cmd.register(app)
stack_cmd.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
