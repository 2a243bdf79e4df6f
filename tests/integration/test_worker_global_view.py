"""A model with a global item view on the real broker: the worker publishes the file runner's vectors.

The global view (:mod:`operators.global_view`) travels in the checkpoint; neither runner sees the
training histories it was built from, so equal vectors mean both serve the stored table as is.
"""

from __future__ import annotations

from operators.checkpoint import Checkpoint
from operators.encoder import EncoderConfig
from operators.global_view import build_global_view
from operators.item_index import ItemIndex
from tests.integration.expectations import assert_final_embeddings
from tests.integration.runs import generated, run_both


def test_a_checkpoint_with_a_global_view_serves_the_same_vectors_through_the_worker_and_the_file_runner(
    broker, unique, tmp_path
):
    events_path, histories, vocab = generated(tmp_path)
    config = EncoderConfig(dim=16, layers=1, norm_scale=10.0, hash_buckets=64, global_k=4, global_window=2)
    index = ItemIndex(vocab, config.hash_buckets)
    rows = [index.rows([ev.item_id for ev in events[: len(events) // 2]]) for events in histories.values()]
    view = build_global_view(rows, index.n_rows, config.global_k, config.global_window)
    assert len(view.neighbours) > 0
    model = tmp_path / "model.ckpt"
    version = Checkpoint.seeded(config, seed=4, vocab=vocab, global_view=view).save(model)

    run = run_both(broker, unique, tmp_path, events_path, model)
    assert_final_embeddings(run.published, run.expected)
    assert {emb.model_version for emb in run.published} == {version}
