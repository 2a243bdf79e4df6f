"""``fit_mix``: the weight it picks is the best of the serving path's own validation metrics, and it refuses
checkpoints of other data."""

from __future__ import annotations

import dataclasses

import pytest

from graph_state import GraphConfig
from operators.checkpoint import Checkpoint
from operators.encoder import EncoderConfig
from operators.offline.datasets import leave_one_out
from operators.offline.evaluation import GraphScorer, evaluate
from operators.offline.knn_mix import fit_mix
from operators.session_knn import KNNMix
from stream_app.core.settings import Settings
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.files.histories import read_histories
from tests.conftest import write_jsonl


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    path = tmp_path_factory.mktemp("mix") / "events.jsonl"
    write_jsonl(path, list(generate_events(GeneratorSpec(users=80, items=40, events=2400, seed=7, successors=2))))
    histories, _ = read_histories(path, "jsonl", Settings.from_env({}))
    return leave_one_out(histories)


def test_the_chosen_weight_is_the_best_validation_score_of_the_served_mix(split):
    plain = Checkpoint.seeded(EncoderConfig(dim=16, norm_scale=10.0), seed=3, vocab=split.vocab)
    weights = [0.0, 0.5, 4.0, 64.0]
    fit = fit_mix(plain, split, "stan", weights, knn_cases=200, weight_cases=200, seed=0)
    assert sorted(fit.valid) == weights and fit.cases == len(split.valid) <= 200
    # an untrained encoder is noise: the kNN term wins, and the written model carries it
    mix = fit.checkpoint.knn_mix
    assert fit.weight > 0 and mix is not None and mix.weight == fit.weight and mix.knn.config == fit.tuned.config
    best = max(fit.valid.values(), key=lambda m: m["recall@20"] + m["mrr@20"])
    assert fit.valid[fit.weight] == best
    # each weight's metrics are those of a checkpoint serving that mix, evaluated as `ripple evaluate` does
    for w in weights[1:]:
        served = dataclasses.replace(plain, knn_mix=KNNMix(mix.knn, w))
        report = evaluate(GraphScorer(served, GraphConfig()), split.valid, (10, 20))
        for name in ("recall@20", "mrr@20", "ndcg@10"):
            assert report.metrics[name] == pytest.approx(fit.valid[w][name], abs=1e-9), (w, name)
    assert fit.checkpoint.training["knn_mix"]["weight"] == fit.weight
    assert fit.checkpoint.model_version != plain.model_version


def test_the_gcn_alone_when_only_weight_zero_is_offered(split):
    plain = Checkpoint.seeded(EncoderConfig(dim=16), seed=3, vocab=split.vocab)
    fit = fit_mix(plain, split, "sknn", [0.0], knn_cases=50, weight_cases=50)
    assert fit.weight == 0 and fit.checkpoint is plain


def test_a_checkpoint_of_other_data_or_bad_weights_are_refused(split):
    other = Checkpoint.seeded(EncoderConfig(dim=16), seed=3, vocab=split.vocab[:-1])
    with pytest.raises(ValueError, match=r"not this split's .* pass the --data, --format, --val-share and --seed"):
        fit_mix(other, split)
    plain = Checkpoint.seeded(EncoderConfig(dim=16), seed=3, vocab=split.vocab)
    with pytest.raises(ValueError, match="weights must be numbers >= 0"):
        fit_mix(plain, split, weights=[1.0, -2.0])
