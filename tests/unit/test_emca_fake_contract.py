"""The fake emCA connection passes the same contract as the real client (tests/emca_contract.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common.emca.fake import FakeEmca
from services.common.emca.types import EmcaConnection, EmcaVersion
from tests.emca_contract import EmcaConnectionContract

USERS = {EmcaVersion.V4_0_17: "app-v4017", EmcaVersion.V4_2_3: "app-v423", EmcaVersion.V4_2_4: "app-v424"}


class FakeDriver:
    issuing_ca = "Fake Issuing CA P-256"
    profile = "TLS Server"
    manual_profile = "TLS Server Manual"
    subscriber_id = "SUB-0001"

    def __init__(self, emca: FakeEmca, username: str) -> None:
        self.emca, self.username = emca, username

    def approve(self, request_id: str) -> None:
        self.emca.approve(request_id)

    def reject(self, request_id: str, reason: str) -> None:
        self.emca.reject(request_id, reason)

    def set_down(self, down: bool) -> None:
        self.emca.faults.down = down

    def rate_limit(self, retry_after_s: int) -> None:
        self.emca.faults.rate_limit_retry_after = float(retry_after_s)

    def server_errors(self, status: int) -> None:
        self.emca.faults.server_error = status

    def clear_faults(self) -> None:
        self.emca.faults.down = False
        self.emca.faults.rate_limit_retry_after = None
        self.emca.faults.server_error = None

    def rotate_credentials(self) -> None:
        self.emca.rotate_credentials(self.username)


@pytest.fixture(scope="module")
def emca() -> FakeEmca:
    return FakeEmca()


class TestFakeEmcaConnection(EmcaConnectionContract):
    @pytest.fixture(params=list(EmcaVersion), ids=str)
    def version(self, request: pytest.FixtureRequest) -> EmcaVersion:
        return EmcaVersion(request.param)

    @pytest.fixture
    def driver(self, emca: FakeEmca, version: EmcaVersion) -> FakeDriver:
        return FakeDriver(emca, USERS[version])

    @pytest.fixture
    async def connection(self, emca: FakeEmca, version: EmcaVersion) -> AsyncIterator[EmcaConnection]:
        connection = emca.connect(emca.endpoint_for(USERS[version]))
        yield connection
        await connection.aclose()


async def test_the_fake_is_an_emca_connection_and_counts_issuances(emca: FakeEmca) -> None:
    from tests.emca_contract import make_csr

    connection = emca.connect(emca.endpoint_for("app-v423"))
    assert isinstance(connection, EmcaConnection)
    for _ in range(2):
        await connection.submit_csr(
            csr_pem=make_csr("count.example.com")[0], profile_name="TLS Server", subscriber_id="SUB-0001", application_id="app-1"
        )
    assert emca.issued_by_application_id["app-1"] == 2  # 4.2.x: no dedupe
