"""Helpers for tests against the emCA simulator: the credentials it writes for its registered
applications, an endpoint and a connector spec from them, and a driver of its admin API."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from pydantic import SecretBytes, SecretStr

from emca_sim.config import ProfileConfig, SimConfig
from emca_sim.server import SimServer
from services.common.connectors.models import ConnectorSecrets, ConnectorSpec
from services.common.emca.types import EmcaEndpoint, EmcaVersion

USERS = {EmcaVersion.V4_0_17: "certrail-v4017", EmcaVersion.V4_2_3: "certrail-v423", EmcaVersion.V4_2_4: "certrail-v424"}
ISSUING_CA = "certrail Sim Issuing CA P-256"
#: the certificate profile of `short_lived_config`
SHORT_PROFILE = "TLS Server Short"
VERSIONS = pytest.mark.parametrize("version", list(EmcaVersion), ids=str)


def short_lived_config(validity_seconds: int = 90) -> SimConfig:
    """The default simulator configuration plus the profile `SHORT_PROFILE` ("TLS Server Short", id 1901,
    on the P-256 issuing CA) whose leaves are valid ``validity_seconds`` (for renewal tests)."""
    defaults = SimConfig()
    short = ProfileConfig(name=SHORT_PROFILE, profile_id="1901", issuing_ca=ISSUING_CA, validity_seconds=validity_seconds)
    return defaults.model_copy(update={"profiles": (*defaults.profiles, short)})


def sim_credentials(sim: SimServer, version: EmcaVersion) -> dict[str, Any]:
    app_dir = sim.data_dir / "applications" / USERS[version]
    creds = json.loads((app_dir / "credentials.json").read_text())
    creds["dir"] = app_dir
    return creds


def sim_endpoint(sim: SimServer, version: EmcaVersion) -> EmcaEndpoint:
    """The endpoint as credentials.json says now (a rotation rewrites it)."""
    creds = sim_credentials(sim, version)
    extra: dict[str, Any] = {"client_id": creds.get("client_id")}
    if version is EmcaVersion.V4_0_17:
        extra = {"aes_key": (creds["dir"] / creds["aes_key_file"]).read_text().strip(),
                 "pfx": (creds["dir"] / creds["pfx_file"]).read_bytes(), "pfx_password": creds["pfx_password"]}
    return EmcaEndpoint(version=version, base_url=sim.endpoints.api_url, username=creds["username"], password=creds["password"],
                        ca_bundle_pem=(sim.data_dir / "tls-ca.pem").read_text(), **extra)


def sim_spec(sim: SimServer, version: EmcaVersion, name: str, **overrides: Any) -> ConnectorSpec:
    endpoint = sim_endpoint(sim, version)
    secrets: dict[str, Any] = {"password": SecretStr(overrides.pop("password", endpoint.password))}
    if version is EmcaVersion.V4_0_17:
        assert endpoint.pfx is not None and isinstance(endpoint.aes_key, str)
        secrets |= {"aes_key": SecretStr(endpoint.aes_key), "pfx": SecretBytes(endpoint.pfx),
                    "pfx_password": SecretStr(endpoint.pfx_password or "")}
    else:
        secrets["client_id"] = SecretStr(endpoint.client_id or "")
    values: dict[str, Any] = {"name": name, "version": version, "base_url": endpoint.base_url, "username": endpoint.username,
                              "issuing_ca": ISSUING_CA, "subscriber_id": "SUB-0001", "default_profile": "TLS Server",
                              "ca_bundle_pem": endpoint.ca_bundle_pem}
    values.update(overrides)
    return ConnectorSpec.model_validate({**values, "secrets": ConnectorSecrets.model_validate(secrets)})


class SimDriver:
    issuing_ca = ISSUING_CA
    profile = "TLS Server"
    manual_profile = "TLS Server Manual"
    subscriber_id = "SUB-0001"

    def __init__(self, admin: httpx.Client, username: str) -> None:
        self.admin, self.username = admin, username

    def _post(self, path: str, body: dict[str, Any] | None = None) -> None:
        self.admin.post(path, json=body or {}).raise_for_status()

    def approve(self, request_id: str) -> None:
        self._post(f"/admin/pending/{request_id}/approve")

    def reject(self, request_id: str, reason: str) -> None:
        self._post(f"/admin/pending/{request_id}/reject", {"reason": reason})

    def set_down(self, down: bool) -> None:
        self._post("/admin/faults", {"down": down})

    def rate_limit(self, retry_after_s: int) -> None:
        self._post("/admin/faults", {"rate_limit": {"rate": 1.0, "retry_after_s": retry_after_s}})

    def server_errors(self, status: int) -> None:
        self._post("/admin/faults", {"error_rate": 1.0, "error_status": status})

    def clear_faults(self) -> None:
        self.admin.delete("/admin/faults").raise_for_status()

    def rotate_credentials(self) -> None:
        self._post(f"/admin/applications/{self.username}/rotate-credentials")
