"""Internal API calls to a service with several instances (services/common/internal_failover.py, decision 0031):
when a call fails over (a table of named cases), that the gateway's clients of the auditor and the deployer ask
the next instance and then stay with the one that answered, that a write which may have been done is not sent
again, and that `certrail up --instances N` gives the gateway every instance's URL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from services.common.internal_api import InternalApiSettings, InternalClient, InternalUnavailable
from services.common.internal_failover import FailoverClient, base_urls, fails_over
from services.common.settings import KafkaSettings
from services.common.stack import Stack
from services.gateway.auditor_api import AuditorApi, AuditorUnavailable
from services.gateway.deployer_api import DeployerApi, DeployerUnavailable, Endpoint
from services.gateway.settings import GatewaySettings

TOKEN = SecretStr("f" * 40)
REQUEST = httpx.Request("GET", "http://a")
CASES: list[tuple[str, str, httpx.HTTPError | None, int | None, bool]] = [
    # name, method, error, status, fails over
    ("refused read", "GET", httpx.ConnectError("refused", request=REQUEST), None, True),
    ("refused write", "POST", httpx.ConnectError("refused", request=REQUEST), None, True),
    ("connect timeout on a write", "PUT", httpx.ConnectTimeout("slow", request=REQUEST), None, True),
    ("no pooled connection free, write", "DELETE", httpx.PoolTimeout("busy", request=REQUEST), None, True),
    ("read timeout of a read", "GET", httpx.ReadTimeout("stalled", request=REQUEST), None, True),
    ("read timeout of a write: maybe done", "POST", httpx.ReadTimeout("stalled", request=REQUEST), None, False),
    ("connection dropped under a write", "PUT", httpx.RemoteProtocolError("gone", request=REQUEST), None, False),
    ("connection dropped under a read", "GET", httpx.RemoteProtocolError("gone", request=REQUEST), None, True),
    ("too many redirects: not an instance's fault", "GET", httpx.TooManyRedirects("loop", request=REQUEST), None, False),
    ("500 of a read", "GET", None, 500, True),
    ("500 of a write: maybe done", "PUT", None, 500, False),
    ("503 of a write: not done", "POST", None, 503, True),
    ("502 of a write", "DELETE", None, 502, True),
    ("an answer", "GET", None, 200, False),
    ("a refusal is an answer", "PUT", None, 409, False),
    ("not found is an answer", "GET", None, 404, False),
    ("the token refused: every instance would", "GET", None, 401, False),
]


@pytest.mark.parametrize(("method", "error", "status", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_when_a_call_goes_to_the_next_instance(method: str, error: httpx.HTTPError | None, status: int | None,
                                               expected: bool) -> None:
    assert fails_over(method, error=error, status=status) is expected


def test_base_urls_are_comma_separated_without_trailing_slashes() -> None:
    assert base_urls(" http://a:1/ , http://b:2") == ("http://a:1", "http://b:2")
    assert base_urls(["http://a:1,http://b:2", "http://c:3/"]) == ("http://a:1", "http://b:2", "http://c:3")
    with pytest.raises(ValueError, match="no base URL"):
        base_urls(" , ")


class Instances:
    """A transport serving instances by host: each either answers (a handler) or is down (refuses connections)."""

    def __init__(self, **handlers: Callable[[httpx.Request], httpx.Response] | None) -> None:
        self.handlers = handlers
        self.asked: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(f"{request.method} {request.url.host}")
        handler = self.handlers[request.url.host]
        if handler is None:
            raise httpx.ConnectError("connection refused", request=request)
        return handler(request)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def answering(status: int, body: object) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json=body)


PAGE = {"certificates": [], "next_offset": None}


async def test_the_auditor_client_asks_the_next_instance_and_stays_with_the_one_that_answered(tmp_path: Path) -> None:
    instances = Instances(auditor1=None, auditor2=answering(200, PAGE))
    settings = GatewaySettings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"), auditor_url="http://auditor1:8083,http://auditor2:8093",
                               internal=InternalApiSettings(token=TOKEN, token_file=tmp_path / "none"))
    api = AuditorApi.from_settings(settings, instances.transport)
    try:
        assert await api.certificates(None, status=None, not_after_before=None, profile=None, connector=None, limit=5) == []
        assert instances.asked == ["GET auditor1", "GET auditor2"]
        assert await api.certificates(None, status=None, not_after_before=None, profile=None, connector=None, limit=5) == []
        assert instances.asked[2:] == ["GET auditor2"]  # the instance that answered last is asked first
        instances.handlers["auditor2"] = None  # now both are down: one failure, each asked once
        with pytest.raises(AuditorUnavailable, match="did not answer"):
            await api.certificate("c1")
        assert instances.asked[3:] == ["GET auditor2", "GET auditor1"]
    finally:
        await api.aclose()


async def test_a_5xx_read_goes_on_and_the_last_answer_is_the_callers(tmp_path: Path) -> None:
    instances = Instances(a=answering(500, {"code": "INTERNAL"}), b=answering(503, {"code": "NOT_READY"}))
    client = InternalClient("http://a,http://b", TOKEN, transport=instances.transport, service="auditor")
    try:
        with pytest.raises(InternalUnavailable, match="answered 503"):
            await client.get_json("/internal/v1/x")
        assert instances.asked == ["GET a", "GET b"]
    finally:
        await client.aclose()


async def test_a_write_that_may_have_been_done_is_not_sent_again() -> None:
    instances = Instances(d1=answering(500, {"code": "INTERNAL", "message": "m"}), d2=answering(201, {"recorded": True}))
    api = DeployerApi(Endpoint(["http://d1", "http://d2"], TOKEN), instances.transport)
    try:
        with pytest.raises(DeployerUnavailable, match="answered 500"):
            await api.report_refusal("bind", target="t", profile="p", actor="root", code="X", message="m", fields=[])
        assert instances.asked == ["POST d1"]
        instances.handlers["d1"] = None  # refused: nothing reached it, so the next one is asked
        assert await api.report_refusal("bind", target="t", profile="p", actor="root", code="X", message="m", fields=[])
        assert instances.asked[1:] == ["POST d1", "POST d2"]
    finally:
        await api.aclose()


async def test_one_instance_behaves_as_before_and_the_log_names_no_token(caplog: pytest.LogCaptureFixture) -> None:
    instances = Instances(only=None)
    client = FailoverClient(["http://only"], headers={"Authorization": f"Bearer {TOKEN.get_secret_value()}"}, timeout_s=1,
                            max_connections=1, transport=instances.transport, service="auditor")
    try:
        with pytest.raises(httpx.ConnectError):
            await client.request("GET", "/internal/v1/x")
    finally:
        await client.aclose()
    assert instances.asked == ["GET only"]
    assert TOKEN.get_secret_value() not in caplog.text


def test_certrail_up_gives_the_gateway_every_instance_of_the_auditor_and_the_deployer(tmp_path: Path) -> None:
    one = Stack(var_dir=tmp_path)
    assert (one.env["CERTRAIL_GATEWAY_AUDITOR_URL"], one.env["CERTRAIL_GATEWAY_DEPLOYER_URL"]) == (
        "http://127.0.0.1:8083", "http://127.0.0.1:8082")
    three = Stack(var_dir=tmp_path, instances=3, port_step=10)
    (gateway, *_) = three.instances_of("gateway")
    assert gateway.env["CERTRAIL_GATEWAY_AUDITOR_URL"] == "http://127.0.0.1:8083,http://127.0.0.1:8093,http://127.0.0.1:8103"
    assert gateway.env["CERTRAIL_GATEWAY_DEPLOYER_URL"] == "http://127.0.0.1:8082,http://127.0.0.1:8092,http://127.0.0.1:8102"
    assert [s.port for s in three.instances_of("auditor")] == three.instance_ports("auditor")
    settings = GatewaySettings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),
                               auditor_url=gateway.env["CERTRAIL_GATEWAY_AUDITOR_URL"])
    assert base_urls(settings.auditor_url) == tuple(three.instance_urls("auditor"))
