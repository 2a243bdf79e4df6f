"""`kill -9` and an immediate restart with static group membership: back in seconds, not after the session timeout.

The worker runs with the default session timeout (60 s) and static membership (the default:
``group.instance.id`` derived from host and state directory, the same after the restart).
Mid-stream it is SIGKILLed — it leaves no group, commits nothing — and started again on the
same state directory. Without static membership the broker would hand its partitions out only
once the dead member's session expired (~60 s; ``bench/restart.py`` measures both). Here:

- the restarted worker publishes its first new embedding well within the session timeout;
- the final embeddings equal an uninterrupted run (the file runner), a repeated
  ``(user_id, state_version)`` carries the same vector, and the table holds every user's state.
"""

from __future__ import annotations

import time

from bench.worker_process import (
    BackgroundProducer,
    TopicReader,
    WorkerProcess,
    reached,
    sigkill,
    stored_embeddings,
    worker_env,
)
from stream_app.core.settings import Settings
from stream_app.files.generate import GeneratorSpec, generate_events
from tests.conftest import write_jsonl
from tests.integration.expectations import assert_final_embeddings, assert_republishes_identical, assert_stored_state
from tests.integration.test_worker_crash import uninterrupted_run

SESSION_TIMEOUT_S = 60.0  # the default: what a dynamic member's restart waits out
RATE = 30.0


def first_new_embedding(out: TopicReader, since: float, timeout: float) -> float:
    """Wall-clock time when the first embedding computed after ``since`` (a new process's) was read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out.poll(0.2)
        if any(e.computed_at > since for e in out.embeddings()):
            return time.time()
    raise AssertionError(f"no embedding computed after the kill within {timeout:.0f}s")


def test_sigkill_then_restart_resumes_well_within_the_session_timeout(broker, unique, tmp_path):
    lines = list(generate_events(GeneratorSpec(users=40, items=120, events=2000, seed=71)))
    events_path = str(write_jsonl(tmp_path / "events.jsonl", lines))
    expected, reference = uninterrupted_run(events_path, tmp_path)

    env = worker_env(broker, unique, tmp_path / "state", batch_size=16)
    settings = Settings.from_env(env)
    assert settings.session_timeout_s == SESSION_TIMEOUT_S and settings.static_membership
    out = TopicReader(broker, settings.output_topic)
    producer = BackgroundProducer(events_path, settings, rate=RATE).start()
    worker = WorkerProcess(env, tmp_path / "worker-1.log").start()
    try:
        worker.wait_healthy(timeout=90)
        out.until(lambda r: len(r.messages) >= 30, timeout=60, what="the first embeddings")
        assert sigkill(worker) == -9
        killed_at = time.time()
        assert producer.running, "the stream ended before the kill"
        worker = WorkerProcess(env, tmp_path / "worker-2.log").start()
        resumed_s = first_new_embedding(out, killed_at, timeout=2 * SESSION_TIMEOUT_S) - killed_at
        producer.join(timeout=180)
        out.until(reached(expected), timeout=120, what="every user's final embedding after the restart")
        views = stored_embeddings(worker, sorted(expected))
    finally:
        if worker.proc is not None and worker.proc.poll() is None:
            assert worker.stop() == 0, worker.log()
    out.poll(1.0)
    out.close()

    # A dynamic member would get nothing before the dead member's session (60 s) expired.
    assert resumed_s < 0.75 * SESSION_TIMEOUT_S, f"first new embedding {resumed_s:.1f}s after the kill"
    published = out.embeddings()
    assert_final_embeddings(published, expected)
    repeats = assert_republishes_identical(published, expected, reference)
    assert_stored_state(views, expected)
    print(f"first new embedding {resumed_s:.1f}s after kill -9; {len(published)} published, {repeats} repeats")
