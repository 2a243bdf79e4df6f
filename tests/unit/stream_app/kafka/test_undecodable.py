"""Undecodable record batches are skipped and reported by aiokafka's own fetcher classes, never raised.

The batches are real Kafka v2 record batches built by aiokafka's batch builder; a missing codec
is made real by taking ``cramjam`` away from ``aiokafka.codec`` (what an environment without it
looks like to aiokafka).
"""

from __future__ import annotations

import asyncio
import struct
import time

import msgspec
import pytest
from aiokafka import codec as aiokafka_codec
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import TopicPartition
from kafka.record.default_records import DefaultRecordBatch as KafkaPythonBatch

from stream_app.core.records import DeadLetter
from stream_app.core.settings import Settings
from stream_app.kafka import undecodable

TP = TopicPartition("events", 2)
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def batch(base_offset: int, n: int, codec: str = "none") -> bytes:
    """A record batch of ``n`` records at ``base_offset``, values ``v<offset>``, keys ``k<offset>``."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=CODECS[codec],
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i in range(n):
        offset = base_offset + i
        builder.append(i, timestamp=1_700_000_000_000, key=b"k%d" % offset, value=b"v%d" % offset * 20, headers=[])
    raw = bytearray(builder.build())
    struct.pack_into(">q", raw, 0, base_offset)  # the broker sets the base offset; the CRC does not cover it
    return bytes(raw)


def consume(data: bytes, fetch_offset: int = 0, check_crcs: bool = True) -> tuple[list, int]:
    """Drain one fetch response the way aiokafka's fetcher does: records, then the next fetch offset."""
    records = fetcher.PartitionRecords(
        TP, fetcher.MemoryRecords(data), None, fetch_offset, None, None, check_crcs, "read_uncommitted"
    )
    got = list(records)
    return got, records.next_fetch_offset


@pytest.fixture(autouse=True)
def guard():
    assert undecodable.install()
    undecodable.REPORTS.drain()
    yield
    undecodable.REPORTS.drain()


@pytest.fixture
def drop_cramjam(monkeypatch):
    """Call it once the test's batches are built: from then on aiokafka has no snappy, lz4 or zstd."""
    return lambda: monkeypatch.setattr(aiokafka_codec, "cramjam", None)


def test_without_the_guard_aiokafka_raises_out_of_the_fetch(drop_cramjam, monkeypatch):
    from aiokafka.errors import UnsupportedCodecError

    data = batch(0, 3) + batch(3, 3, "lz4")
    drop_cramjam()
    monkeypatch.setattr(fetcher, "PartitionRecords", undecodable.GuardedPartitionRecords.__mro__[1])
    monkeypatch.setattr(fetcher, "MemoryRecords", undecodable._AIOKAFKA_RECORDS)
    with pytest.raises(UnsupportedCodecError, match="lz4"):
        consume(data)


@pytest.mark.parametrize("codec", ["snappy", "lz4", "zstd"])
def test_a_batch_with_a_missing_codec_is_skipped_reported_and_the_partition_goes_on(drop_cramjam, codec):
    first, bad, last = batch(0, 3), batch(3, 4, codec), batch(7, 2)
    drop_cramjam()
    got, next_offset = consume(first + bad + last)
    assert [r.offset for r in got] == [0, 1, 2, 7, 8]
    assert next_offset == 9
    (report,) = undecodable.REPORTS.drain()
    assert (report.topic, report.partition, report.first_offset, report.next_offset) == ("events", 2, 3, 7)
    assert (report.reason, report.codec, report.count) == ("missing_codec", codec, 4)
    assert report.raw == bad
    # The raw bytes are the batch itself: a client with the codec reads the skipped events from them.
    assert [r.value for r in KafkaPythonBatch(report.raw)] == [b"v%d" % o * 20 for o in range(3, 7)]
    text = report.message()
    assert f"offsets 3..6 of events[2] is compressed with {codec}" in text
    assert "install cramjam" in text and "restart the worker" in text


