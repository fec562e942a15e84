"""Who changes the configuration (the admin events' ``actor``): `Actor` (services/common/admin_outbox.py)
and the CLI's name for it."""

from __future__ import annotations

import getpass
import re

from services.common.admin_outbox import Actor
from services.common.contracts.identity import IDENTITY_PATTERN

__all__ = ["Actor", "cli_actor_name"]


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
