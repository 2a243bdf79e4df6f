"""Deleting users: `ripple forget --state` on an embedded state directory, and the worker's
deletion path with the broker replaced by recorders (on the real broker:
tests/integration/test_worker_deletion.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import faust
import msgspec
import numpy as np
import pytest
from faust.types import Message
from typer.testing import CliRunner

from graph_state import RocksStore
from stream_app.cli import app
from stream_app.core.records import UserEmbedding
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.forget import forget_local
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.kafka.faust_app import DELETION_WITHOUT_KEY, build_worker, deletion_user
from tests.conftest import write_jsonl


def read_out(path) -> list[UserEmbedding]:
    with open(path, "rb") as f:
        return [msgspec.json.decode(line, type=UserEmbedding) for line in f]


def graphs(settings: Settings) -> dict:
    store = RocksStore(settings.state_dir, settings.graph_config(), settings.rocks_options())
    try:
        return {uid: g.state_version for uid, g in store.get_many(list(store.user_ids())).items()}
    finally:
        store.close()


def test_forget_deletes_from_the_state_directory_and_later_events_start_a_new_graph(tmp_path):
    lines = list(generate_events(GeneratorSpec(users=20, items=80, events=600, seed=5)))
    settings = Settings.from_env({}, state_dir=str(tmp_path / "state"))
    replay(write_jsonl(tmp_path / "ev.jsonl", lines), "jsonl", str(tmp_path / "a.out"), settings, progress=False)
    before = graphs(settings)
    victim = max(before, key=lambda u: before[u])
    assert before[victim] > 3

    result = CliRunner().invoke(app, ["forget", victim, "nobody-knows-me", "--state", str(tmp_path / "state")])
    assert result.exit_code == 0, result.output
    assert "deleted" in result.stdout and "no state" in result.stdout
    after = graphs(settings)
    assert victim not in after
    assert after == {u: v for u, v in before.items() if u != victim}  # nobody else touched
    assert forget_local([victim], settings) == {victim: False}  # idempotent

    # New events of the forgotten user build a new graph from scratch: state_version 1, 2, 3, and
    # the same vectors as those three events alone in an empty state.
    fresh = [
        msgspec.json.encode(
            {"event_id": f"new-{n}", "user_id": victim, "item_id": f"z{n}", "action": "click", "ts": 1_800_000_000 + n}
        )
        for n in range(3)
    ]
    fresh_path = write_jsonl(tmp_path / "fresh.jsonl", fresh)
    one_by_one = settings.with_overrides(batch_size=1)
    replay(fresh_path, "jsonl", str(tmp_path / "b.out"), one_by_one, progress=False)
    again = read_out(tmp_path / "b.out")
    assert [e.state_version for e in again] == [1, 2, 3] and {e.user_id for e in again} == {victim}
    alone = one_by_one.with_overrides(state_dir=str(tmp_path / "alone"))
    replay(fresh_path, "jsonl", str(tmp_path / "c.out"), alone, progress=False)
    for got, want in zip(again, read_out(tmp_path / "c.out"), strict=True):
        np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-6)
    assert graphs(settings)[victim] == 3


def test_forget_refuses_a_directory_without_embedded_state(tmp_path):
    result = CliRunner().invoke(app, ["forget", "u1", "--state", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not a state directory" in result.output
    assert not (tmp_path / "missing").exists()  # nothing created
    (tmp_path / "worker" / "ripple" / "v1" / "tables").mkdir(parents=True)
    result = CliRunner().invoke(app, ["forget", "u1", "--state", str(tmp_path / "worker")])
    assert result.exit_code == 2 and "Faust worker" in result.output


def test_forget_without_state_needs_a_broker_and_fails_fast(tmp_path):
    import time

    started = time.monotonic()
    result = CliRunner().invoke(app, ["forget", "u1"], env={"RIPPLE_BROKER": "kafka://127.0.0.1:9"})
    assert result.exit_code == 2 and "cannot reach the Kafka broker" in result.output
    assert time.monotonic() - started < 15


def test_a_deletion_request_names_its_user_by_key():
    assert deletion_user(b"u1") == "u1" and deletion_user("é".encode()) == "é"
    assert deletion_user(None) is None and deletion_user(b"") is None and deletion_user(b"\xff\xfe") is None


class FakeProducer:
    """Records what the worker sends; sends to ``hold_topic`` wait until ``release`` is set.

    Both ways the worker sends: Faust's ``Producer.send`` and, through ``_ensure_producer()``,
    aiokafka's record batches (``stream_app/kafka/batch_send.py``: embeddings, dead letters and the
    table's changelog). Changelog records are recorded as ``("changelog", partition, key, value)``.
    """

    def __init__(self, sent: list, hold_topic: str | None = None) -> None:
        self.sent = sent
        self.hold_topic = hold_topic
        self.release = asyncio.Event()

    async def send(self, topic, key, value, partition, timestamp, headers):
        if topic == self.hold_topic:
            await self.release.wait()
        self.sent.append((topic, key, value))
        return self._done()

    @staticmethod
    def _done():
        done = asyncio.get_running_loop().create_future()
        done.set_result(SimpleNamespace(offset=0))
        return done

    # aiokafka's batch interface
    def _ensure_producer(self):
        return self

    async def partitions_for(self, topic):
        return {0, 1, 2, 3}

    @staticmethod
    def _partitioner(key, all_partitions, available):
        return all_partitions[0]

    def create_batch(self):
        return FakeBatch()

    async def send_batch(self, batch, topic, *, partition):
        assert batch.closed, "a complete batch is queued closed (else it waits out the producer's linger)"
        if topic == self.hold_topic:
            await self.release.wait()
        for key, value in batch.records:
            entry = ("changelog", partition, key, value) if topic.endswith("-changelog") else (topic, key, value)
            self.sent.append(entry)
        return self._done()


class FakeBatch:
    def __init__(self) -> None:
        self.records: list = []
        self.closed = False

    def append(self, *, timestamp, key, value):
        self.records.append((key, value))
        return True

    def record_count(self) -> int:
        return len(self.records)

    def close(self) -> None:
        """``send_batched`` closes a batch when it queues it (aiokafka's ``BatchBuilder.close``)."""
        self.closed = True


def message_event(worker, topic: str, partition: int, key: bytes | None, value: bytes = b"{}") -> faust.Event:
    message = Message(
        topic=topic, partition=partition, offset=0, timestamp=0.0, timestamp_type=0,
        headers=[], key=key, value=value, checksum=None,
    )  # fmt: skip
    return faust.Event(worker.app, key, value, {}, message)


@pytest.fixture
def worker(tmp_path):
    """The real worker (Faust table on RocksDB, cache, pipeline) with the broker replaced by recorders."""
    settings = Settings.from_env({"RIPPLE_STATE_DIR": str(tmp_path), "RIPPLE_APP_ID": "unit-forget"})
    w = build_worker(settings)
    w.sent = []  # type: ignore[attr-defined]

    def send_changelog(partition, key, value, key_serializer=None, value_serializer=None):
        w.sent.append(("changelog", partition, key, value))  # type: ignore[attr-defined]
        return SimpleNamespace(message=SimpleNamespace(partition=partition))

    w.table.send_changelog = send_changelog  # type: ignore[method-assign]
    yield w
    for db in w.table.data._dbs.values():
        db.close()


def click(user: str, n: int) -> bytes:
    return msgspec.json.encode(
        {"event_id": f"{user}-{n}", "user_id": user, "item_id": f"i{n}", "action": "click", "ts": 1_767_225_600 + n}
    )


def test_the_worker_deletes_from_table_changelog_and_cache_then_publishes_a_tombstone(worker):
    s = worker.settings
    producer = FakeProducer(worker.sent)
    worker.app.maybe_start_producer = lambda: asyncio.sleep(0, producer)

    async def scenario() -> list[str]:
        batch = [message_event(worker, s.input_topic, 2, b"ann", click("ann", 1))]
        batch.append(message_event(worker, s.input_topic, 3, b"bob", click("bob", 1)))
        await worker.process_batch(batch)
        assert worker.cache is not None and len(worker.cache) == 2
        worker.sent.clear()
        requests = [message_event(worker, s.deletion_topic, 2, b"ann"), message_event(worker, s.deletion_topic, 1, b"")]
        requests.append(message_event(worker, s.deletion_topic, 0, b"zoe"))
        return await worker.process_deletions(requests)

    assert asyncio.run(scenario()) == ["ann", "zoe"]
    assert worker.sent == [
        ("changelog", 2, b"ann", None),  # each tombstone in the partition its request (and events) came from
        ("changelog", 0, b"zoe", None),  # unknown user: tombstones all the same
        (s.output_topic, b"ann", None),
        (s.output_topic, b"zoe", None),
        (s.dead_letter_topic, b"", worker.sent[-1][2]),
    ]
    assert msgspec.json.decode(worker.sent[-1][2])["reason"] == DELETION_WITHOUT_KEY
    assert worker.store.get_many(["ann", "bob"]).keys() == {"bob"} and len(worker.cache) == 1
    registry = worker.metrics.registry
    assert registry.get_sample_value("ripple_users_deleted_total") == 2
    assert registry.get_sample_value("ripple_users_in_state") == 1
    assert registry.get_sample_value("ripple_dead_letters_total", {"reason": DELETION_WITHOUT_KEY}) == 1


def test_a_deletion_waits_for_the_event_batch_in_flight(worker):
    """A request arriving while a batch of the user's events is publishing runs after that batch's commit."""
    s = worker.settings
    producer = FakeProducer(worker.sent, hold_topic=s.output_topic)
    worker.app.maybe_start_producer = lambda: asyncio.sleep(0, producer)

    async def scenario() -> None:
        batch = worker.process_batch([message_event(worker, s.input_topic, 1, b"cy", click("cy", 1))])
        in_flight = asyncio.create_task(batch)
        await asyncio.sleep(0.05)  # the batch is waiting for its publish
        deletion = asyncio.create_task(worker.process_deletions([message_event(worker, s.deletion_topic, 1, b"cy")]))
        await asyncio.sleep(0.05)
        assert not any(entry[-1] is None for entry in worker.sent), "the deletion ran inside the batch"
        producer.hold_topic = None
        producer.release.set()
        await asyncio.gather(in_flight, deletion)

    asyncio.run(scenario())
    kinds = [(entry[0], entry[-1] is None) for entry in worker.sent]
    assert kinds == [(s.output_topic, False), ("changelog", False), ("changelog", True), (s.output_topic, True)]
    assert worker.store.get_many(["cy"]) == {}
