"""Training on synthetic events with planted transitions: quality, reproducibility, serving parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from operators.checkpoint import Checkpoint
from operators.encoder import EncoderConfig
from operators.offline.baselines import MostPopular
from operators.offline.datasets import Case, leave_one_out
from operators.offline.evaluation import GraphScorer, evaluate
from operators.offline.training import TrainConfig, curves_path, train_encoder
from stream_app.cli import app
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.files.histories import read_histories
from tests.conftest import read_latest, write_jsonl

SPEC = GeneratorSpec(users=100, items=80, events=4000, seed=7, successors=2, follow=0.85)
SMALL = EncoderConfig(dim=32, layers=1, hash_buckets=16, norm_scale=8.0, dropout=0.0)
FAST = TrainConfig(epochs=5, batch_size=128, lr=5e-3, patience=2, seed=0, progress=False)


@pytest.fixture(scope="module")
def events_file(tmp_path_factory) -> str:
    return write_jsonl(tmp_path_factory.mktemp("data") / "events.jsonl", list(generate_events(SPEC)))


@pytest.fixture(scope="module")
def split(events_file):
    histories, rejected = read_histories(events_file, "jsonl", Settings.from_env({}))
    assert not rejected
    return leave_one_out(histories, "synthetic")


@pytest.fixture(scope="module")
def trained(split, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "gcn.ckpt"
    ckpt, result = train_encoder(split, Settings.from_env({}).graph_config(), SMALL, FAST, str(out))
    return out, ckpt, result


def test_trained_gcn_beats_most_popular_by_a_clear_margin(split, trained):
    path, ckpt, result = trained
    gcn = evaluate(GraphScorer(Checkpoint.load(path)), split.test, ks=(10,))
    pop = evaluate(MostPopular(split), split.test, ks=(10,))
    assert gcn.metrics["recall@10"] >= pop.metrics["recall@10"] + 0.15, (gcn.metrics, pop.metrics)
    assert gcn.metrics["mrr@10"] >= 2 * pop.metrics["mrr@10"], (gcn.metrics, pop.metrics)
    assert result.samples_per_second > 0 and result.best_epoch >= 1
    assert curves_path(str(path)).endswith(".curves.png")
    with open(curves_path(str(path)), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    loaded = Checkpoint.load(path)
    assert loaded.model_version == ckpt.model_version and loaded.fingerprint == "synthetic"
    assert loaded.training["graph"]["max_nodes"] == 50 and loaded.metrics["valid"]["mrr@20"] > 0


def test_training_is_reproducible_with_a_fixed_seed(split):
    graph = Settings.from_env({}).graph_config()
    config = TrainConfig(epochs=1, batch_size=256, lr=5e-3, seed=3, progress=False, negatives=20)
    a, _ = train_encoder(split, graph, SMALL, config)
    b, _ = train_encoder(split, graph, SMALL, config)
    c, _ = train_encoder(split, graph, SMALL, TrainConfig(**{**config.__dict__, "seed": 4}))
    assert a.model_version == b.model_version != c.model_version


def test_file_runner_publishes_exactly_the_evaluated_vectors(events_file, split, trained, tmp_path):
    path, _, _ = trained
    settings = Settings.from_env({}, state_dir=str(tmp_path / "state"), model_path=str(path), batch_size=97)
    replay(events_file, "jsonl", str(tmp_path / "emb.jsonl"), settings, progress=False)
    published = read_latest(tmp_path / "emb.jsonl")
    histories, _ = read_histories(events_file, "jsonl", Settings.from_env({}))
    users = sorted(histories)
    cases = [Case(u, histories[u], histories[u][-1].item_id) for u in users]
    evaluated = GraphScorer(Checkpoint.load(path)).user_vectors(cases)
    streamed = np.asarray([published[u].embedding for u in users], dtype=np.float32)
    np.testing.assert_allclose(streamed, evaluated, atol=1e-5)


def test_cli_trains_and_evaluates_side_by_side(events_file, tmp_path):
    runner = CliRunner()
    model = tmp_path / "m.ckpt"
    common = ["--data", events_file, "--format", "jsonl"]
    res = runner.invoke(app, ["train", *common, "--out", str(model), "--epochs", "2", "--dim", "16", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "eval.json"
    res = runner.invoke(
        app, ["evaluate", "--model", str(model), *common, "--k", "5,10", "--gru-epochs", "1", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(out.read_text())
    names = [r["name"] for r in payload["results"]]
    assert names[0].startswith("GCN") and names[1:] == ["most-popular", "item-transitions", "GRU4Rec"]
    assert set(payload["results"][0]["metrics"]) == {f"{m}@{k}" for m in ("recall", "mrr", "ndcg") for k in (5, 10)}
    assert payload["protocol"] == "leave-one-out" and payload["test_cases"] == SPEC.users


def test_serving_a_checkpoint_on_differently_built_graphs_is_refused_with_the_fix(events_file, trained, tmp_path):
    path, _, _ = trained
    settings = Settings.from_env(
        {"RIPPLE_DECAY_SECONDS": "60", "RIPPLE_MAX_NODES": "20"}, state_dir=str(tmp_path / "s"), model_path=str(path)
    )
    with pytest.raises(ValueError) as err:
        replay(events_file, "jsonl", str(tmp_path / "emb.jsonl"), settings, progress=False)
    message = str(err.value)
    assert "RIPPLE_DECAY_SECONDS=3600" in message and "RIPPLE_MAX_NODES=50" in message
    assert "RIPPLE_DECAY_SECONDS=60" in message and "retrain" in message
    assert not (tmp_path / "emb.jsonl").exists()