def test_with_the_codec_every_record_is_delivered_and_nothing_reported():
    data = batch(0, 3, "zstd") + batch(3, 3, "lz4") + batch(6, 3, "snappy") + batch(9, 3, "gzip")
    got, next_offset = consume(data)
    assert [r.offset for r in got] == list(range(12))
    assert [r.value for r in got] == [b"v%d" % o * 20 for o in range(12)]
    assert next_offset == 12
    assert undecodable.REPORTS.drain() == []


def test_a_crc_mismatch_is_reported_as_corrupt_and_skipped():
    bad = bytearray(batch(3, 3))
    bad[-5] ^= 0xFF  # inside the last record: covered by the CRC
    got, next_offset = consume(batch(0, 3) + bytes(bad) + batch(6, 1))
    assert [r.offset for r in got] == [0, 1, 2, 6]
    assert next_offset == 7
    (report,) = undecodable.REPORTS.drain()
    assert (report.reason, report.first_offset, report.next_offset) == ("corrupt_batch", 3, 6)
    assert "CRC mismatch" in report.cause and report.raw == bytes(bad)
    assert "check the producer client" in report.message()


def test_a_broken_compressed_payload_is_corrupt_even_without_crc_checks():
    bad = bytearray(batch(2, 5, "lz4"))
    bad[70:80] = b"\x00" * 10  # inside the lz4 frame
    got, next_offset = consume(batch(0, 2) + bytes(bad) + batch(7, 1), check_crcs=False)
    assert [r.offset for r in got] == [0, 1, 7]
    assert next_offset == 8
    (report,) = undecodable.REPORTS.drain()
    assert (report.reason, report.codec, report.first_offset, report.next_offset) == ("corrupt_batch", "lz4", 2, 7)


def test_records_decoded_before_a_failure_are_delivered_the_rest_of_the_batch_is_skipped():
    bad = bytearray(batch(0, 6))
    # Records follow the 61-byte header; break a later record's length varint so that decoding fails mid-batch.
    sizes = []
    pos = 61
    for _ in range(6):
        length, n = _varint(bad, pos)
        sizes.append(pos)
        pos += n + length
    bad[sizes[3]] = 0x7F  # record 3 claims to be far longer than the batch
    got, next_offset = consume(bytes(bad) + batch(6, 2), check_crcs=False)
    assert [r.offset for r in got][:3] == [0, 1, 2]
    assert [r.offset for r in got][-2:] == [6, 7]
    assert next_offset == 8
    (report,) = undecodable.REPORTS.drain()
    assert report.reason == "corrupt_batch" and report.next_offset == 6
    assert report.first_offset == got[-3].offset + 1


def test_a_fetch_starting_inside_a_batch_reports_only_from_the_fetch_offset(drop_cramjam):
    data = batch(10, 5, "lz4") + batch(15, 1)
    drop_cramjam()
    got, next_offset = consume(data, fetch_offset=12)
    assert [r.offset for r in got] == [15]
    assert next_offset == 16
    (report,) = undecodable.REPORTS.drain()
    assert (report.first_offset, report.next_offset, report.count) == (12, 15, 3)


def test_a_batch_that_cannot_be_framed_stops_the_partition_without_raising():
    broken = bytearray(batch(3, 1))
    struct.pack_into(">i", broken, 8, 10)  # a length below any record's minimum
    got, next_offset = consume(batch(0, 3) + bytes(broken[:22]))
    assert [r.offset for r in got] == [0, 1, 2]
    assert next_offset == 3
    (report,) = undecodable.REPORTS.drain()
    assert (report.first_offset, report.next_offset, report.raw) == (3, 3, b"")
    assert "stops here" in report.message() and "--reset-offsets" in report.message()


def test_reports_of_one_batch_are_kept_once_until_drained(drop_cramjam):
    data = batch(0, 2, "zstd")
    drop_cramjam()
    consume(data)
    consume(data)
    assert len(undecodable.REPORTS.drain()) == 1
    assert undecodable.REPORTS.drain() == []


def test_the_dead_letter_holds_the_raw_batch_its_source_and_the_fix(drop_cramjam):
    bad = batch(3, 2, "snappy")
    drop_cramjam()
    consume(bad)
    (report,) = undecodable.REPORTS.drain()
    dead = report.dead_letter()
    assert (dead.reason, dead.source, dead.partition, dead.offset) == ("missing_codec", "events", 2, 3)
    assert dead.raw() == bad and dead.raw_size == len(bad) and not dead.truncated
    assert dead.detail == report.message()


