"""Input offsets Faust skipped: noticed per partition, fetched again, processed in order.

Why this exists: right after a rebalance, faust-streaming (0.15.3) can hand the agent a
partition's messages with a hole in them — stale-generation messages skipped *and
acknowledged*, copies fetched again after the seek dropped as already read (see
``stream_app/kafka/stale_acks.py``, which fixes both in the worker's consumer, and
faust-streaming issues #216, #221 and #312 for the family of races). The lost event was never
applied, never dead-lettered, and the consumer lag says 0. This guard is the check behind that
fix: it sees any hole a later record of the partition reveals, whatever caused it.

The guard keeps the next expected offset of each input partition this worker
processes. A micro-batch whose offsets for a partition jump past it has a hole;
:func:`fetch_range` reads the missing offsets straight from the broker with a
group-less consumer, and the worker processes them before the batch's own
events of that partition, in offset order (users live in one partition, so the
order within a partition is each user's order).

Expected offsets survive a rebalance only for partitions this worker kept
through it: generation ``g + 1`` directly after ``g``, the partition assigned in
both, so nobody else consumed it in between. Otherwise the partition expects the
offset the consumer's seek put it at in this generation (the group's committed
offset, :meth:`OffsetGuard.anchor`), so a hole right at the start of a newly
assigned partition is seen too; where that is unknown, its first batch starts
the expectation. A hole that was legitimately empty (offsets
of transaction markers, compacted records) costs one fetch that returns nothing.
A hole at a partition's end has no later record to reveal it: :meth:`OffsetGuard.unprocessed`
finds offsets the consumer fetched (its position is past them) that nobody processed for
``STALLED_S`` while no stream held any message of the partition; the worker reads the range
(:func:`fetch_range`) and, if it holds records, seeks the partition back so they come through
the stream again (a range of transaction markers only holds none: the expectation moves on).
Offsets the consumer skipped on purpose (a record batch it cannot decode,
``stream_app/kafka/undecodable.py``) are registered with :meth:`OffsetGuard.skip` and are
never a hole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from stream_app.core.records import RawRecord
from stream_app.core.settings import Settings
from stream_app.kafka.kafka_connection import client_config

log = logging.getLogger("ripple.worker")

FETCH_TIMEOUT_S = 30.0
STALLED_S = 10.0
"""How long fetched offsets may stay unprocessed, with no stream holding any, before they are read again."""


@dataclass
class OffsetGuard:
    """Next expected input offset per partition, and the holes a batch reveals."""

    expected: dict[int, int] = field(default_factory=dict)
    generation: int | None = None
    skipped: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    """Per partition, offset ranges ``[start, end)`` skipped on purpose (undecodable batches): never holes."""
    stalls: dict[int, tuple[int, int, float]] = field(default_factory=dict)
    """Per partition: expectation and position that stand still, and since when (:meth:`unprocessed`)."""

    def on_assigned(self, partitions: Iterable[int], generation: int) -> None:
        """Keep expectations only for partitions held without interruption (generation g -> g + 1)."""
        kept = self.generation is not None and generation == self.generation + 1
        held = set(partitions)
        self.expected = {p: o for p, o in self.expected.items() if kept and p in held}
        self.generation = generation

    def anchor(self, offsets: dict[int, int]) -> None:
        """Partitions without an expectation expect these offsets (where the consumer's seek put them).

        >>> guard = OffsetGuard({0: 10})
        >>> guard.anchor({0: 3, 1: 40})
        >>> guard.holes([RawRecord(b"", partition=1, offset=42)])
        [(1, 40, 42)]
        """
        for partition, offset in offsets.items():
            self.expected.setdefault(partition, offset)

    def skip(self, partition: int, start: int, end: int) -> None:
        """Offsets ``start <= offset < end`` of ``partition`` were skipped on purpose: no hole, no refetch.

        >>> guard = OffsetGuard({0: 10})
        >>> guard.skip(0, 10, 14)
        >>> guard.holes([RawRecord(b"", partition=0, offset=16)])
        [(0, 14, 16)]
        """
        ranges = self.skipped.setdefault(partition, [])
        if (start, end) not in ranges:
            ranges.append((start, end))
            ranges.sort()
            del ranges[:-100]  # the most recent ones matter; a partition's old ranges are behind its commit

    def holes(self, records: Sequence[RawRecord]) -> list[tuple[int, int, int]]:
        """``(partition, first missing offset, first offset present again)`` for each hole."""
        found = []
        expected = dict(self.expected)
        for rec in records:
            if rec.partition < 0 or rec.offset < 0:
                continue
            nxt = expected.get(rec.partition)
            if nxt is not None and rec.offset > nxt:
                found.extend(
                    (rec.partition, a, b) for a, b in _minus(nxt, rec.offset, self.skipped.get(rec.partition, ()))
                )
            expected[rec.partition] = rec.offset + 1 if nxt is None else max(nxt, rec.offset + 1)
        return found

    def unprocessed(self, positions: dict[int, int], busy: set[int], now: float) -> list[tuple[int, int, int]]:
        """``(partition, first, end)`` ranges the consumer fetched but nobody processed for ``STALLED_S``.

        ``positions``: the consumer's position per partition (what it has handed to Faust);
        ``busy``: partitions with messages a stream holds unprocessed. A partition whose expectation
        and position both stood still that long with nothing in a stream, position past the
        expectation, may have had its last messages skipped: no later record will reveal them.

        >>> guard = OffsetGuard({0: 10, 1: 5})
        >>> guard.unprocessed({0: 12, 1: 5}, busy=set(), now=0.0)
        []
        >>> guard.unprocessed({0: 12, 1: 5}, busy=set(), now=STALLED_S)
        [(0, 10, 12)]
        >>> guard.unprocessed({0: 12, 1: 5}, busy=set(), now=STALLED_S + 1)  # the clock starts again
        []
        """
        found = []
        stalls: dict[int, tuple[int, int, float]] = {}
        for partition, position in positions.items():
            nxt = self.expected.get(partition)
            if nxt is None or position <= nxt or partition in busy:
                continue
            missing = _minus(nxt, position, self.skipped.get(partition, ()))
            if not missing:
                continue
            first, end, since = self.stalls.get(partition, (nxt, position, now))
            if (first, end) != (nxt, position):
                since = now
            if now - since >= STALLED_S:
                found.append((partition, missing[0][0], position))
                since = now
            stalls[partition] = (nxt, position, since)
        self.stalls = stalls
        return found

    def settle(self, partition: int, end: int) -> None:
        """Offsets of ``partition`` below ``end`` hold no records (read again, nothing came): expect ``end``."""
        if self.expected.get(partition, end) < end:
            self.expected[partition] = end

    def advance(self, records: Iterable[RawRecord]) -> None:
        """After a batch is processed: expect the offset after the highest one seen per partition."""
        for rec in records:
            if rec.partition >= 0 and rec.offset >= 0:
                self.expected[rec.partition] = max(self.expected.get(rec.partition, 0), rec.offset + 1)


def _minus(start: int, end: int, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[start, end)`` without the (sorted) ``ranges``.

    >>> _minus(0, 10, [(2, 4), (6, 12)])
    [(0, 2), (4, 6)]
    """
    pieces = []
    for a, b in ranges:
        if b <= start or a >= end:
            continue
        if a > start:
            pieces.append((start, a))
        start = max(start, b)
        if start >= end:
            break
    if start < end:
        pieces.append((start, end))
    return pieces


def in_partition_order(records: Sequence[RawRecord], refetched: Sequence[RawRecord]) -> list[RawRecord]:
    """The batch with the refetched records merged in: each partition in offset order, stable."""
    if not refetched:
        return list(records)
    by_partition: dict[int, list[RawRecord]] = {}
    for rec in [*refetched, *records]:
        by_partition.setdefault(rec.partition, []).append(rec)
    merged: list[RawRecord] = []
    for group in by_partition.values():
        merged.extend(sorted(group, key=lambda r: r.offset))
    return merged


async def fetch_range(settings: Settings, topic: str, partition: int, start: int, end: int) -> list[RawRecord]:
    """The records of ``topic``/``partition`` with ``start <= offset < end``, read without a consumer group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    config = {k: v for k, v in client_config(settings).items() if k != "api_version_auto_timeout_ms"}
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **config)
    tp = TopicPartition(topic, partition)
    out: list[RawRecord] = []
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FETCH_TIMEOUT_S
        while loop.time() < deadline and await consumer.position(tp) < end:
            batches = await consumer.getmany(tp, timeout_ms=500, max_records=max(1, end - start))
            for msg in batches.get(tp, []):
                if start <= msg.offset < end:
                    out.append(
                        RawRecord(
                            value=msg.value or b"",
                            key=msg.key,
                            source=topic,
                            partition=partition,
                            offset=msg.offset,
                            timestamp=msg.timestamp / 1000.0 if msg.timestamp is not None else None,
                        )
                    )
        if await consumer.position(tp) < end:
            log.error(
                "input offsets %d..%d of %s[%d] could not be read again within %.0f s; they stay unprocessed",
                start, end - 1, topic, partition, FETCH_TIMEOUT_S,
            )  # fmt: skip
    finally:
        await consumer.stop()
    return out
