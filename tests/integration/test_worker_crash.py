"""`kill -9` of the worker at random moments of a live stream, restarted each time on the same state.

While a background producer keeps the stream arriving, the worker is SIGKILLed at seeded
random moments (no offset commit, no producer flush, no leaving the group) and restarted on
the same state directory. At the end:

- every user's last published embedding is the one of an uninterrupted run (the file runner:
  Kafka path equals file path), at the same ``state_version`` — no applied event lost;
- a (user_id, state_version) published more than once always carries the same vector, and
  vectors agree with the uninterrupted run wherever both published the same version;
- the table (and its changelog) holds every user's uninterrupted-run state: a worker that
  starts on an empty state directory rebuilds it from the changelog alone.
"""

from __future__ import annotations

import random
import time

import msgspec

from bench.worker_process import (
    BackgroundProducer,
    TopicReader,
    WorkerProcess,
    latest_by_user,
    reached,
    sigkill,
    stored_embeddings,
    worker_env,
)
from stream_app.core.records import UserEmbedding
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.generate import GeneratorSpec, generate_events
from tests.conftest import write_jsonl
from tests.integration.expectations import assert_final_embeddings, assert_republishes_identical, assert_stored_state

SEED = 61
KILLS = 5
EVENTS = 3000
RATE = 25.0  # events/s until the last kill (a restart takes ~15 s here), then the rest at once
SESSION_TIMEOUT_S = 6  # the broker's minimum: a restarted worker waits this long for its dead predecessor


def uninterrupted_run(events_path: str, tmp_path) -> tuple[dict[str, UserEmbedding], list[UserEmbedding]]:
    """The file runner on the same events: final embedding per user, and everything it published."""
    out = tmp_path / "file.out"
    replay(
        events_path, "jsonl", str(out), Settings.from_env({}, state_dir=str(tmp_path / "file-state")), progress=False
    )
    with open(out, "rb") as f:
        published = [msgspec.json.decode(line, type=UserEmbedding) for line in f]
    return latest_by_user(published), published


def test_sigkill_at_random_moments_then_restart_equals_an_uninterrupted_run(broker, unique, tmp_path):
    rng = random.Random(SEED)
    lines = list(generate_events(GeneratorSpec(users=40, items=120, events=EVENTS, seed=SEED)))
    events_path = str(write_jsonl(tmp_path / "events.jsonl", lines))
    expected, reference = uninterrupted_run(events_path, tmp_path)

    env = worker_env(broker, unique, tmp_path / "state", batch_size=16, session_timeout_s=SESSION_TIMEOUT_S)
    settings = Settings.from_env(env)
    out = TopicReader(broker, settings.output_topic)
    producer = BackgroundProducer(events_path, settings, rate=RATE).start()
    kills: list[tuple[float, int, int, bool]] = []  # (s after healthy, events sent, outputs seen, stream running)
    worker = None
    try:
        for run in range(KILLS + 1):
            worker = WorkerProcess(env, tmp_path / f"worker-{run}.log").start()
            worker.wait_healthy(timeout=90)
            if run == KILLS:
                break
            # A seeded random moment after the worker came up: mid-batch, mid-publish or mid-commit.
            delay = rng.uniform(0.3, 3.0)
            time.sleep(delay)
            assert worker.proc is not None and worker.proc.poll() is None, worker.log()
            running, sent = producer.running, producer.sent
            assert sigkill(worker) == -9
            out.poll(0.2)
            kills.append((round(delay, 2), sent, len(out.messages), running))
        producer.join(timeout=120)
        out.until(reached(expected), timeout=120, what="every user's final embedding after the last restart")
        views = stored_embeddings(worker, sorted(expected))
    finally:
        if worker is not None and worker.proc is not None and worker.proc.poll() is None:
            assert worker.stop() == 0, worker.log()
    out.poll(1.0)

    assert len(kills) == KILLS
    assert all(running for *_, running in kills), f"a kill landed after the stream ended: {kills}"
    assert kills[-1][2] > kills[0][2], f"no progress between kills: {kills}"
    published = out.embeddings()
    assert_final_embeddings(published, expected)
    repeats = assert_republishes_identical(published, expected, reference)
    assert_stored_state(views, expected)

    # The changelog alone rebuilds the same state: nothing was kept only in the killed workers' RocksDB.
    rebuilt = WorkerProcess(
        {**env, "RIPPLE_STATE_DIR": str(tmp_path / "fresh-state")}, tmp_path / "worker-rebuilt.log"
    ).start()
    try:
        rebuilt.wait_healthy(timeout=90)
        assert_stored_state(stored_embeddings(rebuilt, sorted(expected)), expected)
    finally:
        assert rebuilt.stop() == 0, rebuilt.log()
        out.close()
    print(
        f"kills (s after healthy, events sent, outputs seen, running): {kills}; {len(published)} out, {repeats} repeats"
    )
