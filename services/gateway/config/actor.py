"""Who changes the configuration (the admin events' ``actor``)."""

from __future__ import annotations

import getpass
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine

from services.common.contracts.identity import IDENTITY_PATTERN


@dataclass
class Actor:
    """Who changes the configuration, through which database: the token identity (HTTP API and
    console), or ``cli:<os user>`` / ``--actor`` (CLI). ``recorded`` collects the outbox rows
    written for this actor's changes, for the door to publish after the commit."""

    engine: Engine
    name: str
    clock: Callable[[], datetime]
    recorded: list[int] = field(default_factory=list)


def cli_actor_name(given: str | None = None) -> str:
    """The CLI's actor: ``given`` (``--actor``) when it is a valid identity (ValueError otherwise),
    else ``cli:<OS user>``."""
    if given is not None:
        if re.fullmatch(IDENTITY_PATTERN, given) is None:
            raise ValueError(f"actor {given[:80]!r} is not an identity (letters, digits and ._:@- ; at most 128)")
        return given
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    user = "".join(c if c.isalnum() and c.isascii() or c in "._@-" else "-" for c in user)[:100] or "unknown"
    return f"cli:{user}"
