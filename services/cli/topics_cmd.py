"""`certrail topics ensure`: create or reconcile certrail's Kafka topics.

The cluster comes from the ``CERTRAIL_KAFKA_*`` environment (`KafkaSettings`); on an
authenticated cluster, as the ``admin`` principal (after `certrail up`:
``set -a; . var/kafka/admin.env; set +a``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from services.common.contracts.topics import Topics
from services.common.kafka_config import KafkaConfigError
from services.common.settings import KafkaSettings
from services.common.topics_admin import DEFAULT_PARTITIONS, DEFAULT_RETENTION_MS, TopicAdminError, ensure_topics

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.callback()
def topics() -> None:
    """certrail's Kafka topics (cluster from the CERTRAIL_KAFKA_* environment)."""


@app.command()
def ensure(
    partitions: Annotated[int, typer.Option(min=1, help="Partitions per topic (existing topics only grow).")] = (
        DEFAULT_PARTITIONS
    ),
    retention_ms: Annotated[
        int, typer.Option(min=-1, help="retention.ms of every topic; -1 keeps records forever (default 10 years).")
    ] = DEFAULT_RETENTION_MS,
    min_insync_replicas: Annotated[
        int | None, typer.Option(min=1, help="Default: min(2, replication factor).")
    ] = None,
    replication_factor: Annotated[int | None, typer.Option(min=1, help="Default: min(3, brokers).")] = None,
    connector: Annotated[
        list[str] | None,
        typer.Option("--connector", help="Also the command topic of this emCA connector (repeatable)."),
    ] = None,
) -> None:
    """Create missing topics and bring existing ones to the asked partitions and configs."""
    try:
        settings = KafkaSettings()
        topics = Topics(settings.topic_prefix)
        names = [*topics.fixed(), *(topics.commands(c) for c in connector or [])]
    except (ValidationError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from exc
    try:
        report = asyncio.run(
            ensure_topics(
                settings,
                names,
                partitions=partitions,
                replication_factor=replication_factor,
                retention_ms=retention_ms,
                min_insync_replicas=min_insync_replicas,
            )
        )
    except (KafkaError, KafkaConfigError, TopicAdminError, ValueError) as exc:
        message = f"error: cannot ensure topics on {settings.bootstrap_servers}: {exc}"
        typer.secho(message, fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    for name in report.created:
        typer.echo(f"created   {name}")
    for name in report.updated:
        typer.echo(f"updated   {name}: {'; '.join(report.changes[name])}")
    for name in report.unchanged:
        typer.echo(f"unchanged {name}")
    typer.echo(report.summary())
