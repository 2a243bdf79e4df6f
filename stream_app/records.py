"""Value objects that cross the pipeline boundary: raw input, embeddings, dead letters."""

from __future__ import annotations

import base64

import msgspec


class RawRecord(msgspec.Struct, frozen=True):
    """One undecoded message and where it came from (a Kafka partition/offset or a file line)."""

    value: bytes
    key: bytes | None = None
    source: str = ""
    partition: int = -1
    offset: int = -1
    timestamp: float | None = None
    """When the message entered the system (Kafka record timestamp), for latency."""


class UserEmbedding(msgspec.Struct, frozen=True):
    """The published record (DESIGN.md contract). Consumers dedupe by (user_id, state_version)."""

    user_id: str
    embedding: list[float]
    model_version: str
    state_version: int
    last_event_id: str
    event_ts: float
    computed_at: float
    n_nodes: int


class DeadLetter(msgspec.Struct, frozen=True):
    """A rejected message: the exact raw bytes (base64), the reason and its origin."""

    reason: str
    detail: str
    source: str
    partition: int
    offset: int
    raw_base64: str
    key_base64: str | None = None

    @classmethod
    def of(cls, record: RawRecord, reason: str, detail: str) -> DeadLetter:
        return cls(
            reason=reason,
            detail=detail,
            source=record.source,
            partition=record.partition,
            offset=record.offset,
            raw_base64=base64.b64encode(record.value).decode("ascii"),
            key_base64=None if record.key is None else base64.b64encode(record.key).decode("ascii"),
        )

    def raw(self) -> bytes:
        return base64.b64decode(self.raw_base64)


json_encoder = msgspec.json.Encoder()
embedding_decoder = msgspec.json.Decoder(UserEmbedding)
dead_letter_decoder = msgspec.json.Decoder(DeadLetter)
