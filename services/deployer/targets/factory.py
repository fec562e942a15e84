"""A `DeploymentTarget` from a stored `TargetSpec`."""

from __future__ import annotations

from services.deployer.store import TargetSpec
from services.deployer.targets.base import Bundle, DeploymentTarget
from services.deployer.targets.config import TargetKind
from services.deployer.targets.files import FileTarget
from services.deployer.targets.localfs import LocalFileSystem
from services.deployer.targets.nginx import NginxTarget
from services.deployer.targets.ssh import SshTarget
from services.deployer.targets.webhook import WebhookTarget


def build_target(spec: TargetSpec, *, previous: Bundle | None = None, fs: LocalFileSystem | None = None) -> DeploymentTarget:
    """``fs``: the local disk of the file and nginx targets, shared by the targets of a process so that the
    installs of a batch are grouped (targets/localfs.py; None: one of their own)."""
    if spec.kind is TargetKind.FILE:
        return FileTarget(spec.name, spec.config, fs)
    if spec.kind is TargetKind.NGINX:
        return NginxTarget(spec.name, spec.config, fs)
    if spec.kind is TargetKind.WEBHOOK:
        return WebhookTarget(spec.name, spec.config, spec.secrets["hmac_secret"], previous=previous)
    if spec.kind is TargetKind.SSH:
        return SshTarget(spec.name, spec.config, spec.secrets["client_key"])
    raise ValueError(f"unknown target kind {spec.kind}")
