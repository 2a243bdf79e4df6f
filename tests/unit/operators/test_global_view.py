"""The global item view: built from hand-made histories, served from the checkpoint, incremental ≡ full."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from graph_state import GraphConfig, MemoryStore, UserGraph, decode, encode
from operators import Checkpoint, Embedder, EncoderConfig, IncrementalPolicy, graphs_to_batch
from operators.explain import explain
from operators.global_view import GlobalView, build_global_view
from operators.item_features import ItemFeatures
from operators.item_index import ItemIndex
from operators.offline.datasets import Case, pack_prefix_graphs
from operators.offline.evaluation import GraphScorer
from operators.offline.global_view_folds import (
    OutOfFoldGraphs,
    first_block,
    fold_of_histories,
    pack_by_fold,
    stacked_views,
)
from operators.offline.head_training import embed_examples
from operators.offline.labels import next_action_examples
from stream_app import Pipeline, RawRecord
from tests.conftest import Ev, random_stream, to_json

A, B, C, D = 0, 1, 2, 3


def weights(view: GlobalView, row: int) -> list[tuple[int, float]]:
    return [(n, round(w, 6)) for n, w in view.neighbours_of(row)]


def test_neighbour_weights_of_hand_made_histories():
    # window 2: a pair one step apart adds 1, two steps apart 1/2, in both directions.
    #   a-b: a→b twice (1 + 1) = 2;  b-c: 1;  a-c: c→a (1) + a _ c (1/2) = 1.5
    view = build_global_view([[A, B, C], [A, B], [C, A]], n_rows=5, k=8, window=2)
    assert weights(view, A) == [(B, round(2 / 3.5, 6)), (C, round(1.5 / 3.5, 6))]
    assert weights(view, B) == [(A, round(2 / 3, 6)), (C, round(1 / 3, 6))]
    assert weights(view, C) == [(A, 0.6), (B, 0.4)]
    assert weights(view, D) == [] and weights(view, 4) == []
    assert view.offsets.tolist() == [0, 2, 4, 6, 6, 6]


def test_window_one_keeps_direct_transitions_and_k_keeps_the_heaviest():
    view = build_global_view([[A, B, C], [A, B], [C, A]], n_rows=4, k=1, window=1)
    # a-b 2, b-c 1, c-a 1: c's two neighbours tie at 1 and the lower row wins.
    assert [weights(view, r) for r in (A, B, C, D)] == [[(B, 1.0)], [(A, 1.0)], [(A, 1.0)], []]


def test_repeats_and_other_histories_are_not_transitions():
    # a a b: the repeat is no pair; a→b at distances 1 and 2. The end of one history and the
    # start of the next are never paired.
    view = build_global_view([[A, A, B], [C], [D, C]], n_rows=4, k=4, window=2)
    assert weights(view, A) == [(B, 1.0)]
    assert weights(view, B) == [(A, 1.0)]
    assert weights(view, C) == [(D, 1.0)]
    assert len(build_global_view([[A], []], n_rows=4, k=4).neighbours) == 0
    with pytest.raises(ValueError, match="global_k"):
        build_global_view([[A, B]], n_rows=4, k=-1)
    with pytest.raises(ValueError, match="global_window"):
        EncoderConfig(global_k=2, global_window=0)


VOCAB = [f"i{n}" for n in range(30)]
HISTORIES = [[f"i{(3 * u + t) % 30}" for t in range(8)] for u in range(12)]


def global_model(
    config: EncoderConfig, seed: int = 1, features: ItemFeatures | None = None, vocab: list[str] = VOCAB
) -> Checkpoint:
    index = ItemIndex(vocab, config.hash_buckets)
    view = build_global_view((index.rows(h) for h in HISTORIES), index.n_rows, config.global_k, config.global_window)
    return Checkpoint.seeded(config, seed=seed, vocab=vocab, features=features, global_view=view)


def graph(items: list[str]) -> UserGraph:
    g = UserGraph(GraphConfig())
    for n, item in enumerate(items):
        g.apply(Ev(str(n), item, ts=float(n)))
    return g


def test_node_inputs_add_the_projected_weighted_mean_of_the_neighbours():
    ckpt = global_model(EncoderConfig(dim=8, hash_buckets=4, norm_scale=10.0, global_k=3))
    enc = ckpt.encoder
    view = enc.global_view()
    assert view is not None and ckpt.config.to_dict()["global_k"] == 3
    rows = torch.tensor([ckpt.index.row("i4"), ckpt.index.row("never-seen")])
    with torch.no_grad():
        got = enc.global_context(rows)
        own = [(n, w) for n, w in view.neighbours_of(int(rows[0]))]
        assert [n for n, _ in own] == [ckpt.index.row("i3"), ckpt.index.row("i5")]
        mean = sum(w * F.normalize(enc.item_emb.weight[n], dim=-1) for n, w in own)
        torch.testing.assert_close(got[0], enc.global_lin(mean))
        assert torch.equal(got[1], torch.zeros(8))  # a hashed row has no neighbours
        torch.testing.assert_close(enc.global_terms(rows), got)  # served from the table of every row
        assert enc._global_terms is not None and enc._global_terms.shape == (ckpt.index.n_rows, 8)
    enc.train()
    assert enc._global_terms is None  # training invalidates it
    enc.eval()
    # The scoring side is untouched: targets are the items' own vectors.
    plain = Checkpoint.seeded(EncoderConfig(dim=8, hash_buckets=4, norm_scale=10.0), seed=1, vocab=VOCAB)
    torch.testing.assert_close(ckpt.encoder.item_vectors(), plain.encoder.item_vectors())
    assert Embedder(ckpt).embed_many([graph(["i1", "zzz", "i4"])]).shape == (1, 8)


def test_the_checkpoint_carries_the_view_and_older_configs_keep_their_version(tmp_path):
    ckpt = global_model(EncoderConfig(dim=8, hash_buckets=4, global_k=2, global_window=2), seed=3)
    ckpt.save(tmp_path / "m.ckpt")
    loaded = Checkpoint.load(tmp_path / "m.ckpt")
    assert loaded.model_version == ckpt.model_version
    assert loaded.config.global_k == 2 and loaded.config.global_window == 2
    graphs = [graph(["i1", "i2", "i9", "i1"]), graph(["i7", "zzz"])]
    np.testing.assert_array_equal(Embedder(loaded).embed_many(graphs), Embedder(ckpt).embed_many(graphs))
    # The view is model content: another view, another version; no view, the plain model's version.
    other = Checkpoint.seeded(
        ckpt.config, seed=3, vocab=VOCAB, global_view=build_global_view([[0, 1]], ckpt.index.n_rows, k=2)
    )
    assert other.model_version != ckpt.model_version
    assert "global_k" not in EncoderConfig().to_dict() and "global_window" not in EncoderConfig().to_dict()
    assert Checkpoint.seeded().model_version == "2c6617ada494c53d"
    with pytest.raises(ValueError, match="global view"):
        Checkpoint.seeded(EncoderConfig(dim=8, global_k=2))


ALWAYS = IncrementalPolicy(full_share=1.0, min_nodes=1)
SIDE_FEATURES = ItemFeatures.from_tokens({f"i{n}": [f"g={n % 3}"] for n in range(20)}, "mem")
GLOBAL_MODELS = [
    global_model(EncoderConfig(dim=16, layers=1, norm_scale=10.0, global_k=4), seed=5),
    global_model(EncoderConfig(dim=16, layers=2, global_k=2, global_window=3), seed=6, features=SIDE_FEATURES),
    global_model(EncoderConfig(dim=16, layers=1, similarity_k=2, global_k=3), seed=7),
]


def check_incremental_equals_full(seed: int, n: int, max_nodes: int, batch_size: int, ckpt: Checkpoint) -> dict:
    events = random_stream(seed, n, n_users=3, n_items=34)  # i30..i33: outside the vocabulary
    store = MemoryStore(GraphConfig(max_nodes=max_nodes))
    pipeline = Pipeline(store, Embedder(ckpt, ALWAYS))
    records = [RawRecord(to_json(ev)) for ev in events]
    for start in range(0, len(records), batch_size):
        result = pipeline.process(records[start : start + batch_size])
        pipeline.commit(result)
        for emb in result.embeddings:
            stored = store.get_many([emb.user_id])[emb.user_id]
            fresh = decode(encode(stored), stored.config)
            fresh.cache_key, fresh.cache = "", b""
            np.testing.assert_allclose(emb.embedding, Embedder(ckpt).embed_one(fresh), atol=1e-5)
    return dict(pipeline.embedder.incremental.stats)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    n=st.integers(5, 120),
    max_nodes=st.integers(2, 25),
    batch_size=st.integers(1, 20),
    model=st.integers(0, 2),
)
def test_incremental_equals_full_with_a_global_view(seed, n, max_nodes, batch_size, model):
    check_incremental_equals_full(seed, n, max_nodes, batch_size, GLOBAL_MODELS[model])


def test_a_global_view_keeps_the_incremental_path():
    # It changes node inputs only, as side features do: no reason to fall back to full recomputes.
    stats = check_incremental_equals_full(1, 150, 25, 2, GLOBAL_MODELS[1])
    assert stats["incremental"] > 0


def test_explanations_stay_additive_with_a_global_view():
    ckpt = GLOBAL_MODELS[1]
    parts = explain(ckpt, graph(["i1", "i2", "i3", "x", "i1", "i4"]))
    assert abs(sum(p.share for p in parts) - 1.0) < 1e-4 and len(parts) == 5
    b = graphs_to_batch([graph(["i1", "i2"])], ckpt.index)
    with torch.no_grad():
        assert ckpt.encoder.node_inputs(b).shape == (2, 16)


def test_out_of_fold_views_leave_each_folds_own_transitions_out():
    histories = [[A, B], [B, C], [C, D], [A, B]]
    folds = np.array([0, 1, 0, 1])
    view = stacked_views(histories, 4, k=4, window=1, folds=folds, n_folds=2)
    served = first_block(view, 4)
    assert served.offsets.tolist() == build_global_view(histories, 4, k=4).offsets.tolist()
    assert weights(served, B) == [(A, round(2 / 3, 6)), (C, round(1 / 3, 6))]
    # Block f + 1 (rows (f + 1) * 4 + r) is the view without fold f.
    assert weights(view, 4 + B) == [(A, 0.5), (C, 0.5)]  # fold 0 left out: [b c], [a b]
    assert weights(view, 4 + D) == []
    assert weights(view, 8 + B) == [(A, 1.0)]  # fold 1 left out: [a b], [c d]
    assert weights(view, 8 + C) == [(D, 1.0)]


def test_out_of_fold_batches_read_their_folds_block():
    config = GraphConfig()
    index = ItemIndex(VOCAB, 4)
    histories = [[Ev(f"{u}-{t}", item, ts=float(t)) for t, item in enumerate(h)] for u, h in enumerate(HISTORIES)]
    folds = fold_of_histories(len(histories), 3, seed=0)
    assert sorted(np.bincount(folds).tolist()) == [4, 4, 4]
    packed, graph_folds = pack_by_fold(histories, folds, 3, lambda part: pack_prefix_graphs(part, config, index))
    reordered = pack_prefix_graphs(
        [h for f in range(3) for h, g in zip(histories, folds, strict=True) if g == f], config, index
    )
    for name in ("item_rows", "node_ptr", "src", "dst", "edge_ptr", "last", "targets"):
        assert np.array_equal(getattr(packed, name), getattr(reordered, name)), name
    assert len(graph_folds) == len(packed) == 12 * 7
    data = OutOfFoldGraphs(packed, graph_folds, index.n_rows)
    sel = np.array([5, 30, 70, 1])
    b, rows = data.batch(sel)
    node_fold = np.repeat(graph_folds[sel], np.diff(b.ptr.numpy()))
    assert rows.tolist() == (b.item_rows.numpy() + (node_fold + 1) * index.n_rows).tolist()


def test_a_live_swap_to_and_from_a_model_with_a_global_view():
    plain = Checkpoint.seeded(EncoderConfig(dim=16, layers=1, norm_scale=10.0), seed=5, vocab=VOCAB)
    models = [plain, GLOBAL_MODELS[0], plain]  # the global one has the same shape plus its view
    config = GraphConfig(max_nodes=12)
    pipeline = Pipeline(MemoryStore(config), Embedder(plain, ALWAYS))
    events = random_stream(5, 360, n_users=6, n_items=34)
    for n, start in enumerate(range(0, len(events), 40)):
        serving = models[n // 3]
        if n % 3 == 0 and n > 0:
            pipeline.swap_model(Embedder(serving, ALWAYS))
        result = pipeline.process([RawRecord(to_json(ev)) for ev in events[start : start + 40]])
        pipeline.commit(result)
        for emb in result.embeddings:
            assert emb.model_version == serving.model_version
            stored = pipeline.store.get_many([emb.user_id])[emb.user_id]
            fresh = decode(encode(stored), stored.config)
            fresh.cache_key, fresh.cache = "", b""
            np.testing.assert_allclose(emb.embedding, Embedder(serving).embed_one(fresh), atol=1e-5)


def test_label_head_features_are_the_served_vectors_of_a_global_model():
    ckpt = GLOBAL_MODELS[1]
    histories = {
        u: [
            Ev(f"{u}-{t}", item, action=("cart" if t % 3 else "view"), ts=float(t), user_id=u)
            for t, item in enumerate(h)
        ]
        for u, h in ((f"u{n}", h) for n, h in enumerate(HISTORIES))
    }
    examples = next_action_examples(histories, "cart")[:30]
    vectors = embed_examples(ckpt, histories, examples, batch_size=7)
    cases = [Case(e.user_id, histories[e.user_id][: e.length], "") for e in examples]
    np.testing.assert_allclose(vectors, GraphScorer(ckpt).user_vectors(cases), atol=1e-5)