def _varint(buf: bytearray, pos: int) -> tuple[int, int]:
    """Kafka's zig-zag varint at ``pos``: (value, bytes used)."""
    shift = result = 0
    start = pos
    while True:
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            break
        shift += 7
    return (result >> 1) ^ -(result & 1), pos - start


# ---- the worker's side: StreamWorker.report_undecodable with the broker replaced by recorders ----


class Recorder:
    """Stands in for the app's producer (dead letters) and consumer (gaps); ``fail`` makes sends raise."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.gaps: list[tuple[str, int, int, int]] = []
        self.fail = False

    async def send(self, topic, key, value, partition, timestamp, headers):
        if self.fail:
            raise ConnectionError("broker away")
        self.sent.append((topic, key, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def _add_gap(self, tp, offset_from: int, offset_to: int) -> None:
        self.gaps.append((tp.topic, tp.partition, offset_from, offset_to))


LZ4_MISSING = ("ripple_undecodable_batches_total", {"reason": "missing_codec", "codec": "lz4"})


def skipped(topic: str, partition: int, first: int, nxt: int, raw: bytes = b"raw") -> undecodable.UndecodableBatch:
    return undecodable.UndecodableBatch(topic, partition, first, nxt, "missing_codec", "lz4", "no lz4", raw)


def test_the_worker_logs_counts_dead_letters_and_marks_skipped_offsets_done(tmp_path, caplog):
    from stream_app.core.records import RawRecord
    from stream_app.kafka.faust_app import build_worker

    worker = build_worker(Settings.from_env({"RIPPLE_STATE_DIR": str(tmp_path), "RIPPLE_APP_ID": "unit-undecodable"}))
    s, rec = worker.settings, Recorder()
    worker.app.maybe_start_producer = lambda: asyncio.sleep(0, rec)  # type: ignore[method-assign]
    worker.app._consumer = rec  # type: ignore[assignment]
    worker.guard.expected[1] = 10
    registry = worker.metrics.registry

    async def scenario() -> None:
        undecodable.REPORTS.report(skipped(s.input_topic, 1, 10, 15))
        undecodable.REPORTS.report(skipped(s.output_topic, 0, 3, 4, raw=b""))  # unbounded: nothing to dead-letter
        rec.fail = True
        assert await worker.report_undecodable() == []  # dead letters could not be sent: nothing counted yet
        assert (
            registry.get_sample_value("ripple_undecodable_batches_total", {"reason": "missing_codec", "codec": "lz4"})
            == 0
        )
        assert not worker.degraded()
        rec.fail = False
        assert len(await worker.report_undecodable()) == 2
        undecodable.REPORTS.report(skipped(s.input_topic, 1, 10, 15))  # met again (after a rebalance)
        assert await worker.report_undecodable() == []

    with caplog.at_level("ERROR", logger="ripple.worker"):
        asyncio.run(scenario())
    assert [t for t, _, _ in rec.sent] == [s.dead_letter_topic]  # once, and only the batch with raw bytes
    dead = msgspec.json.decode(rec.sent[0][2], type=DeadLetter)
    assert (dead.reason, dead.source, dead.partition, dead.offset, dead.raw()) == (
        "missing_codec",
        s.input_topic,
        1,
        10,
        b"raw",
    )
    assert rec.gaps == [(s.input_topic, 1, 10, 14)] * 3  # every time it is met: Faust commits past it
    assert worker.guard.holes([RawRecord(b"", partition=1, offset=15)]) == []  # no refetch of a skipped batch
    assert (
        registry.get_sample_value("ripple_undecodable_batches_total", {"reason": "missing_codec", "codec": "lz4"}) == 2
    )
    assert registry.get_sample_value("ripple_dead_letters_total", {"reason": "missing_codec"}) == 5 + 1
    assert worker.degraded() and not worker.degraded(now=time.time() + 3600)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and "offsets 10..14" in errors[0] and "install cramjam" in errors[0]
    for db in worker.table.data._dbs.values():
        db.close()
