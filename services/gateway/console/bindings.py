"""Configure Bot's deployment targets: the targets to offer (``GET /v1/targets``) and, once the profile is
saved, the bindings changed to match the boxes (``PUT`` / ``DELETE /v1/profiles/{p}/targets/{t}``), only for
the targets the page showed, so that a binding made elsewhere meanwhile is left alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.gateway.console.client import seg
from services.gateway.console.context import Console
from services.gateway.console.forms import Form
from services.gateway.console.sessions import Session


@dataclass(frozen=True)
class Targets:
    listed: list[dict[str, Any]]
    error: str | None  # why they could not be listed (the deployer down: SERVICE_UNAVAILABLE)


async def list_targets(console: Console, session: Session) -> Targets:
    reply = await console.call(session, "GET", "/v1/targets")
    if not reply.ok:
        return Targets([], f"{reply.code}: {reply.message}")
    return Targets(list(reply.body["targets"]), None)


@dataclass
class Outcome:
    bound: list[str] = field(default_factory=list)
    unbound: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    status: int = 200

    def refuse(self, status: int, text: str) -> None:
        self.refusals.append(text)
        self.status = status

    def summary(self) -> str:
        parts = []
        if self.bound:
            parts.append("deploys now to " + ", ".join(self.bound))
        if self.unbound:
            parts.append("no longer to " + ", ".join(self.unbound))
        return (" Targets: " + "; ".join(parts) + ".") if parts else ""


def wanted(form: Form, current: list[str]) -> tuple[list[str], list[str]]:
    """(targets to bind, targets to unbind): the boxes against ``current``, limited to the targets shown."""
    chosen, shown = form.getlist("targets"), form.getlist("shown_targets")
    return [t for t in chosen if t in shown and t not in current], [t for t in current if t in shown and t not in chosen]


async def apply_bindings(console: Console, session: Session, profile: str, form: Form) -> Outcome:
    """Bind and unbind ``profile``'s targets as the form's boxes say; nothing when the page listed no targets."""
    outcome = Outcome()
    if not form.get("targets_listed"):
        return outcome
    path = f"/v1/profiles/{seg(profile)}/targets"
    current = await console.call(session, "GET", path)
    if not current.ok:
        outcome.refuse(current.status, f"The deployment targets were not changed: {current.code}: {current.message}")
        return outcome
    to_bind, to_unbind = wanted(form, [str(t) for t in current.body["targets"]])
    for target in to_bind:
        reply = await console.call(session, "PUT", f"{path}/{seg(target)}")
        if reply.ok:
            outcome.bound.append(target)
        else:
            outcome.refuse(reply.status, f"Binding {profile} to target {target} refused: {reply.code}: {reply.message}")
    for target in to_unbind:
        reply = await console.call(session, "DELETE", f"{path}/{seg(target)}")
        if reply.ok:
            outcome.unbound.append(target)
        else:
            outcome.refuse(reply.status, f"Unbinding {profile} from target {target} refused: {reply.code}: {reply.message}")
    return outcome
