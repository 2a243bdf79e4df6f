"""The Faust worker on the real broker: one run of a generated file through a 4-partition topic.

The module fixture starts `python -m stream_app worker`, produces the file, waits
for the output, adds a few events through `ripple produce` (to see /metrics move),
then stops the worker; the tests check what that run left behind.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pytest
from kafka.partitioner.default import murmur2
from prometheus_client.parser import text_string_to_metric_families
from rocksdict import Options, Rdict
from typer.testing import CliRunner

from bench.worker_process import TopicReader, WorkerProcess, latest_by_user, reached, worker_env
from stream_app.cli import app as cli_app
from stream_app.core.records import DeadLetter, UserEmbedding
from stream_app.core.settings import Settings
from stream_app.files.file_runner import ReplaySummary, replay
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.kafka.produce import produce_events
from tests.conftest import write_jsonl

PARTITIONS = 4


@dataclass
class Run:
    env: dict[str, str]
    state_dir: Path
    expected: dict[str, UserEmbedding]
    summary: ReplaySummary
    outputs: list  # output topic messages after the file (before the extra events)
    dead_letters: list
    inputs: list
    metrics_before: str
    metrics_after: str
    extra_users: set[str]
    views: dict[str, tuple[int, dict]]
    explanations: dict[str, tuple[int, dict]]
    final_outputs: list
    healthz: dict
    tail_lines: list[str]


def file_embeddings(path: str, state: Path, out: Path) -> tuple[dict[str, UserEmbedding], ReplaySummary]:
    summary = replay(path, "jsonl", str(out), Settings.from_env({}, state_dir=str(state)), progress=False)
    with open(out, "rb") as f:
        published = [msgspec.json.decode(line, type=UserEmbedding) for line in f]
    return latest_by_user(published), summary


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def lag_samples(text: str) -> dict[str, float]:
    return {
        sample.labels["partition"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ripple_consumer_lag"
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory, broker) -> Run:
    import uuid

    name = uuid.uuid4().hex[:10]
    tmp = tmp_path_factory.mktemp("worker")
    lines = list(generate_events(GeneratorSpec(users=40, items=120, events=1500, seed=3, malformed=0.05)))
    events_path = write_jsonl(tmp / "events.jsonl", lines)
    expected, summary = file_embeddings(events_path, tmp / "file-state", tmp / "file.out")

    env = worker_env(broker, name, tmp / "state")
    settings = Settings.from_env(env)
    produce_events(events_path, "jsonl", settings, progress=False)  # also creates the 4-partition topics
    worker = WorkerProcess(env, tmp / "worker.log").start()
    out = TopicReader(broker, settings.output_topic)
    dlq = TopicReader(broker, settings.dead_letter_topic)
    try:
        healthz = worker.wait_healthy()
        out.until(reached(expected), timeout=90, what="every user's final embedding")
        n_rejected = sum(summary.rejected.values())
        dlq.until(lambda r: len(r.messages) >= n_rejected, timeout=30, what="the dead letters")
        outputs = list(out.messages)
        metrics_before = worker.get("/metrics")[1].decode()

        # A few more events through the CLI: counters must move, views must follow the topic.
        # As CSV, to go through `ripple produce --format csv` (rows mapped to the JSON contract, key = user_id).
        extra = [b"event_id,user_id,item_id,action,ts"]
        extra += [f"x{n},u{n},i{n + 7},click,{1_767_300_000 + n}".encode() for n in range(5)]
        extra += [b"not,a,valid,row"]
        extra_path = write_jsonl(tmp / "extra.csv", extra)
        result = CliRunner().invoke(cli_app, ["produce", "--events", extra_path, "--format", "csv"], env=env)
        assert result.exit_code == 0, result.output
        extra_users = {f"u{n}" for n in range(5)}
        before = latest_by_user(out.embeddings())

        def moved(r: TopicReader) -> bool:
            latest = latest_by_user(r.embeddings())
            return all(latest[u].state_version > before[u].state_version for u in extra_users)

        out.until(
            moved,
            timeout=30,
            what="the extra events' embeddings",
        )
        dlq.until(lambda r: len(r.messages) >= n_rejected + 1, timeout=30, what="the extra dead letter")
        views, explanations = {}, {}
        for uid in [*sorted(extra_users), "u30", "u39", "nobody-knows-me"]:
            status, body = worker.get(f"/users/{uid}/embedding")
            views[uid] = (status, json.loads(body) if body else {})
            status, body = worker.get(f"/users/{uid}/explanation?top=100")
            explanations[uid] = (status, json.loads(body) if body else {})
        metrics_after = worker.get("/metrics")[1].decode()
        deadline = time.monotonic() + 15
        while len(lag_samples(metrics_after)) < PARTITIONS and time.monotonic() < deadline:
            time.sleep(0.5)  # the lag is reported every LAG_INTERVAL_S
            metrics_after = worker.get("/metrics")[1].decode()
        tail = CliRunner().invoke(cli_app, ["tail", "--from-beginning", "--max", "3", "--timeout", "5"], env=env)
        assert tail.exit_code == 0, tail.output
        inputs = TopicReader(broker, settings.input_topic)
        inputs.until(lambda r: len(r.messages) >= len(lines) + len(extra) - 1, timeout=20)  # minus the header
        inputs.close()
    finally:
        code = worker.stop()
        out.close()
        dlq.close()
    assert code == 0, worker.log()
    return Run(
        env=env,
        state_dir=tmp / "state",
        expected=expected,
        summary=summary,
        outputs=outputs,
        dead_letters=dlq.messages,
        inputs=inputs.messages,
        metrics_before=metrics_before,
        metrics_after=metrics_after,
        extra_users=extra_users,
        views=views,
        explanations=explanations,
        final_outputs=out.messages,
        healthz=healthz,
        tail_lines=[line for line in tail.stdout.splitlines() if line.startswith("{")],
    )


def test_kafka_path_equals_file_path(run):
    got = latest_by_user([msgspec.json.decode(m.value, type=UserEmbedding) for m in run.outputs])
    assert got.keys() == run.expected.keys()
    for uid, want in run.expected.items():
        assert got[uid].state_version == want.state_version
        assert got[uid].last_event_id == want.last_event_id
        assert got[uid].model_version == want.model_version
        np.testing.assert_allclose(got[uid].embedding, want.embedding, atol=1e-5)
    for message in run.outputs:  # keyed by user_id
        assert message.key.decode() == json.loads(message.value)["user_id"]


def test_malformed_messages_land_on_the_dead_letter_topic_with_reasons(run):
    letters = [msgspec.json.decode(m.value, type=DeadLetter) for m in run.dead_letters]
    from_file = Counter(d.reason for d in letters[: sum(run.summary.rejected.values())])
    assert from_file == run.summary.rejected
    assert letters[-1].reason == "malformed_json"  # the extra line, after the file: the worker kept going
    inputs = {(m.partition, m.offset): m for m in run.inputs}
    for message, letter in zip(run.dead_letters, letters, strict=True):
        source = inputs[(letter.partition, letter.offset)]
        assert letter.source == run.env["RIPPLE_INPUT_TOPIC"]
        assert letter.raw() == source.value
        assert message.key == source.key
        assert letter.key_base64 == (None if source.key is None else base64.b64encode(source.key).decode())


def test_web_views_return_what_the_output_topic_says(run):
    latest = latest_by_user([msgspec.json.decode(m.value, type=UserEmbedding) for m in run.final_outputs])
    for uid, (status, body) in run.views.items():
        if uid == "nobody-knows-me":
            assert status == 404 and "no state" in body["error"]
            continue
        assert status == 200
        want = latest[uid]
        for name in ("user_id", "state_version", "last_event_id", "model_version", "n_nodes", "event_ts"):
            assert body[name] == getattr(want, name), name
        np.testing.assert_allclose(body["embedding"], want.embedding, atol=1e-5)
    assert run.healthz["status"] == "ok"
    assert len(run.tail_lines) == 3 and all(json.loads(line)["embedding"] for line in run.tail_lines)


def test_explanation_view_attributes_the_published_state(run):
    for uid, (status, body) in run.explanations.items():
        if uid == "nobody-knows-me":
            assert status == 404
            continue
        assert status == 200 and body["state_version"] == run.views[uid][1]["state_version"]
        shares = [b["share"] for b in body["behaviours"]]
        assert len(shares) == run.views[uid][1]["n_nodes"] and abs(sum(shares) - 1.0) < 1e-3
        assert shares == sorted(shares, reverse=True)


def test_metrics_counters_move(run):
    before, after = run.metrics_before, run.metrics_after
    applied = run.summary.outcomes["applied"]
    assert metric(before, "ripple_events_processed_total", outcome="applied") == applied
    assert metric(after, "ripple_events_processed_total", outcome="applied") == applied + 5
    assert metric(after, "ripple_dead_letters_total", reason="malformed_json") == (
        metric(before, "ripple_dead_letters_total", reason="malformed_json") + 1
    )
    assert metric(after, "ripple_embeddings_published_total") > metric(before, "ripple_embeddings_published_total")
    latency = "ripple_event_to_publish_seconds_count"
    assert metric(after, latency) > metric(before, latency)
    assert metric(after, "ripple_users_in_state") == len(run.expected)  # the extra users already existed
    assert metric(after, "ripple_model_info") == 1
    # micro-batches really mixed partitions: far fewer batches than events
    assert metric(before, "ripple_batch_size_count") < applied / 4
    assert metric(after, "faust_messages_received_total") > 0  # Faust's own sensors share the registry
    assert lag_samples(after) == {str(p): 0.0 for p in range(PARTITIONS)}  # all consumed


def test_every_key_ends_in_its_own_partitions_store_and_changelog(run, broker):
    expected_partition = {uid: (murmur2(uid.encode()) & 0x7FFFFFFF) % PARTITIONS for uid in run.expected}
    produced = {m.key.decode(): m.partition for m in run.inputs if m.key is not None}
    assert {u: produced[u] for u in expected_partition} == expected_partition
    assert len(set(expected_partition.values())) == PARTITIONS

    in_store: dict[str, int] = {}
    (tables,) = list(run.state_dir.glob("*/v*/tables"))
    for p in range(PARTITIONS):
        db = Rdict(str(tables / f"user-graphs-{p}.db"), options=Options(raw_mode=True))
        try:
            for key in db.keys():
                if not key.startswith(b"__faust"):
                    assert key.decode() not in in_store, f"{key!r} in two partition stores"
                    in_store[key.decode()] = p
        finally:
            db.close()
    assert in_store == expected_partition

    changelog = TopicReader(broker, f"{run.env['RIPPLE_APP_ID']}-user-graphs-changelog")
    changelog.until(lambda r: {m.key.decode() for m in r.messages} >= set(expected_partition), timeout=20)
    changelog.close()
    for message in changelog.messages:
        assert message.partition == expected_partition[message.key.decode()], message.key
