"""Live model swap on the real broker: a new checkpoint replaces the served one mid-stream.

One worker (`python -m stream_app worker`, RIPPLE_MODEL_POLL_S=0.5) serves model A. The
stream arrives in three phases:

1. phase 1 is produced and fully published, all with model A;
2. phase 2 is produced at a steady rate; once some of it is published, model B is written
   over RIPPLE_MODEL_PATH (atomically, as `Checkpoint.save` does);
3. then a corrupt file and a checkpoint trained on other graph settings are written over
   it in turn: both are rejected and B keeps serving; phase 3 is produced.

What must hold: per user the output's model_version goes A … A B … B (one switch, never
back), the swap fell inside phase 2 (counted while its producer was still sending), no event
was lost, each user's final embedding equals
the file runner's run of the whole stream with model B, and the rejections are logged
with their cause and counted.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import msgspec
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.worker_process import TopicReader, WorkerProcess, latest_by_user, reached, worker_env
from graph_state import GraphConfig
from operators import Checkpoint, EncoderConfig
from operators.graph_settings import graph_config_dict
from stream_app.core.records import UserEmbedding
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.kafka.produce import produce_events
from tests.conftest import write_jsonl

CONFIG = EncoderConfig(dim=32, layers=2)
PHASE = 600  # events per phase


def metric(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def file_run(events_path: str, model: str, state: Path) -> dict[str, UserEmbedding]:
    """Each user's final embedding when the whole file is computed with ``model`` (the embedded runner)."""
    out = state.with_suffix(".jsonl")
    replay(
        events_path, "jsonl", str(out), Settings.from_env({}, state_dir=str(state), model_path=model), progress=False
    )
    with open(out, "rb") as f:
        return latest_by_user([msgspec.json.decode(line, type=UserEmbedding) for line in f])


