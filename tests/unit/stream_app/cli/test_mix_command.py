"""``ripple mix`` end to end on a file: tune, write, evaluate; the file runner and ``ripple recommend`` rank with it."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from operators.checkpoint import Checkpoint
from operators.offline.datasets import Case, case_graph
from operators.offline.evaluation import GraphScorer
from operators.recommend import ItemRanker
from stream_app.cli import app
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.files.histories import read_histories
from tests.conftest import read_latest, write_jsonl

SPEC = GeneratorSpec(users=60, items=40, events=1500, seed=5, successors=2, follow=0.8)
TOP = 5


def test_mix_then_evaluate_and_serve_from_the_file_runner(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", list(generate_events(SPEC)))
    common = ["--data", events, "--format", "jsonl"]
    runner = CliRunner()
    res = runner.invoke(app, ["train", *common, "--out", str(tmp_path / "m.ckpt"), "--epochs", "1", "--dim", "16"])
    assert res.exit_code == 0, res.output
    mixed = tmp_path / "mx.ckpt"
    res = runner.invoke(app, ["mix", "--model", str(tmp_path / "m.ckpt"), *common, "--out", str(mixed)])
    assert res.exit_code == 0, res.output
    assert "STAN: chose" in res.output and "(chosen)" in res.output
    ckpt = Checkpoint.load(mixed)
    assert ckpt.knn_mix is not None and ckpt.training["knn_mix"]["kind"] == "stan"
    res = runner.invoke(app, ["mix", "--model", str(mixed), *common, "--out", str(tmp_path / "again.ckpt")])
    assert res.exit_code == 2 and "already mixes STAN" in res.output

    out = tmp_path / "eval.json"
    res = runner.invoke(app, ["evaluate", "--model", str(mixed), *common, "--baselines", "", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["results"][0]["name"] == f"GCN+STAN w={ckpt.knn_mix.weight:g} (mx.ckpt)"

    settings = Settings.from_env({}, state_dir=str(tmp_path / "state"), model_path=str(mixed), recommend_top=TOP)
    replay(events, "jsonl", str(tmp_path / "emb.jsonl"), settings, progress=False)
    latest = read_latest(tmp_path / "emb.jsonl")
    histories, _ = read_histories(events, "jsonl", Settings.from_env({}))
    users = sorted(histories)
    graphs = [case_graph(Case(u, histories[u], ""), settings.graph_config()) for u in users]
    vectors = np.asarray([latest[u].embedding for u in users], dtype=np.float32)
    full = GraphScorer(ckpt).user_vectors([Case(u, histories[u], "") for u in users])
    np.testing.assert_allclose(vectors, full, atol=1e-5)  # the mix leaves the vectors as they were
    want = ItemRanker(ckpt).top(vectors, TOP, graphs=graphs)
    plain = ItemRanker(Checkpoint.load(tmp_path / "m.ckpt")).top(vectors, TOP)
    for u, ranked in zip(users, want, strict=True):
        got = latest[u].recommendations or []
        assert [r.item_id for r in got] == [item for item, _ in ranked]
        np.testing.assert_allclose([r.score for r in got], [s for _, s in ranked], rtol=1e-5)
    assert want != plain  # the mix changes what is recommended

    state = ["--state", str(tmp_path / "state"), "--model", str(mixed)]
    res = runner.invoke(app, ["recommend", users[0], *state, "--k", str(TOP), "--json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert [x["item_id"] for x in body["items"]] == [item for item, _ in want[0]]


def test_mix_refuses_an_unknown_method_and_bad_weights(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", list(generate_events(SPEC)))
    runner = CliRunner()
    base = ["mix", "--model", str(events), "--data", events, "--out", str(tmp_path / "x.ckpt")]
    res = runner.invoke(app, [*base, "--kind", "gru"])
    assert res.exit_code == 2 and "unknown kNN method 'gru'; choose from stan, vsknn, sknn" in res.output
    res = runner.invoke(app, [*base, "--weights", "1,two"])
    assert res.exit_code == 2 and "--weights takes comma-separated numbers" in res.output
