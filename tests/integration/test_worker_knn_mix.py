"""A model with a session-kNN mix on the real broker: the worker publishes the file runner's vectors and
recommendations, and its recommendations view ranks with the mix.

The mix (:class:`operators.session_knn.KNNMix`) travels in the checkpoint; its kNN query is the
user's graph, which both runners keep the same way, so equal recommendations mean both serve it as is.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from bench.worker_process import latest_by_user
from operators.checkpoint import Checkpoint
from operators.encoder import EncoderConfig
from operators.offline.datasets import Case, case_graph
from operators.recommend import ItemRanker
from operators.session_knn import KNNConfig, KNNMix, SessionIndex, SessionKNN
from tests.integration.expectations import assert_final_embeddings
from tests.integration.runs import generated, run_both

TOP = 5


def test_a_checkpoint_with_a_knn_mix_serves_the_same_recommendations_through_the_worker_and_the_file_runner(
    broker, unique, tmp_path
):
    events_path, histories, vocab = generated(tmp_path)
    plain = Checkpoint.seeded(EncoderConfig(dim=16, norm_scale=10.0, hash_buckets=64), seed=4, vocab=vocab)
    halves = [[ev.item_id for ev in events[: len(events) // 2]] for events in histories.values()]
    sessions = SessionIndex(halves, [float(t) for t in range(len(halves))], plain.index)
    stan = KNNConfig("stan", k=10, sample_size=20, lambda_spw=2.0, lambda_inh=4.0)
    mixed = dataclasses.replace(plain, knn_mix=KNNMix(SessionKNN(sessions, stan), 8.0))
    model = tmp_path / "model.ckpt"
    version = mixed.save(model)

    view_path = f"/users/{sorted(histories)[0]}/recommendations?k={TOP}"
    run = run_both(broker, unique, tmp_path, events_path, model, get=(view_path,), recommend_top=TOP)
    expected, (status, body) = run.expected, run.views[view_path]
    assert_final_embeddings(run.published, expected)
    latest = latest_by_user(run.published)
    for uid, want in expected.items():
        got = latest[uid]
        assert got.model_version == version
        assert got.recommendations is not None and want.recommendations is not None
        assert [r.item_id for r in got.recommendations] == [r.item_id for r in want.recommendations], uid
        np.testing.assert_allclose(
            [r.score for r in got.recommendations], [r.score for r in want.recommendations], rtol=1e-4
        )
    # the ranking is the mix's, not user · item alone
    users = sorted(expected)
    vectors = np.asarray([expected[u].embedding for u in users], dtype=np.float32)
    graphs = [case_graph(Case(u, histories[u], ""), run.file_settings.graph_config()) for u in users]
    ranked = ItemRanker(mixed).top(vectors, TOP, graphs=graphs)
    assert [[r.item_id for r in expected[u].recommendations or []] for u in users] == [
        [item for item, _ in items] for items in ranked
    ]
    assert ranked != ItemRanker(plain).top(vectors, TOP)
    assert status == 200, body
    assert [x["item_id"] for x in json.loads(body)["items"]] == [item for item, _ in ranked[0]]