def test_a_new_checkpoint_is_swapped_in_mid_stream_and_bad_ones_are_rejected(tmp_path, broker, unique):
    lines = list(generate_events(GeneratorSpec(users=24, items=150, events=3 * PHASE, seed=17)))
    phases = [lines[i * PHASE : (i + 1) * PHASE] for i in range(3)]
    users_of = [{msgspec.json.decode(line)["user_id"] for line in phase} for phase in phases]
    assert users_of[0] == users_of[2] == set().union(*users_of)  # every user has events before and after the swap
    paths = [write_jsonl(tmp_path / f"phase{i + 1}.jsonl", phase) for i, phase in enumerate(phases)]
    whole = write_jsonl(tmp_path / "all.jsonl", lines)

    graph = graph_config_dict(Settings.from_env({}).graph_config())
    old, new = Checkpoint.seeded(CONFIG, seed=1), Checkpoint.seeded(CONFIG, seed=2)
    new.training = {"graph": graph}  # trained on the worker's graph settings: the check passes
    wrong_graph = Checkpoint.seeded(CONFIG, seed=3)
    wrong_graph.training = {"graph": graph_config_dict(GraphConfig(max_nodes=20))}
    models = tmp_path / "models"
    old.save(models / "a.ckpt")
    new.save(models / "b.ckpt")
    model_path = str(tmp_path / "serving" / "model.ckpt")
    old.save(model_path)

    after_phase1 = file_run(paths[0], str(models / "a.ckpt"), tmp_path / "file-a")
    after_phase2 = file_run(write_jsonl(tmp_path / "p12.jsonl", lines[: 2 * PHASE]), "", tmp_path / "file-p12")
    expected = file_run(whole, str(models / "b.ckpt"), tmp_path / "file-b")
    assert {e.model_version for e in expected.values()} == {new.model_version}

    env = worker_env(broker, unique, tmp_path / "state", model_path=model_path, model_poll_s=0.5)
    settings = Settings.from_env(env)
    produce_events(paths[0], "jsonl", settings, progress=False)  # also creates the topics
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    out = TopicReader(broker, settings.output_topic)
    started = time.monotonic()
    try:
        assert worker.wait_healthy()["model_version"] == old.model_version
        out.until(reached(after_phase1), timeout=120, what="phase 1 with model A")
        assert {e.model_version for e in out.embeddings()} == {old.model_version}

        def reloads(outcome: str) -> float:
            return metric(worker.get("/metrics")[1].decode(), "ripple_model_reloads_total", outcome=outcome)

        # Phase 2 at a steady rate (about 8 s); B replaces A once part of it is published.
        producer = threading.Thread(target=produce_events, args=(paths[1], "jsonl", settings, 75.0, False))
        producer.start()
        out.until(
            lambda r: any(e.state_version > after_phase1[e.user_id].state_version for e in r.embeddings()),
            timeout=60,
            what="the first embeddings of phase 2",
        )
        new.save(model_path)
        wait_for(lambda: reloads("swapped") == 1, 30, "the swap")
        # Still producing: the events sent from now on can only be embedded with B.
        swapped_mid_stream = producer.is_alive()
        producer.join(60)
        assert not producer.is_alive()
        out.until(reached(after_phase2), timeout=90, what="phase 2")
        assert worker.wait_healthy()["model_version"] == new.model_version

        # Two bad checkpoints in turn: each is rejected, B keeps serving.
        with open(model_path + ".tmp", "wb") as f:
            f.write(b"PK\x03\x04 this is not a checkpoint" * 64)
        os.replace(model_path + ".tmp", model_path)
        wait_for(lambda: reloads("rejected") == 1, 30, "the corrupt file to be rejected")
        wrong_graph.save(model_path)
        wait_for(lambda: reloads("rejected") == 2, 30, "the checkpoint of other graph settings to be rejected")

        produce_events(paths[2], "jsonl", settings, progress=False)
        out.until(reached(expected), timeout=90, what="every user's final embedding")
        metrics = worker.get("/metrics")[1].decode()
        health = worker.wait_healthy()
    finally:
        code = worker.stop()
        out.close()
    elapsed = time.monotonic() - started
    assert code == 0, worker.log()
    published = out.embeddings()

    # Per user the version switches exactly once, from A to B, and never back.
    versions: dict[str, list[str]] = {}
    for emb in published:  # the reader keeps each partition's order, and a user lives on one partition
        seq = versions.setdefault(emb.user_id, [])
        if not seq or seq[-1] != emb.model_version:
            seq.append(emb.model_version)
    assert versions == {uid: [old.model_version, new.model_version] for uid in expected}, versions

    # The swap fell inside phase 2: some of its embeddings carry A, some B.
    assert swapped_mid_stream
    in_phase2 = {
        e.model_version
        for e in published
        if after_phase1[e.user_id].state_version < e.state_version <= after_phase2[e.user_id].state_version
    }
    assert in_phase2 == {old.model_version, new.model_version}

    # No event lost, and the final vectors are the new model's on each user's whole history.
    latest = latest_by_user(published)
    for uid, want in expected.items():
        got = latest[uid]
        assert (got.state_version, got.last_event_id, got.n_nodes) == (
            want.state_version,
            want.last_event_id,
            want.n_nodes,
        )
        assert got.model_version == new.model_version
        np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-5, err_msg=uid)
    assert metric(metrics, "ripple_events_processed_total", outcome="applied") == len(lines)

    # The metrics and /healthz name the new model only; the rejections are counted and logged.
    assert metric(metrics, "ripple_model_info", model_version=new.model_version) == 1
    assert metric(metrics, "ripple_model_info", model_version=old.model_version) == 0
    assert metric(metrics, "ripple_model_reloads_total", outcome="swapped") == 1
    assert metric(metrics, "ripple_model_reloads_total", outcome="rejected") == 2
    assert health["model_version"] == new.model_version
    log = worker.log_path.read_text(errors="replace")
    rejected = [line for line in log.splitlines() if "model reload rejected: " + model_path in line]
    assert len(rejected) == 2, log[-4000:]
    assert all(f"keeps serving model {new.model_version}" in line for line in rejected)
    assert "cannot be read" in rejected[0]
    assert "RIPPLE_MAX_NODES=20" in rejected[1] and "RIPPLE_MAX_NODES=50" in rejected[1]
    print(f"model swap run: {len(lines)} events, {len(published)} embeddings, {elapsed:.1f} s with the worker")


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)
