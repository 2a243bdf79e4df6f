"""Record batches the worker's Kafka consumer cannot decode: skipped and reported, never a crash.

aiokafka decodes a fetched record batch lazily, while Faust's consumer thread drains it
(``PartitionRecords._unpack_records`` in ``aiokafka/consumer/fetcher.py``, 0.14). A batch
compressed with a codec whose library is missing raises ``UnsupportedCodecError`` there, a
damaged one ``CorruptRecordException`` (bad CRC, bad record framing) or the codec's own
error. Nothing between that generator and Faust's ``Fetcher`` service catches it: the
fetcher task ends, the worker exits ("We experienced a crash!"), and a restarted worker
meets the same batch at the same offset again — one producer with a codec the workers lack
takes every worker down.

:func:`install` swaps two names of aiokafka's fetcher module for thin wrappers (the rest of
aiokafka is untouched, so its fetch, position and commit logic stay as they are):

- ``MemoryRecords`` → :class:`RawBatches`: the same iteration over a fetch response's
  batches, but each batch comes with its raw bytes;
- ``PartitionRecords`` → :class:`GuardedPartitionRecords`: its batches are
  :class:`GuardedBatch` es. Iterating one never raises: when decoding fails (or the CRC
  does not match), the batch reports an :class:`UndecodableBatch` to :data:`REPORTS` and
  yields nothing more, so aiokafka moves the partition's position to the batch's end as it
  does after every batch, and the records after it are consumed normally.

The worker drains :data:`REPORTS` (``StreamWorker.report_undecodable``): one ERROR log line
naming the cause and the fix, ``ripple_undecodable_batches_total``, ``/healthz`` degraded,
the batch's offsets marked done for Faust's commit and for the offset guard, and a dead
letter holding the raw batch. Records of the batch that were decoded before a failure are
processed; the failure point and everything after it in the batch are skipped.

A batch whose framing is broken (shorter than a record's minimum size) has no known end, so
it cannot be skipped: the partition stops there, reported the same way.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka.consumer import fetcher
from aiokafka.errors import UnsupportedCodecError

from stream_app.core.records import DeadLetter, RawRecord
from stream_app.kafka.compression import AIOKAFKA_LIBRARY, codec_name

MISSING_CODEC = "missing_codec"
"""Dead-letter reason: the batch is compressed with a codec this worker cannot decompress."""
CORRUPT_BATCH = "corrupt_batch"
"""Dead-letter reason: the batch does not decode (CRC mismatch, broken compression or records)."""
E_MISSING_CODEC = (
    "record batch at offsets {first}..{last} of {topic}[{partition}] is compressed with {codec}, which this "
    "worker cannot decompress ({cause}); its {count} record(s) were skipped and the raw batch was dead-lettered "
    "(reason missing_codec). Fix: install {library} in the worker's environment (pinned in pyproject.toml: "
    "pip install -e .) and restart the worker; then send the skipped events again (the dead letter holds the "
    "batch as the broker stored it; the producer can also resend them)."
)
E_CORRUPT_BATCH = (
    "record batch at offsets {first}..{last} of {topic}[{partition}] ({codec}) cannot be decoded ({cause}); its "
    "{count} record(s) were skipped and the raw batch was dead-lettered (reason corrupt_batch). The batch is "
    "damaged on the broker or was written by a faulty producer: check the producer client and the broker's log "
    "for that partition, then send the events again."
)
E_UNBOUNDED_BATCH = (
    "record batch at offset {first} of {topic}[{partition}] cannot be framed ({cause}); its end is unknown, so "
    "the partition cannot move past it and stops here. Fix: find the producer that wrote it; skip it by moving "
    "the group's offset past it (kafka-consumer-groups.sh --reset-offsets --to-offset) and restart the worker."
)
LOG_OVERHEAD = 12  # base offset (int64) + batch length (int32): the bytes before the length counts
log = logging.getLogger("ripple.worker")


@dataclass(frozen=True)
class UndecodableBatch:
    """One record batch that was skipped because it could not be decoded."""

    topic: str
    partition: int
    first_offset: int
    """First offset skipped (records of the batch before it were decoded and delivered)."""
    next_offset: int
    """Offset after the batch (``first_offset`` when its end is unknown: the partition stops)."""
    reason: str
    codec: str
    cause: str
    raw: bytes
    """The batch's bytes as the broker sent them (empty when its end is unknown)."""

    @property
    def key(self) -> tuple[str, int, int]:
        return self.topic, self.partition, self.first_offset

    @property
    def count(self) -> int:
        """Offsets skipped (the records of the batch from ``first_offset`` on)."""
        return max(0, self.next_offset - self.first_offset)

    def message(self) -> str:
        """The log line and dead-letter detail: what was skipped, why, and the fix."""
        fields = {
            "first": self.first_offset,
            "last": self.next_offset - 1,
            "topic": self.topic,
            "partition": self.partition,
            "codec": self.codec,
            "cause": self.cause,
            "count": self.count,
        }
        if self.next_offset <= self.first_offset:
            return E_UNBOUNDED_BATCH.format(**fields)
        if self.reason == MISSING_CODEC:
            return E_MISSING_CODEC.format(library=AIOKAFKA_LIBRARY.get(self.codec, "the codec's library"), **fields)
        return E_CORRUPT_BATCH.format(**fields)

    def dead_letter(self) -> DeadLetter:
        """Source partition and first skipped offset, the raw batch (truncated beyond the dead-letter limit)."""
        record = RawRecord(
            value=self.raw, key=None, source=self.topic, partition=self.partition, offset=self.first_offset
        )
        return DeadLetter.of(record, self.reason, self.message())


