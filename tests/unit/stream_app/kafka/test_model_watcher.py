"""Live model swap without a broker: the file watcher, the pipeline's swap, the worker's lock.

The real-broker test (swap mid-stream, versions switch once per user) is
tests/integration/test_model_swap.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import numpy as np
import pytest

from graph_state import GraphConfig, MemoryStore, UserGraph
from operators import Checkpoint, Embedder, EncoderConfig, IncrementalPolicy
from operators.graph_settings import graph_config_dict
from stream_app import Pipeline, RawRecord
from stream_app.core.metrics import Metrics
from stream_app.core.settings import Settings
from stream_app.kafka.model_swap import REJECTED, SWAPPED, UNCHANGED, ModelWatcher, file_stamp
from tests.conftest import random_stream, to_json

CONFIG = EncoderConfig(dim=16, layers=2)


def seeded(seed: int, **config: object) -> Checkpoint:
    return Checkpoint.seeded(EncoderConfig(**{**CONFIG.to_dict(), **config}), seed=seed)


def replace_bytes(path: str, data: bytes) -> None:
    """What a careful operator does: write beside, then rename over (atomic)."""
    with open(path + ".new", "wb") as f:
        f.write(data)
    os.replace(path + ".new", path)


def reloads(metrics: Metrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("ripple_model_reloads_total", {"outcome": outcome}) or 0.0


@pytest.fixture
def model(tmp_path) -> str:
    path = str(tmp_path / "model.ckpt")
    seeded(1).save(path)
    return path


def watcher_for(path: str, **overrides: object) -> tuple[ModelWatcher, Metrics]:
    metrics = Metrics()
    return ModelWatcher(Settings.from_env({}, model_path=path, **overrides), metrics), metrics


def test_an_unchanged_file_is_not_read_again(model):
    watcher, metrics = watcher_for(model)
    assert watcher.poll(seeded(1).model_version) is None
    assert not watcher.changed() and metrics.registry.get_sample_value("ripple_model_reloads_total") is None


def test_a_new_checkpoint_comes_back_validated_and_ready_to_serve(model):
    watcher, metrics = watcher_for(model)
    new = seeded(2)
    new.save(model)
    assert watcher.changed()
    result = watcher.poll(seeded(1).model_version)
    assert result is not None and result.outcome == SWAPPED and result.detail == new.model_version
    assert result.embedder is not None and result.embedder.model_version == new.model_version
    assert watcher.poll(seeded(1).model_version) is None  # seen: not loaded twice
    # The counter of swaps is the worker's (it counts once the swap happened), not the watcher's.
    assert reloads(metrics, SWAPPED) == 0


def test_the_same_model_written_again_changes_nothing(model):
    watcher, metrics = watcher_for(model)
    seeded(1).save(model)  # new inode and mtime, same content
    result = watcher.poll(seeded(1).model_version)
    assert result is not None and result.outcome == UNCHANGED and result.embedder is None
    assert reloads(metrics, UNCHANGED) == 1


@pytest.mark.parametrize(
    "bad, cause",
    [
        (lambda path: replace_bytes(path, b"\x00garbage, not a checkpoint" * 40), "cannot be read"),
        (lambda path: replace_bytes(path, open(path, "rb").read()[:1500]), "cannot be read"),  # truncated
        (lambda path: os.remove(path), "the file is gone"),
    ],
    ids=["corrupt", "truncated", "deleted"],
)
def test_an_unreadable_file_is_rejected_once_with_cause_and_fix(model, caplog, bad, cause):
    watcher, metrics = watcher_for(model)
    serving = seeded(1).model_version
    bad(model)
    with caplog.at_level(logging.ERROR, logger="ripple.model_swap"):
        result = watcher.poll(serving)
    assert result is not None and result.outcome == REJECTED and result.embedder is None
    (record,) = caplog.records
    line = record.getMessage()
    assert line.startswith(f"model reload rejected: {model}: ") and cause in line
    assert f"keeps serving model {serving}" in line and "mv" in line  # the fix: write atomically
    assert reloads(metrics, REJECTED) == 1
    assert watcher.poll(serving) is None and reloads(metrics, REJECTED) == 1  # not retried until it changes
    seeded(3).save(model)
    fixed = watcher.poll(serving)
    assert fixed is not None and fixed.outcome == SWAPPED


def test_a_checkpoint_trained_on_other_graph_settings_is_rejected_naming_them(model, caplog):
    watcher, metrics = watcher_for(model)  # the worker builds graphs of 50 nodes
    other = seeded(4)
    other.training = {"graph": graph_config_dict(GraphConfig(max_nodes=20, decay_seconds=600.0))}
    other.save(model)
    with caplog.at_level(logging.ERROR, logger="ripple.model_swap"):
        result = watcher.poll(seeded(1).model_version)
    assert result is not None and result.outcome == REJECTED
    assert "RIPPLE_MAX_NODES=20 RIPPLE_DECAY_SECONDS=600" in result.detail  # what the model was trained with
    assert "RIPPLE_MAX_NODES=50 RIPPLE_DECAY_SECONDS=3600" in result.detail  # what the worker has
    line = caplog.records[0].getMessage()
    assert "retrain" in line and "atomically" not in line and reloads(metrics, REJECTED) == 1

    matching = seeded(4)
    matching.training = {"graph": graph_config_dict(Settings.from_env({}).graph_config())}
    matching.save(model)
    result = watcher.poll(seeded(1).model_version)
    assert result is not None and result.outcome == SWAPPED


def test_a_checkpoint_with_another_action_vocabulary_is_rejected(model):
    watcher, _ = watcher_for(model)
    seeded(5, actions=("view", "buy", "other")).save(model)
    result = watcher.poll(seeded(1).model_version)
    assert result is not None and result.outcome == REJECTED and "RIPPLE_ACTIONS" in result.detail


def test_a_watcher_needs_a_model_file():
    with pytest.raises(ValueError, match="RIPPLE_MODEL_PATH"):
        ModelWatcher(Settings.from_env({}))
    assert file_stamp("/nonexistent/model.ckpt") is None


def test_after_a_swap_every_user_is_recomputed_fully_with_the_new_model():
    """The per-node layer caches are keyed by model_version: none of the old model's is reused."""
    policy = IncrementalPolicy(min_nodes=1, full_share=1.0)  # incremental whenever a cache allows
    old, new = Embedder(seeded(1), policy), Embedder(seeded(2), policy)
    metrics = Metrics()
    config = GraphConfig(max_nodes=12)
    pipeline = Pipeline(MemoryStore(config), old, metrics=metrics)
    events = random_stream(5, 400, n_users=6, n_items=40)
    batches = [events[i : i + 50] for i in range(0, len(events), 50)]

    def run(batch):
        result = pipeline.process([RawRecord(to_json(ev)) for ev in batch])
        pipeline.commit(result)
        return result

    for batch in batches[:4]:
        run(batch)
    assert old.incremental.stats["incremental"] > 0  # the old model did reuse its caches

    assert pipeline.swap_model(new) == old.model_version
    assert metrics.registry.get_sample_value("ripple_model_info", {"model_version": new.model_version}) == 1
    assert metrics.registry.get_sample_value("ripple_model_info", {"model_version": old.model_version}) is None

    result = run(batches[4])
    users = {e.user_id for e in batches[4]}
    assert new.incremental.stats == {**new.incremental.stats, "full": len(users), "incremental": 0}
    assert {e.model_version for e in result.embeddings} == {new.model_version}
    for batch in batches[5:]:
        run(batch)
    assert new.incremental.stats["incremental"] > 0  # and then reuses its own

    graphs: dict[str, UserGraph] = {}
    for ev in events:
        graphs.setdefault(ev.user_id, UserGraph(config)).apply(ev)
    stored = pipeline.store.get_many(list(graphs))
    for uid, graph in graphs.items():
        (published,) = pipeline.embed({uid: stored[uid]})
        np.testing.assert_allclose(published.embedding, new.embed_one(graph), atol=1e-5)


