"""Stopping the worker mid-stream and starting it again loses nothing and changes nothing."""

from __future__ import annotations

import numpy as np

from bench.worker_process import TopicReader, WorkerProcess, latest_by_user, reached, worker_env
from stream_app.core.settings import Settings
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.kafka.produce import produce_events
from tests.conftest import write_jsonl
from tests.integration.test_worker import file_embeddings


def test_stop_mid_stream_and_restart_equals_an_uninterrupted_run(broker, unique, tmp_path):
    # Long enough that the stop lands mid-stream however fast the worker is: a graceful stop takes
    # about a second, in which a worker on a fast machine drained the whole of a 1,200-event stream.
    lines = list(generate_events(GeneratorSpec(users=30, items=100, events=9600, seed=11)))
    events_path = write_jsonl(tmp_path / "events.jsonl", lines)
    expected, _ = file_embeddings(events_path, tmp_path / "file-state", tmp_path / "file.out")

    # Small batches so that the first run is stopped with most of the stream still ahead of it.
    env = worker_env(broker, unique, tmp_path / "state", batch_size=16)
    settings = Settings.from_env(env)
    produce_events(events_path, "jsonl", settings, progress=False)
    out = TopicReader(broker, settings.output_topic)
    first = WorkerProcess(env, tmp_path / "worker-1.log").start()
    try:
        first.wait_healthy()
        out.until(lambda r: len(r.messages) >= 40, timeout=60, what="the first embeddings")
    finally:
        assert first.stop() == 0, first.log()
    out.poll(1.0)
    seen_before_restart = len(out.messages)
    assert not reached(expected)(out), "the first run finished the stream; nothing was left for the restart"

    second = WorkerProcess(env, tmp_path / "worker-2.log").start()
    try:
        second.wait_healthy()
        out.until(reached(expected), timeout=120, what="every user's final embedding after the restart")
    finally:
        assert second.stop() == 0, second.log()
        out.close()

    published = out.embeddings()
    assert len(published) > seen_before_restart
    latest = latest_by_user(published)
    assert latest.keys() == expected.keys()
    for uid, want in expected.items():  # no user misses an update, every final vector is the file's
        assert latest[uid].state_version == want.state_version
        assert latest[uid].last_event_id == want.last_event_id
        np.testing.assert_allclose(latest[uid].embedding, want.embedding, atol=1e-5)
    by_version: dict[tuple[str, int], list[float]] = {}
    for emb in published:  # a redelivered batch republishes a state, never a different vector for it
        first_seen = by_version.setdefault((emb.user_id, emb.state_version), emb.embedding)
        np.testing.assert_allclose(emb.embedding, first_seen, atol=1e-5)
    versions: dict[str, list[int]] = {}
    for emb in published:
        versions.setdefault(emb.user_id, []).append(emb.state_version)
    for uid, seq in versions.items():  # per user, in output order, state never goes back
        assert seq == sorted(seq), uid
