"""The worker's Faust app is built from Settings alone (no broker needed to build it)."""

from __future__ import annotations

import faust
from faust.types import Message

from stream_app.core.settings import Settings
from stream_app.kafka.faust_app import TABLE_NAME, build_worker, to_record
from stream_app.kafka.kafka_connection import bootstrap_servers, client_config


def test_the_app_follows_the_settings(tmp_path):
    settings = Settings.from_env(
        {
            "RIPPLE_APP_ID": "unit-app",
            "RIPPLE_PARTITIONS": "6",
            "RIPPLE_STATE_DIR": str(tmp_path),
            "RIPPLE_WEB_PORT": "6999",
            "RIPPLE_ROCKSDB_BLOCK_CACHE_MB": "4",
            "RIPPLE_INPUT_TOPIC": "in-x",
        }
    )
    worker = build_worker(settings)
    conf = worker.app.conf
    assert conf.id == "unit-app" and conf.web_port == 6999 and conf.web_bind == "127.0.0.1"
    assert worker.events.partitions == 6 and worker.table.partitions == 6
    assert worker.events.get_topic_name() == "in-x"
    assert worker.changelog_topic == f"unit-app-{TABLE_NAME}-changelog" == worker.table.changelog_topic.get_topic_name()
    # Small explicit RocksDB options, never Faust's 2 GiB block cache default.
    options = worker.table.data.rocksdb_options
    assert options.block_cache_size == 4 << 20 and options.use_rocksdict
    assert str(conf.tabledir).startswith(str(tmp_path))
    assert worker.cache is not None and worker.pipeline.store is worker.cache and worker.cache.inner is worker.store
    assert build_worker(settings.with_overrides(graph_cache_users=0)).pipeline.store is not None


def test_a_kafka_message_becomes_a_raw_record():
    message = Message(
        topic="t", partition=3, offset=17, timestamp=1_767_225_600.5, timestamp_type=0,
        headers=[], key=b"u1", value=b'{"x": 1}', checksum=None,
    )  # fmt: skip
    record = to_record(faust.Event(None, b"u1", b'{"x": 1}', {}, message))
    assert (record.key, record.value, record.partition, record.offset) == (b"u1", b'{"x": 1}', 3, 17)
    assert record.timestamp == 1_767_225_600.5 and record.source == "t"


def test_kafka_python_clients_get_short_bootstrap_timeouts():
    config = client_config(Settings.from_env({"RIPPLE_BROKER": "kafka://a:1;kafka://b:2"}))
    assert config["bootstrap_servers"] == ["a:1", "b:2"] == bootstrap_servers("a:1,b:2")
    assert config["api_version_auto_timeout_ms"] <= 5000


def test_kafka_commands_fail_fast_and_clearly_without_a_broker(tmp_path):
    import time

    from typer.testing import CliRunner

    from stream_app.cli import app as cli_app

    events = tmp_path / "e.jsonl"
    events.write_text('{"event_id": "1", "user_id": "u", "item_id": "i", "action": "view", "ts": 1767225600}\n')
    env = {"RIPPLE_BROKER": "kafka://127.0.0.1:9"}  # nothing listens on the discard port
    for args in (["produce", "--events", str(events)], ["tail", "--timeout", "1"], ["worker"]):
        started = time.monotonic()
        result = CliRunner().invoke(cli_app, args, env=env)
        assert result.exit_code == 2, (args, result.output)
        assert "cannot reach the Kafka broker" in result.output
        assert time.monotonic() - started < 15, args  # not kafka-python's 30 s default


def test_a_partitions_unprocessed_end_is_read_again_through_the_stream(tmp_path, monkeypatch):
    """The worker's side of the offset guard's end check: the range is read from the broker (stubbed
    here; the failover test runs it against a real one) and the partition seeks back to it, or, when
    the range holds no records, the expectation moves past it."""
    import asyncio

    from faust.types import TP

    from stream_app.core.records import RawRecord
    from stream_app.kafka import faust_app, offset_guard

    settings = Settings.from_env({"RIPPLE_STATE_DIR": str(tmp_path), "RIPPLE_INPUT_TOPIC": "in-x"})
    worker = build_worker(settings)
    assert worker.app.consumer is worker.held_stale_acks()  # the consumer exists once the app runs
    worker.generation = worker.app.consumer_generation_id
    worker.guard.expected = {0: 10, 1: 5}
    broker = {0: [RawRecord(b"{}", key=b"u", source="in-x", partition=0, offset=11)], 1: []}
    read: list[tuple[int, int, int]] = []
    sought: list[tuple[TP, int]] = []

    async def fetch_range(settings, topic, partition, start, end):
        read.append((partition, start, end))
        return [r for r in broker[partition] if start <= r.offset < end]

    async def seek(tp, offset):
        sought.append((tp, offset))

    monkeypatch.setattr(faust_app, "fetch_range", fetch_range)
    monkeypatch.setattr(worker.app.consumer, "seek", seek)
    monkeypatch.setattr(offset_guard, "STALLED_S", 0.0)  # stalled at the first look (10 s in the worker)
    asyncio.run(worker.reread_unprocessed({0: 12, 1: 7}))
    assert read == [(0, 10, 12), (1, 5, 7)]
    assert sought == [(TP("in-x", 0), 11)]  # offset 10 holds no record (a marker): the stream re-reads from 11
    assert worker.guard.expected[1] == 7  # nothing there at all: settled


def test_lag_report_skips_partitions_a_rebalance_revokes_meanwhile(tmp_path):
    """aiokafka asserts in highwater() and raises in position() for a partition no longer assigned;
    a rebalance between two partitions' reports must not crash the worker from its timer."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka.errors import IllegalStateError
    from faust.types import TP

    settings = Settings.from_env({"RIPPLE_STATE_DIR": str(tmp_path), "RIPPLE_INPUT_TOPIC": "in-x"})
    worker = build_worker(settings)
    first, second, third = (TP("in-x", p) for p in range(3))

    class Consumer:  # aiokafka's checks, and a rebalance during the first position() call
        assigned = {first, second, third}

        def assignment(self):
            return sorted(self.assigned)  # aiokafka returns a set: any order; this one revokes mid-way

        def highwater(self, tp):
            assert tp in self.assigned, "Partition is not assigned"
            return 100

        async def position(self, tp):
            if tp == first:
                self.assigned = {first}  # the other two go to another worker
            if tp not in self.assigned:
                raise IllegalStateError(f"partition {tp} is not assigned")
            return 40

    worker.app = SimpleNamespace(consumer=Consumer())
    asyncio.run(worker.report_lag())
    reported = {
        s.labels["partition"]: s.value
        for m in worker.metrics.registry.collect()
        for s in m.samples
        if s.name == "ripple_consumer_lag"
    }
    assert reported == {"0": 60.0}
