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


class Explained(msgspec.Struct, frozen=True):
    """One behaviour's part in a published vector (``operators/explain.py``; the shares of all sum to 1)."""

    item_id: str
    action: str
    share: float


class Recommended(msgspec.Struct, frozen=True):
    """One recommended item: its id and its score (user · item, the score ``ripple evaluate`` ranks by)."""

    item_id: str
    score: float


class UserEmbedding(msgspec.Struct, frozen=True, omit_defaults=True):
    """The published record (docs/architecture.md, Contracts). Consumers dedupe by (user_id, state_version).

    ``head_score``/``head_version`` are present only when a label head is configured
    (``RIPPLE_HEAD_PATH``) and trained on the serving model; otherwise the record has
    exactly the contract's fields.
    """

    user_id: str
    embedding: list[float]
    model_version: str
    state_version: int
    last_event_id: str
    event_ts: float
    computed_at: float
    n_nodes: int
    head_score: float | None = None
    """Probability of the head's positive label for this vector (``ripple train-head``)."""
    head_version: str | None = None
    explanation: list[Explained] | None = None
    """The top ``RIPPLE_EXPLAIN_TOP`` behaviours by share of this vector, largest first (absent when 0)."""
    recommendations: list[Recommended] | None = None
    """The top ``RIPPLE_RECOMMEND_TOP`` items for this vector, best first (absent when 0)."""


MAX_DEAD_LETTER_RAW_BYTES = 256 * 1024
"""A dead letter keeps at most this much of the rejected value: a hostile message of several
MiB, base64-encoded into its dead letter, would exceed the producer's and the broker's
message size limits (1 MiB by default) and fail every publish of its batch."""
MAX_DEAD_LETTER_KEY_BYTES = 1024
"""And at most this much of its key (a valid key is a user_id of at most 256 bytes)."""


class DeadLetter(msgspec.Struct, frozen=True):
    """A rejected message: the raw bytes (base64), the reason and its origin.

    ``raw_base64``/``key_base64`` hold the exact bytes unless ``truncated``: then only their
    first ``MAX_DEAD_LETTER_RAW_BYTES``/``MAX_DEAD_LETTER_KEY_BYTES``; ``raw_size`` is the
    size of the whole value.
    """

    reason: str
    detail: str
    source: str
    partition: int
    offset: int
    raw_base64: str
    key_base64: str | None = None
    raw_size: int = -1
    truncated: bool = False

    @classmethod
    def of(cls, record: RawRecord, reason: str, detail: str) -> DeadLetter:
        value, key = record.value, record.key
        truncated = len(value) > MAX_DEAD_LETTER_RAW_BYTES or (key is not None and len(key) > MAX_DEAD_LETTER_KEY_BYTES)
        return cls(
            reason=reason,
            detail=detail,
            source=record.source,
            partition=record.partition,
            offset=record.offset,
            raw_base64=base64.b64encode(value[:MAX_DEAD_LETTER_RAW_BYTES]).decode("ascii"),
            key_base64=None if key is None else base64.b64encode(key[:MAX_DEAD_LETTER_KEY_BYTES]).decode("ascii"),
            raw_size=len(value),
            truncated=truncated,
        )

    def raw(self) -> bytes:
        return base64.b64decode(self.raw_base64)


json_encoder = msgspec.json.Encoder()
embedding_decoder = msgspec.json.Decoder(UserEmbedding)
dead_letter_decoder = msgspec.json.Decoder(DeadLetter)
