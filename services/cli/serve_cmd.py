"""`certrail serve SERVICE`: run one service in the foreground."""

from __future__ import annotations

from enum import StrEnum

import typer


class ServiceName(StrEnum):
    gateway = "gateway"
    issuer = "issuer"
    deployer = "deployer"
    auditor = "auditor"


def serve(service: ServiceName = typer.Argument(..., help="Which service to run.")) -> None:
    """Run one certrail service (settings from CERTRAIL_* environment variables)."""
    if service is ServiceName.gateway:
        from services.gateway.app import main
    elif service is ServiceName.issuer:
        from services.issuer.app import main
    elif service is ServiceName.deployer:
        from services.deployer.app import main
    else:
        from services.auditor.app import main
    main()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