def test_a_swap_to_another_action_vocabulary_is_refused():
    pipeline = Pipeline(MemoryStore(GraphConfig()), Embedder(seeded(1)))
    with pytest.raises(ValueError, match="RIPPLE_ACTIONS"):
        pipeline.swap_model(Embedder(seeded(1, actions=("view", "other"))))
    assert pipeline.embedder.model_version == seeded(1).model_version


def test_the_worker_swaps_between_batches_under_its_lock(tmp_path, model):
    """``reload_model`` loads off the event loop and waits for the batch lock before swapping."""
    from stream_app.kafka.faust_app import build_worker

    settings = Settings.from_env(
        {}, model_path=model, model_poll_s=1.0, state_dir=str(tmp_path / "state"), app_id="swap-unit"
    )
    worker = build_worker(settings)
    assert worker.watcher is not None and worker.pipeline.embedder.model_version == seeded(1).model_version
    seeded(2).save(model)
    loaded = threading.Event()
    poll = worker.watcher.poll

    def poll_and_tell(serving: str):
        try:
            return poll(serving)
        finally:
            loaded.set()

    worker.watcher.poll = poll_and_tell  # type: ignore[method-assign]

    async def scenario() -> list[str]:
        seen: list[str] = []
        async with worker.lock:  # a micro-batch is between process and commit
            reload = asyncio.ensure_future(worker.reload_model())
            while not loaded.is_set():  # the event loop keeps running while the file loads
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            seen.append(worker.pipeline.embedder.model_version)  # loaded, but the swap waits for the lock
        result = await reload
        assert result is not None and result.outcome == SWAPPED
        seen.append(worker.pipeline.embedder.model_version)
        assert await worker.reload_model() is None  # nothing new
        return seen

    assert asyncio.run(scenario()) == [seeded(1).model_version, seeded(2).model_version]
    assert reloads(worker.metrics, SWAPPED) == 1

    off = build_worker(settings.with_overrides(model_poll_s=0, app_id="swap-unit-off"))
    assert off.watcher is None and asyncio.run(off.reload_model()) is None
