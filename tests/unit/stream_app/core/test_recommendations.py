"""Recommendations on the serving paths: `ripple recommend` ranks as `ripple evaluate` does, and
RIPPLE_RECOMMEND_TOP puts the same ranking in each published record."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bench.worker_process import latest_by_user
from graph_state import RocksStore
from operators.checkpoint import Checkpoint
from operators.encoder import EncoderConfig
from operators.offline.datasets import Case
from operators.offline.evaluation import GraphScorer, rank_of_targets
from operators.recommend import ItemRanker, exclude_items
from stream_app.cli import app
from stream_app.core.recommend import parse_request
from stream_app.core.records import UserEmbedding
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.files.histories import read_histories
from tests.conftest import write_jsonl


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Events, a checkpoint with the events' items as vocabulary (seeded: ranking needs no training), their
    replayed state and every published record (RIPPLE_RECOMMEND_TOP=7)."""
    tmp = tmp_path_factory.mktemp("recommend")
    lines = list(generate_events(GeneratorSpec(users=25, items=150, events=1200, seed=9)))
    path = write_jsonl(tmp / "events.jsonl", lines)
    histories, _ = read_histories(path, "jsonl", Settings.from_env({}))
    vocab = sorted({ev.item_id for events in histories.values() for ev in events})[:120]  # some items unknown
    model = tmp / "model.ckpt"
    Checkpoint.seeded(EncoderConfig(dim=32, norm_scale=10.0), seed=5, vocab=vocab).save(model)
    settings = Settings.from_env({}, state_dir=str(tmp / "state"), model_path=str(model), recommend_top=7)
    replay(path, "jsonl", str(tmp / "out.jsonl"), settings, progress=False)
    with open(tmp / "out.jsonl", "rb") as f:
        published = [msgspec.json.decode(line, type=UserEmbedding) for line in f]
    return tmp, path, model, histories, published


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_cli_recommend_equals_evaluates_ranking_for_the_same_user(data, exclude_seen):
    tmp, _, model, histories, _ = data
    checkpoint = Checkpoint.load(model)
    scorer = GraphScorer(checkpoint)
    # "Seen" on the serving side is the user's window (RIPPLE_MAX_NODES distinct items, 50), evaluate's the
    # whole history: the same set for users whose history fits the window.
    users = [u for u in sorted(histories) if not exclude_seen or len({e.item_id for e in histories[u]}) <= 50]
    assert len(users) >= 6
    for user in users[:6]:
        args = ["recommend", user, "--state", str(tmp / "state"), "--model", str(model), "--k", "15", "--json"]
        result = CliRunner().invoke(app, args + (["--exclude-seen"] if exclude_seen else []))
        assert result.exit_code == 0, result.output
        body = json.loads(result.stdout)
        assert (body["user_id"], body["model_version"], body["k"]) == (user, checkpoint.model_version, 15)
        case = Case(user, histories[user], target="")  # what `ripple evaluate` scores for this history
        scores = scorer.scores([case])
        if exclude_seen:
            scores = exclude_items(scores, scorer.index, [[ev.item_id for ev in case.history]])
        rows = torch.tensor([scorer.index.row(item["item_id"]) for item in body["items"]])
        assert rank_of_targets(scores.expand(len(rows), -1), rows).tolist() == list(range(1, 16)), user
        np.testing.assert_allclose([i["score"] for i in body["items"]], scores[0, rows].numpy(), atol=1e-4)


def test_recommend_top_puts_the_rankers_top_items_in_every_record(data):
    _, _, model, _, published = data
    ranker = ItemRanker(Checkpoint.load(model))
    assert published
    for emb in published:
        assert emb.recommendations is not None and len(emb.recommendations) == 7
        (want,) = ranker.top(np.asarray([emb.embedding], np.float32), k=7)
        assert [r.item_id for r in emb.recommendations] == [item for item, _ in want]
        # One row or a batch of rows through the matrix product: the same scores to float32 rounding.
        np.testing.assert_allclose([r.score for r in emb.recommendations], [s for _, s in want], rtol=1e-6)


def test_recommend_exclude_seen_leaves_the_users_window_out(data, tmp_path):
    _, path, model, _, _ = data
    settings = Settings.from_env(
        {}, state_dir=str(tmp_path / "st"), model_path=str(model), recommend_top=10, recommend_exclude_seen=True
    )
    replay(path, "jsonl", str(tmp_path / "out.jsonl"), settings, progress=False)
    with open(tmp_path / "out.jsonl", "rb") as f:
        final = latest_by_user([msgspec.json.decode(line, type=UserEmbedding) for line in f])
    store = RocksStore(settings.state_dir, settings.graph_config())
    graphs = store.get_many(final)
    store.close()
    for user, emb in final.items():
        assert emb.recommendations and not {r.item_id for r in emb.recommendations} & set(graphs[user].items())


def test_recommend_top_without_a_trained_model_is_refused_at_start(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", list(generate_events(GeneratorSpec(users=2, items=5, events=10))))
    settings = Settings.from_env({}, state_dir=str(tmp_path / "st"), recommend_top=5)
    with pytest.raises(ValueError, match=r"RIPPLE_RECOMMEND_TOP is set but .* no item vocabulary"):
        replay(path, "jsonl", str(tmp_path / "o.jsonl"), settings, progress=False)
    result = CliRunner().invoke(app, ["recommend", "u1", "--state", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no state for user" in result.output


def test_request_parameters_are_checked():
    assert parse_request({}) == (20, False)
    assert parse_request({"k": "5", "exclude_seen": "1"}) == (5, True)
    assert parse_request({"k": "1000", "exclude_seen": "false"}) == (1000, False)
    for bad in ({"k": "0"}, {"k": "1001"}, {"k": "ten"}, {"exclude_seen": "maybe"}):
        with pytest.raises(ValueError):
            parse_request(bad)
