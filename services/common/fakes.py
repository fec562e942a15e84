"""Fakes for unit tests, beside the real things they stand in for
(`FastStreamPublisher` in kafka_edge)."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.consumer import Outbound


class RecordingPublisher:
    """A `Publisher` that keeps what it was given, in order."""

    def __init__(self) -> None:
        self.sent: list[Outbound] = []

    async def publish(self, messages: Sequence[Outbound]) -> None:
        self.sent.extend(messages)

    def values(self) -> list[bytes]:
        return [m.value() for m in self.sent]
