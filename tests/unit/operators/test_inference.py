from __future__ import annotations

import numpy as np
import pytest
import torch

from graph_state import GraphConfig, UserGraph
from operators import Checkpoint, Embedder, EncoderConfig, ItemIndex, graphs_to_batch
from tests.conftest import random_stream


def user_graphs(seed: int, n_events: int = 120) -> list[UserGraph]:
    graphs: dict[str, UserGraph] = {}
    for ev in random_stream(seed, n_events):
        graphs.setdefault(ev.user_id, UserGraph(GraphConfig(max_nodes=8))).apply(ev)
    return list(graphs.values())


def test_batch_layout_offsets_nodes_and_edges():
    graphs = user_graphs(1)
    b = graphs_to_batch(graphs, ItemIndex())
    assert b.num_graphs == len(graphs)
    assert b.ptr.tolist()[-1] == sum(g.n_nodes for g in graphs) == b.item_rows.shape[0]
    assert b.edge_index.shape[1] == sum(len(g.edges()) for g in graphs)
    # every edge stays inside its own graph
    assert torch.equal(b.batch[b.edge_index[0]], b.batch[b.edge_index[1]])
    assert torch.equal(b.batch[b.last_node], torch.arange(len(graphs)))


@pytest.mark.parametrize("conv", ["gcn", "gat"])
def test_embed_many_equals_one_at_a_time(conv):
    graphs = user_graphs(2)
    embedder = Embedder(Checkpoint.seeded(EncoderConfig(dim=16, conv=conv), seed=3))
    together = embedder.embed_many(graphs)
    alone = np.stack([embedder.embed_one(g) for g in graphs])
    assert together.shape == (len(graphs), 16)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_unseen_items_get_deterministic_hash_rows_and_vocab_items_own_rows():
    index = ItemIndex(["known"], hash_buckets=8)
    assert index.row("known") == 0
    rows = {index.row(f"new-{n}") for n in range(100)}
    assert rows <= set(range(1, 9)) and len(rows) > 4
    assert ItemIndex(["known"], hash_buckets=8).row("new-7") == index.row("new-7")


def test_checkpoint_round_trip_keeps_version_and_outputs(tmp_path):
    ckpt = Checkpoint.seeded(EncoderConfig(dim=8), seed=5, vocab=["a", "b"])
    version = ckpt.save(tmp_path / "m.ckpt")
    loaded = Checkpoint.load(tmp_path / "m.ckpt")
    assert loaded.model_version == version and loaded.index.vocab == ["a", "b"]
    graphs = user_graphs(3)
    np.testing.assert_array_equal(Embedder(ckpt).embed_many(graphs), Embedder(loaded).embed_many(graphs))


def test_checkpoint_errors_name_the_cause(tmp_path):
    with pytest.raises(FileNotFoundError, match="ripple train"):
        Checkpoint.load(tmp_path / "missing.ckpt")
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        Checkpoint.load(tmp_path / "bad.ckpt")


def test_attention_covers_every_node():
    g = user_graphs(4)[0]
    alpha = Embedder(Checkpoint.seeded(EncoderConfig(dim=8))).attention(g)
    assert alpha.shape == (g.n_nodes,)