class UndecodableLog:
    """Reports from aiokafka's consumer thread(s), drained by the worker's event loop (thread-safe).

    Reports are kept per batch until drained, so a partition that meets the same batch on
    every fetch does not grow the list.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int, int], UndecodableBatch] = {}
        self.total = 0
        """Reports since the process started (repeats of a batch included)."""

    def report(self, batch: UndecodableBatch) -> None:
        with self._lock:
            self._pending.setdefault(batch.key, batch)
            self.total += 1

    def drain(self) -> list[UndecodableBatch]:
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        return pending


REPORTS = UndecodableLog()
"""Every guarded consumer of this process reports here (the worker's, and the offset guard's refetches)."""


def describe(exc: BaseException) -> str:
    """``Type: message`` (aiokafka's errors already start with their type)."""
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


def reason_of(exc: BaseException) -> str:
    return MISSING_CODEC if isinstance(exc, UnsupportedCodecError) else CORRUPT_BATCH


class GuardedBatch:
    """A record batch whose iteration reports a decoding failure instead of raising it."""

    __slots__ = ("_batch", "_failed", "_owner", "_raw")

    def __init__(self, batch: Any, raw: memoryview, owner: GuardedPartitionRecords) -> None:
        self._batch = batch
        self._raw = raw
        self._owner = owner
        self._failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def validate_crc(self) -> bool:
        # A mismatch is reported here and the batch then yields nothing: aiokafka would raise.
        if not self._batch.validate_crc():
            self._fail("CRC mismatch: the batch's checksum does not match its bytes", CORRUPT_BATCH)
        return True

    def __iter__(self) -> Iterator[Any]:
        if self._failed:
            return
        records: Iterator[Any] | None = None
        while True:
            try:
                if records is None:
                    records = iter(self._batch)  # decompresses the whole batch (aiokafka's Cython batch)
                record = next(records)
            except StopIteration:
                return
            except Exception as exc:  # the codec's own errors too (cramjam, zlib, ...)
                self._fail(describe(exc), reason_of(exc))
                return
            yield record

    def __next__(self) -> Any:  # aiokafka reads a control batch's marker with next()
        return next(self._batch)

    def _fail(self, cause: str, reason: str) -> None:
        self._failed = True
        batch, owner = self._batch, self._owner
        codec_id = getattr(batch, "compression_type", None)
        codec = codec_name(codec_id if codec_id is not None else batch.attributes & 0x07)
        REPORTS.report(
            UndecodableBatch(
                topic=owner._tp.topic,
                partition=owner._tp.partition,
                first_offset=max(owner.next_fetch_offset, batch.base_offset),
                next_offset=batch.next_offset,
                reason=reason,
                codec=codec,
                cause=cause,
                raw=bytes(self._raw),
            )
        )


class _UnboundedBatch:
    """Stands in for a batch that cannot be framed: nothing to validate, no records, no progress."""

    is_control_batch = False
    is_transactional = False
    producer_id = None

    def __init__(self, next_offset: int) -> None:
        self.next_offset = next_offset

    def validate_crc(self) -> bool:
        return True

    def __iter__(self) -> Iterator[Any]:
        return iter(())


class RawBatches:
    """aiokafka's ``MemoryRecords`` over one fetch response, handing out :class:`GuardedBatch` es."""

    def __init__(self, data: bytes) -> None:
        self._records = _AIOKAFKA_RECORDS(data)
        self._data = data
        self._pos = 0
        self._stopped = False
        self.owner: GuardedPartitionRecords | None = None

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())

    def has_next(self) -> bool:
        return not self._stopped and bool(self._records.has_next())

    def next_batch(self) -> Any:
        start = self._pos
        owner = self.owner
        try:
            batch = self._records.next_batch()
        except Exception as exc:
            if owner is None:
                raise
            self._stopped = True
            REPORTS.report(
                UndecodableBatch(
                    topic=owner._tp.topic,
                    partition=owner._tp.partition,
                    first_offset=owner.next_fetch_offset,
                    next_offset=owner.next_fetch_offset,
                    reason=CORRUPT_BATCH,
                    codec="unknown",
                    cause=describe(exc),
                    raw=b"",
                )
            )
            return _UnboundedBatch(owner.next_fetch_offset)
        if batch is None:
            return None
        (length,) = struct.unpack_from(">i", self._data, start + 8)
        self._pos = start + LOG_OVERHEAD + length
        if owner is None:
            return batch
        return GuardedBatch(batch, memoryview(self._data)[start : self._pos], owner)


class GuardedPartitionRecords(fetcher.PartitionRecords):  # type: ignore[misc]
    """aiokafka's ``PartitionRecords`` whose batches are :class:`GuardedBatch` es.

    ``_tp`` and ``next_fetch_offset`` are aiokafka's own attributes: the partition and the
    offset after the last record handed out.
    """

    _tp: Any
    next_fetch_offset: int

    def __init__(self, tp: Any, records: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(records, RawBatches):
            records.owner = self
        super().__init__(tp, records, *args, **kwargs)


_AIOKAFKA_RECORDS = fetcher.MemoryRecords
_install_lock = threading.Lock()


def install() -> bool:
    """Put the guard into aiokafka's fetcher (idempotent); ``False`` if this aiokafka does not fit it."""
    with _install_lock:
        if fetcher.PartitionRecords is GuardedPartitionRecords:
            return True
        if not hasattr(fetcher.PartitionRecords, "_unpack_records"):
            log.warning(
                "aiokafka's fetcher has no PartitionRecords._unpack_records (not 0.14?): undecodable record "
                "batches will stop the worker instead of being skipped and dead-lettered"
            )
            return False
        fetcher.MemoryRecords = RawBatches
        fetcher.PartitionRecords = GuardedPartitionRecords
        return True


def installed() -> bool:
    return fetcher.PartitionRecords is GuardedPartitionRecords
