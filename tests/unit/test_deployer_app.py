"""The deployer app as wired by create_app, on FastStream's in-memory broker: once the
connector's pin (ConnectorCreated) and the accepted request (RequestAccepted) came by on
certrail.events.gateway, a CertificateIssued on certrail.events.issuer is installed on a bound
file target (real files) and CertificateDeployed comes out on certrail.events.deployer; a
ProvisionCertificate yields a signed request with no
private key in it."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from faststream.kafka import TestKafkaBroker
from pydantic import SecretStr

from services.common.connectors.secretbox import generate_key
from services.common.contracts.admin import AdminOutcome, ConnectorCreated
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import ProvisionCertificate
from services.common.contracts.envelope import decode, encode, make_event
from services.common.contracts.events import CertificateDeployed, CertificateIssued, RequestAccepted
from services.common.contracts.fields import KeyAlgorithm, RequestKind
from services.common.contracts.identity import issuance_id
from services.common.contracts.requests import IssueRequested
from services.common.db import write_session
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.deployer import store
from services.deployer.app import create_app
from services.deployer.keys import deployer_box
from services.deployer.settings import DeployerSettings
from services.deployer.targets.base import public_key_sha256
from services.deployer.targets.config import TargetKind
from tests.deployer_support import MiniCA
from tests.unit.examples import NOW


async def test_create_app_deploys_and_provisions(tmp_path: Path) -> None:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    upgrade(db)
    settings = DeployerSettings(db=db, http_port=0, keys=SecretStr(generate_key()), request_key=SecretStr("r" * 40))
    _app, runtime = create_app(settings)
    with write_session(runtime.engine) as session:
        store.add_target(session, deployer_box(settings), "files", TargetKind.FILE, {"dir": str(tmp_path / "certs")}, {}, NOW)
        store.bind(session, "web", "files", NOW)

    ca = MiniCA()
    certificate, _key = ca.leaf(["app.unit.test"])
    cert = x509.load_pem_x509_certificate(certificate.encode())
    issued = CertificateIssued(
        issuance_id=issuance_id("app-1", 1), certificate_id="app-1", request_id="req-app", connector="sim", profile="web",
        serial=format(cert.serial_number, "x"), certificate=certificate, chain=list(ca.chain), subject="CN=app.unit.test",
        issuer="CN=certrail test issuing CA", sans=["dns:app.unit.test"], not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc, public_key_sha256=public_key_sha256(cert),
    )
    provision = ProvisionCertificate(certificate_id="bot-app", request_id="prov-app", profile="bots", connector="sim",
                                     key_algorithm=KeyAlgorithm.EC_P384, sans=["dns:bot.unit.test"])
    events: list[bytes] = []
    requests: list[bytes] = []

    @runtime.broker.subscriber("certrail.events.deployer", group_id="observer-events")
    async def on_event(body: Any) -> None:
        events.append(body if isinstance(body, bytes) else json.dumps(body).encode())

    @runtime.broker.subscriber("certrail.requests", group_id="observer-requests")
    async def on_request(body: Any) -> None:
        requests.append(body if isinstance(body, bytes) else json.dumps(body).encode())

    pin = ConnectorCreated(actor="admin", outcome=AdminOutcome.SUCCEEDED, connector="sim",
                           change={"pinned_ca_sha256": ca.issuing.fingerprint(hashes.SHA256()).hex()})
    accepted = RequestAccepted(request_id="req-app", requester="ci", kind=RequestKind.ISSUE, certificate_id="app-1",
                               profile="web", connector="sim")
    async with TestKafkaBroker(runtime.broker):  # what the service publishes
        # the pin from the issuer's connector event (decision 0034), the acceptance from the gateway's
        for fact, key, topic in ((pin, b"sim", "certrail.events.issuer"), (accepted, b"app-1", "certrail.events.gateway")):
            await runtime.deliver(topic, encode(make_event(fact, id=str(uuid.uuid4()), source="/t", time=NOW)), key)
        await runtime.deliver("certrail.events.issuer",
                              encode(make_event(issued, id=str(uuid.uuid4()), source="/t", time=NOW, subject="app-1")), b"app-1")
        await runtime.deliver("certrail.provisioning",
                              encode(make_event(provision, id=str(uuid.uuid4()), source="/t", time=NOW, subject="bot-app")),
                              b"bot-app")

    deployed = [decode(raw, CATALOG).data for raw in events]
    deployed = [d for d in deployed if isinstance(d, CertificateDeployed)]
    assert [(d.target.name, d.verified_serial) for d in deployed] == [("files", issued.serial)]
    current = tmp_path / "certs" / "current"
    assert (current / "cert.pem").read_text() == certificate
    assert stat.S_IMODE((current / "cert.pem").stat().st_mode) == 0o644
    (request_raw,) = requests
    request = decode(request_raw, CATALOG).data
    assert isinstance(request, IssueRequested) and request.requester == "certrail-deployer" and request.auth is not None
    assert b"PRIVATE KEY" not in request_raw
    assert runtime.registry.get_sample_value("certrail_deployer_keys_generated_total", {"algorithm": "EC-P384"}) == 1
    runtime.engine.dispose()
