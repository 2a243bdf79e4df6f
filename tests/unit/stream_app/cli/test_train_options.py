"""``ripple train --item-features/--similarity-k/--global-k``: the checkpoint records them; every runner serves it."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from operators.checkpoint import Checkpoint
from operators.offline.datasets import Case
from operators.offline.evaluation import GraphScorer
from stream_app.cli import app
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.files.histories import read_histories
from tests.conftest import read_latest, write_jsonl

SPEC = GeneratorSpec(users=40, items=30, events=800, seed=3, successors=2, follow=0.8)


def test_train_with_side_features_and_similarity_edges_then_evaluate_and_replay(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", list(generate_events(SPEC)))
    histories, _ = read_histories(events, "jsonl", Settings.from_env({}))
    items = sorted({ev.item_id for h in histories.values() for ev in h})
    lines = [json.dumps({"item_id": it, "genre": [f"g{n % 4}"], "year": 1990 + n % 3}) for n, it in enumerate(items)]
    features = tmp_path / "items.jsonl"
    features.write_text("\n".join(lines[:-5]) + "\n")  # the last five items have no features
    model = tmp_path / "m.ckpt"
    common = ["--data", events, "--format", "jsonl"]
    options = ["--epochs", "1", "--dim", "16", "--no-progress", "--similarity-k", "3"]
    runner = CliRunner()
    res = runner.invoke(app, ["train", *common, "--out", str(model), *options, "--item-features", str(features)])
    assert res.exit_code == 0, res.output
    ckpt = Checkpoint.load(model)
    assert ckpt.config.similarity_k == 3 and ckpt.config.item_features.startswith("items.jsonl:")
    expected = [f"genre=g{n}" for n in range(4)] + [f"year={1990 + n}" for n in range(3)]
    assert sorted(ckpt.feature_tokens) == sorted(expected)

    out = tmp_path / "eval.json"
    res = runner.invoke(app, ["evaluate", "--model", str(model), *common, "--baselines", "", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["results"][0]["name"] == "GCN+sim3+feat (m.ckpt)"

    features.unlink()  # serving needs the checkpoint only
    settings = Settings.from_env({}, state_dir=str(tmp_path / "state"), model_path=str(model), batch_size=50)
    replay(events, "jsonl", str(tmp_path / "emb.jsonl"), settings, progress=False)
    published = read_latest(tmp_path / "emb.jsonl")
    users = sorted(histories)
    cases = [Case(u, histories[u], histories[u][-1].item_id) for u in users]
    evaluated = GraphScorer(ckpt).user_vectors(cases)
    streamed = np.asarray([published[u].embedding for u in users], dtype=np.float32)
    np.testing.assert_allclose(streamed, evaluated, atol=1e-5)


def test_train_with_a_global_view_then_evaluate_and_replay(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", list(generate_events(SPEC)))
    histories, _ = read_histories(events, "jsonl", Settings.from_env({}))
    model = tmp_path / "g.ckpt"
    common = ["--data", events, "--format", "jsonl"]
    options = ["--epochs", "1", "--dim", "16", "--no-progress", "--global-k", "4", "--global-window", "2"]
    runner = CliRunner()
    res = runner.invoke(app, ["train", *common, "--out", str(model), *options])
    assert res.exit_code == 0, res.output
    assert "global view:" in res.output
    ckpt = Checkpoint.load(model)
    view = ckpt.encoder.global_view()
    assert (ckpt.config.global_k, ckpt.config.global_window) == (4, 2) and view is not None
    assert 0 < len(view.neighbours) <= 4 * len(ckpt.index.vocab)

    out = tmp_path / "eval.json"
    res = runner.invoke(app, ["evaluate", "--model", str(model), *common, "--baselines", "", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["results"][0]["name"] == "GCN+global4 (g.ckpt)"

    settings = Settings.from_env({}, state_dir=str(tmp_path / "state"), model_path=str(model), batch_size=50)
    replay(events, "jsonl", str(tmp_path / "emb.jsonl"), settings, progress=False)
    published = read_latest(tmp_path / "emb.jsonl")
    users = sorted(histories)
    cases = [Case(u, histories[u], histories[u][-1].item_id) for u in users]
    streamed = np.asarray([published[u].embedding for u in users], dtype=np.float32)
    np.testing.assert_allclose(streamed, GraphScorer(ckpt).user_vectors(cases), atol=1e-5)
    assert {published[u].model_version for u in users} == {ckpt.model_version}
