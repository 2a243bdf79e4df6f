"""Deleting a user (right to be forgotten) through the worker, on the real broker.

`ripple forget U` puts a request on the deletion topic; the worker owning U's partition
deletes U's graph from its RocksDB and the changelog (a tombstone in U's partition),
publishes a tombstone on the embeddings topic and answers 404 for U. After a restart U
is still gone, also for a worker that rebuilds its table from the changelog alone; a new
event of U then starts a new graph at state_version 1.
"""

from __future__ import annotations

import json

import msgspec
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2
from rocksdict import Options, Rdict
from typer.testing import CliRunner

from bench.worker_process import TopicReader, WorkerProcess, reached, worker_env
from stream_app.cli import app as cli_app
from stream_app.core.records import DeadLetter
from stream_app.core.settings import Settings
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.kafka.faust_app import DELETION_WITHOUT_KEY
from stream_app.kafka.produce import produce_events
from tests.conftest import write_jsonl
from tests.integration.test_worker import file_embeddings, metric

PARTITIONS = 4


def tombstones(reader: TopicReader) -> list:
    return [m for m in reader.messages if m.value is None]


def test_forget_removes_the_user_everywhere_and_survives_a_restart(broker, unique, tmp_path):
    lines = list(generate_events(GeneratorSpec(users=12, items=60, events=300, seed=21)))
    events_path = write_jsonl(tmp_path / "events.jsonl", lines)
    expected, _ = file_embeddings(events_path, tmp_path / "file-state", tmp_path / "file.out")
    victim = max(expected, key=lambda u: expected[u].state_version)
    others = sorted(set(expected) - {victim})
    victim_partition = (murmur2(victim.encode()) & 0x7FFFFFFF) % PARTITIONS

    env = worker_env(broker, unique, tmp_path / "state")
    settings = Settings.from_env(env)
    produce_events(events_path, "jsonl", settings, progress=False)
    out = TopicReader(broker, settings.output_topic)
    dlq = TopicReader(broker, settings.dead_letter_topic)
    changelog = TopicReader(broker, f"{settings.app_id}-user-graphs-changelog")
    worker = WorkerProcess(env, tmp_path / "worker-1.log").start()
    try:
        worker.wait_healthy()
        out.until(reached(expected), timeout=60, what="every user's final embedding")
        assert worker.get(f"/users/{victim}/embedding")[0] == 200

        # The CLI sends the requests (one for a user nobody knows: fine, a tombstone all the same) ...
        result = CliRunner().invoke(cli_app, ["forget", victim, "nobody-knows-me", "--reason", "test"], env=env)
        assert result.exit_code == 0, result.output
        assert f"partition {victim_partition}," in result.stdout  # co-partitioned with the user's events
        # ... and a request without a key is dead-lettered, not guessed.
        producer = KafkaProducer(bootstrap_servers=broker)
        producer.send(settings.deletion_topic, value=json.dumps({"user_id": victim}).encode()).get(timeout=30)
        producer.close()

        out.until(lambda r: len(tombstones(r)) >= 2, timeout=30, what="the embeddings tombstones")
        assert sorted(m.key.decode() for m in tombstones(out)) == sorted([victim, "nobody-knows-me"])
        (victim_tombstone,) = [m for m in tombstones(out) if m.key.decode() == victim]
        assert victim_tombstone.partition == victim_partition
        last_embedding = max(m.offset for m in out.messages if m.key.decode() == victim and m.value is not None)
        assert victim_tombstone.offset > last_embedding  # after its last embedding, in the same partition

        status, body = worker.get(f"/users/{victim}/embedding")
        assert status == 404 and "no state" in json.loads(body)["error"]
        for uid in others:
            status, body = worker.get(f"/users/{uid}/embedding")
            assert status == 200 and json.loads(body)["state_version"] == expected[uid].state_version, uid
        metrics = worker.get("/metrics")[1].decode()
        assert metric(metrics, "ripple_users_deleted_total") == 2
        assert metric(metrics, "ripple_users_in_state") == len(expected) - 1
        dlq.until(lambda r: len(r.messages) >= 1, timeout=20, what="the key-less deletion request's dead letter")
        letter = msgspec.json.decode(dlq.messages[-1].value, type=DeadLetter)
        assert letter.reason == DELETION_WITHOUT_KEY and letter.source == settings.deletion_topic

        changelog.until(
            lambda r: any(m.key.decode() == victim and m.value is None for m in r.messages),
            timeout=20,
            what="the changelog tombstone",
        )
        victim_records = [m for m in changelog.messages if m.key.decode() == victim]
        assert {m.partition for m in victim_records} == {victim_partition}
        assert victim_records[-1].value is None  # the last word on the user in its changelog partition
    finally:
        assert worker.stop() == 0, worker.log()

    # The RocksDB of every partition is without the user.
    (tables,) = list((tmp_path / "state").glob("*/v*/tables"))
    for p in range(PARTITIONS):
        db = Rdict(str(tables / f"user-graphs-{p}.db"), options=Options(raw_mode=True))
        try:
            assert db.get(victim.encode()) is None, p
        finally:
            db.close()

    def still_gone(w: WorkerProcess) -> None:
        assert w.get(f"/users/{victim}/embedding")[0] == 404
        for uid in others:
            status, body = w.get(f"/users/{uid}/embedding")
            assert status == 200 and json.loads(body)["state_version"] == expected[uid].state_version, uid

    # Restart on the same state directory (RocksDB + changelog tail): still gone.
    restarted = WorkerProcess(env, tmp_path / "worker-2.log").start()
    try:
        restarted.wait_healthy()
        still_gone(restarted)
    finally:
        assert restarted.stop() == 0, restarted.log()

    # A worker with an empty state directory rebuilds the table from the changelog alone: still gone.
    rebuilt_env = {**env, "RIPPLE_STATE_DIR": str(tmp_path / "rebuilt")}
    rebuilt = WorkerProcess(rebuilt_env, tmp_path / "worker-3.log").start()
    try:
        rebuilt.wait_healthy()
        still_gone(rebuilt)
        # A later event of the forgotten user starts a new graph.
        event = {"event_id": "after-forget", "user_id": victim, "item_id": "i1", "action": "click", "ts": 1_800_000_000}
        producer = KafkaProducer(bootstrap_servers=broker)
        producer.send(settings.input_topic, key=victim.encode(), value=json.dumps(event).encode()).get(timeout=30)
        producer.close()
        seen = len(out.messages)

        def republished(r: TopicReader) -> bool:
            return any(m.value is not None and m.key.decode() == victim for m in r.messages[seen:])

        out.until(republished, timeout=30, what="the forgotten user's new embedding")
        new = [msgspec.json.decode(m.value) for m in out.messages[seen:] if m.value is not None]
        assert [(e["user_id"], e["state_version"], e["last_event_id"]) for e in new] == [(victim, 1, "after-forget")]
        status, body = rebuilt.get(f"/users/{victim}/embedding")
        assert status == 200 and json.loads(body)["state_version"] == 1
    finally:
        assert rebuilt.stop() == 0, rebuilt.log()
        out.close()
        dlq.close()
        changelog.close()
