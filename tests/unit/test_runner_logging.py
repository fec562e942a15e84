"""Service logging: httpx's line per request sent (an emCA call, a deploy request) shows at debug only."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from services.common.runner import configure_logging


@pytest.fixture
def httpx_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("httpx")
    previous = logger.level
    yield logger
    logger.setLevel(previous)


def _send_one() -> None:
    with httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(204))) as client:
        client.get("https://emca.example/emCA/api/health")


def test_requests_sent_are_not_logged_at_info_but_warnings_are(caplog: pytest.LogCaptureFixture,
                                                              httpx_logger: logging.Logger) -> None:
    with caplog.at_level(logging.INFO):
        configure_logging("info")
        _send_one()
        httpx_logger.warning("pool exhausted")
    assert [(r.name, r.levelno) for r in caplog.records] == [("httpx", logging.WARNING)]


def test_requests_sent_are_logged_at_debug(caplog: pytest.LogCaptureFixture, httpx_logger: logging.Logger) -> None:
    httpx_logger.setLevel(logging.WARNING)  # as an earlier configuration at info left it
    with caplog.at_level(logging.DEBUG):
        configure_logging("debug")
        _send_one()
    assert any(r.name == "httpx" and "HTTP Request: GET https://emca.example/" in r.getMessage() for r in caplog.records)


def test_what_was_built_before_serving_is_frozen_out_of_the_collector() -> None:
    import gc

    from services.common.runner import freeze_startup_objects

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    kept = Cycle()  # a long-lived object: frozen, never traversed again
    garbage = Cycle()  # garbage already: collected first, not frozen
    del garbage
    gc.unfreeze()
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 0
        assert not any(type(o) is Cycle and o is not kept for o in gc.get_objects())
        assert all(o is not kept for o in gc.get_objects())  # the permanent generation is not tracked any more
    finally:
        gc.unfreeze()
    assert any(o is kept for o in gc.get_objects())
