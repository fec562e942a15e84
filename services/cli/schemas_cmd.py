"""`certrail schemas export|check`."""

from __future__ import annotations

from pathlib import Path

import typer

from services.common.contracts.schema_export import drift, export

app = typer.Typer(no_args_is_help=True)

DEFAULT_DIR = Path("schemas")


@app.command("export")
def export_cmd(
    out: Path = typer.Option(DEFAULT_DIR, "--out", help="Directory to write the JSON Schema and AsyncAPI files into."),
) -> None:
    """Write one JSON Schema per message type and version, and asyncapi.json."""
    names = export(out)
    typer.echo(f"wrote {len(names)} files to {out}/")


@app.command("check")
def check_cmd(
    directory: Path = typer.Option(DEFAULT_DIR, "--dir", help="Directory holding the committed schemas."),
) -> None:
    """Exit non-zero when the files in DIR differ from the message models."""
    problems = drift(directory)
    if problems:
        for problem in problems:
            typer.echo(problem, err=True)
        typer.echo("schemas/ is out of date: run `certrail schemas export`", err=True)
        raise typer.Exit(1)
    typer.echo(f"{directory}/ matches the message models")
