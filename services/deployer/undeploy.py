"""Whether and where a revoked certificate is removed from its targets (issue 20, decision 0028): pure
functions of what the deployer recorded, tested as tables.

A revocation removes nothing unless the certificate's profile says ``on_revocation: remove`` (the deployer's
projection of the profile admin events; unknown or never said: keep) and the revocation asked for no
replacement (``replace=true``: the replacement's deployment takes its place, as a renewal does). A target is
taken back only when the newest serial deployed there is the revoked one: a target serving a newer serial
is left as it is (reported not_serving)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from services.common.contracts.undeploy import OnRevocation
from services.deployer.store import Deployment

DEPLOYED = "deployed"
REMOVED = "removed"  # a deployment row whose serial was taken back after its revocation


@dataclass(frozen=True)
class Removal:
    """What one revocation leads to on the targets."""

    remove: bool  # the profile asks for removal and no replacement was requested
    serving: list[str] = field(default_factory=list)  # targets whose newest deployed serial is the revoked one
    moved_on: list[str] = field(default_factory=list)  # targets that had it but serve a newer serial now

    @property
    def targets(self) -> list[str]:
        return sorted(self.serving + self.moved_on)


def removal_wanted(on_revocation: str | None, replace: bool) -> bool:
    return not replace and on_revocation == OnRevocation.REMOVE.value


def plan_removal(on_revocation: str | None, replace: bool, deployments: Iterable[Deployment], serial: str) -> Removal:
    """``deployments``: the certificate's, oldest first (store.list_deployments). Targets where the serial was
    already taken back (a redelivered revocation) are not listed again; failed deployments never count."""
    if not removal_wanted(on_revocation, replace):
        return Removal(False)
    newest: dict[str, Deployment] = {}
    had: set[str] = set()
    for deployment in deployments:
        if deployment.status not in (DEPLOYED, REMOVED):
            continue
        newest[deployment.target_name] = deployment
        if deployment.serial == serial and deployment.status == DEPLOYED:
            had.add(deployment.target_name)
    serving = sorted(name for name in had if newest[name].serial == serial)
    return Removal(True, serving, sorted(had - set(serving)))
