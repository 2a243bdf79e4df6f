"""A model with a global item view on the real broker: the worker publishes the file runner's vectors.

The global view (:mod:`operators.global_view`) travels in the checkpoint; neither runner sees the
training histories it was built from, so equal vectors mean both serve the stored table as is.
"""

from __future__ import annotations

from bench.worker_process import TopicReader, WorkerProcess, reached, worker_env
from operators.checkpoint import Checkpoint
from operators.encoder import EncoderConfig
from operators.global_view import build_global_view
from operators.item_index import ItemIndex
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.files.histories import read_histories
from stream_app.kafka.produce import produce_events
from tests.conftest import read_latest, write_jsonl
from tests.integration.expectations import assert_final_embeddings


def test_a_checkpoint_with_a_global_view_serves_the_same_vectors_through_the_worker_and_the_file_runner(
    broker, unique, tmp_path
):
    lines = list(generate_events(GeneratorSpec(users=30, items=60, events=900, seed=9, successors=2, follow=0.8)))
    events_path = write_jsonl(tmp_path / "events.jsonl", lines)
    histories, _ = read_histories(events_path, "jsonl", Settings.from_env({}))
    vocab = sorted({ev.item_id for events in histories.values() for ev in events})
    config = EncoderConfig(dim=16, layers=1, norm_scale=10.0, hash_buckets=64, global_k=4, global_window=2)
    index = ItemIndex(vocab, config.hash_buckets)
    rows = [index.rows([ev.item_id for ev in events[: len(events) // 2]]) for events in histories.values()]
    view = build_global_view(rows, index.n_rows, config.global_k, config.global_window)
    assert len(view.neighbours) > 0
    model = tmp_path / "model.ckpt"
    version = Checkpoint.seeded(config, seed=4, vocab=vocab, global_view=view).save(model)

    file_settings = Settings.from_env({}, state_dir=str(tmp_path / "file-state"), model_path=str(model))
    replay(events_path, "jsonl", str(tmp_path / "file.out"), file_settings, progress=False)
    expected = read_latest(tmp_path / "file.out")

    env = worker_env(broker, unique, tmp_path / "state", model_path=model)
    settings = Settings.from_env(env)
    produce_events(events_path, "jsonl", settings, progress=False)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    out = TopicReader(broker, settings.output_topic)
    try:
        worker.wait_healthy()
        out.until(reached(expected), timeout=90, what="every user's final embedding")
    finally:
        out.close()
        code = worker.stop()
    assert code == 0, worker.log()
    assert_final_embeddings(out.embeddings(), expected)
    assert {emb.model_version for emb in out.embeddings()} == {version}
