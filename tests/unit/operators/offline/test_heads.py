"""Label heads: hand-checked metrics, labels without leakage, a planted signal, the CLI round trip, encoder binding."""

from __future__ import annotations

import json
import math
import random

import msgspec
import numpy as np
import pytest
from typer.testing import CliRunner

from operators.checkpoint import Checkpoint
from operators.encoder import EncoderConfig
from operators.heads import HeadConfig, LabelHead, TaskSpec
from operators.offline.datasets import Case
from operators.offline.evaluation import GraphScorer
from operators.offline.head_training import (
    LabelledData,
    best_f1_threshold,
    binary_metrics,
    count_features,
    embed_examples,
    evaluate_label_head,
    roc_auc,
    train_label_head,
)
from operators.offline.labels import (
    Example,
    Labels,
    custom_examples,
    next_action_examples,
    read_labels,
    split_examples,
)
from stream_app.cli import app
from stream_app.core.settings import Settings
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.files.histories import read_histories
from tests.conftest import BASE_TS, Ev, write_jsonl

ENCODER = EncoderConfig(dim=32, hash_buckets=64)
FAST = HeadConfig(hidden=0, epochs=120, lr=1e-2, seed=0)


def planted_events(users: int = 60, events: int = 3000, seed: int = 3) -> list[bytes]:
    """Generated events whose actions carry a label signal: right after a cart the user purchases, never else."""
    rng = random.Random(seed)
    last: dict[str, str] = {}
    out = []
    for line in generate_events(GeneratorSpec(users=users, items=80, events=events, seed=seed)):
        ev = msgspec.json.decode(line)
        if last.get(ev["user_id"]) == "cart":
            action = "purchase"
        else:
            action = "cart" if rng.random() < 0.2 else rng.choice(["view", "view", "click"])
        ev["action"] = action
        ev.pop("weight", None)
        last[ev["user_id"]] = action
        out.append(msgspec.json.encode(ev))
    return out


@pytest.fixture(scope="module")
def events_file(tmp_path_factory) -> str:
    return write_jsonl(tmp_path_factory.mktemp("heads") / "events.jsonl", planted_events())


@pytest.fixture(scope="module")
def histories(events_file):
    found, rejected = read_histories(events_file, "jsonl", Settings.from_env({}))
    assert not rejected
    return found


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "enc.ckpt"
    Checkpoint.seeded(ENCODER, seed=0).save(path)
    return str(path)


# ---- metrics, by hand ----------------------------------------------------------------------


def test_metrics_match_hand_computed_values():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.2, 0.7, 0.4, 0.3, 0.1, 0.05])
    m = binary_metrics(y, s, threshold=0.5)
    # predicted positive: 0.9, 0.6 (tp) and 0.7 (fp); 0.2 is a missed positive
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # pairs (positive above negative): 0.9 beats 5, 0.6 beats 4 (not 0.7), 0.2 beats 2 → 11 of 15
    assert m["roc_auc"] == pytest.approx(11 / 15)
    assert m["positive_rate"] == pytest.approx(3 / 8) and m["predicted_positive_rate"] == pytest.approx(3 / 8)


def test_auc_counts_ties_half_and_is_undefined_with_one_class():
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.9, 0.1])) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert roc_auc(np.array([1, 0]), np.array([0.2, 0.8])) == 0.0
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.8])))
    assert math.isnan(binary_metrics(np.array([0, 0]), np.array([0.1, 0.2]))["roc_auc"])


def test_undefined_precision_recall_and_f1_are_zero():
    m = binary_metrics(np.array([1, 0, 0]), np.array([0.1, 0.2, 0.3]), threshold=0.5)  # nothing predicted positive
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (0.0, 0.0, 0.0, pytest.approx(2 / 3))
    m = binary_metrics(np.array([0, 0]), np.array([0.9, 0.2]), threshold=0.5)  # no positives at all
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)


def test_best_f1_threshold_keeps_tied_scores_together():
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.8, 0.8, 0.6, 0.3, 0.1])
    # >= 0.8: tp 1, predicted 2 → F1 1/2.5; >= 0.6: tp 2, predicted 3 → F1 4/5 (best); lower adds negatives only
    assert best_f1_threshold(y, s) == 0.6
    assert best_f1_threshold(np.array([0, 0]), np.array([0.3, 0.4])) == 0.5


# ---- labels and splits -----------------------------------------------------------------------


def _log(actions: list[str], user: str = "u0") -> list[Ev]:
    return [Ev(f"{user}-{i}", f"i{i % 3}", a, BASE_TS + 10 * i, user_id=user) for i, a in enumerate(actions)]


def test_next_action_labels_come_from_the_event_after_the_prefix():
    log = {"u0": list(reversed(_log(["view", "cart", "purchase", "click", "purchase"])))}  # any order: sorted by ts
    examples = next_action_examples(log, "purchase")
    assert [(e.length, e.label) for e in examples] == [(1, 0), (2, 1), (3, 0), (4, 1)]
    assert [e.ts for e in examples] == [BASE_TS + 10 * t for t in (1, 2, 3, 4)]
    assert [(e.length, e.label) for e in next_action_examples(log, "click", max_per_user=2, min_history=2)] == [
        (3, 1),
        (4, 0),
    ]


def test_custom_labels_see_only_events_strictly_before_their_time(tmp_path):
    log = {"u0": _log(["view", "view", "view", "view"]), "u1": _log(["view", "click"], "u1")}
    path = tmp_path / "labels.csv"
    path.write_text(
        "user_id,ts,label\n"
        f"u0,{BASE_TS + 20},1\n"  # events at +0 and +10 are before it; the one at +20 is not
        "# a comment\n"
        "u0,2026-01-01T00:00:35,no\n"  # BASE_TS is 2026-01-01T00:00:00Z: three events before
        f"u1,{BASE_TS},1\n"  # nothing before it
        f"ghost,{BASE_TS},0\n"
    )
    labels = read_labels(str(path))
    assert not labels.per_user and len(labels.rows) == 4
    found = custom_examples(log, labels)
    assert [(e.user_id, e.length, e.label) for e in found.examples] == [("u0", 2, 1), ("u0", 4, 0)]
    assert found.dropped == {"unknown_user": 1, "short_history": 1}
    per_user = Labels("x", True, [("u0", math.nan, 1), ("u1", math.nan, 0)])
    assert [(e.length, e.label) for e in custom_examples(log, per_user).examples] == [(4, 1), (2, 0)]
    with pytest.raises(ValueError, match="--split user"):
        split_examples(custom_examples(log, per_user).examples, "time", 0.5)


def test_a_bad_labels_file_names_the_line_and_the_fix(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("u0,1\nu1,maybe\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: label 'maybe' is not 0/1"):
        read_labels(str(path))
    path.write_text("u0,1\nu1,5,1\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: expected 2 columns"):
        read_labels(str(path))
    path.write_text("u0,yesterday,1\n")
    with pytest.raises(ValueError, match="neither epoch seconds nor ISO-8601"):
        read_labels(str(path))


def test_splits_never_share_a_user_or_look_back_in_time():
    examples = [Example(f"u{i % 17}", 1 + i // 17, i % 2, float(i)) for i in range(340)]
    train, test = split_examples(examples, "user", 0.3, seed=5)
    assert not {examples[i].user_id for i in train} & {examples[i].user_id for i in test}
    assert 0 < len(test) < len(examples) and len(train) + len(test) == len(examples)
    again, _ = split_examples(examples[::-1], "user", 0.3, seed=5)  # a user's side depends on nothing else
    assert {examples[::-1][i].user_id for i in again} == {examples[i].user_id for i in train}
    train, test = split_examples(examples, "time", 0.25)
    assert max(examples[i].ts for i in train) < min(examples[i].ts for i in test)


# ---- features through the serving path ---------------------------------------------------


def test_prefix_features_are_the_served_vectors_of_the_prefix(histories):
    checkpoint = Checkpoint.seeded(ENCODER, seed=0)
    examples = next_action_examples(histories, "purchase", max_per_user=3)[:40]
    vectors = embed_examples(checkpoint, histories, examples, batch_size=7)
    ordered = {u: sorted(h, key=lambda e: e.ts) for u, h in histories.items()}
    cases = [Case(e.user_id, ordered[e.user_id][: e.length], "") for e in examples]
    np.testing.assert_allclose(vectors, GraphScorer(checkpoint).user_vectors(cases), atol=1e-6)
    counts = count_features(histories, examples, checkpoint.config.actions, with_weights=True)
    k = len(checkpoint.config.actions)
    first = ordered[examples[0].user_id][: examples[0].length]
    view = checkpoint.config.actions.index("view")
    assert counts[0, view] == pytest.approx(math.log1p(sum(e.action == "view" for e in first)))
    assert counts.shape == (len(examples), 2 * k) and set(np.unique(counts[:, k:])) <= {0.0, 1.0}


# ---- a planted signal -------------------------------------------------------------------------


def test_head_beats_the_majority_class_on_a_planted_signal(histories):
    checkpoint = Checkpoint.seeded(ENCODER, seed=0)
    spec = TaskSpec("purchase", max_per_user=20, seed=0)
    data = LabelledData.of(histories, spec, None)
    assert 0.1 < data.describe()["test_positive_rate"] < 0.3
    head = train_label_head(checkpoint, data, spec, FAST)
    reports = {r.name: r.metrics for r in evaluate_label_head(head, checkpoint, data)}
    ours, majority = reports["head (logistic)"], reports["majority"]
    assert majority["f1"] == 0.0 and majority["roc_auc"] == 0.5
    assert ours["f1"] >= 0.5 and ours["roc_auc"] >= 0.85, ours
    assert ours["accuracy"] > majority["accuracy"] + 0.05, (ours, majority)
    assert head.metrics["test"] == pytest.approx(ours, nan_ok=True)
    assert set(reports) == {"head (logistic)", "majority", "logreg-counts", "logreg-counts-weights"}


# ---- the CLI and the encoder binding ------------------------------------------------------------


def test_cli_trains_and_evaluates_a_head_against_the_baselines(events_file, encoder_file, tmp_path):
    runner = CliRunner()
    head = tmp_path / "head.pt"
    common = ["--data", events_file, "--format", "jsonl"]
    args = ["train-head", "--model", encoder_file, "--task", "purchase", *common, "--out", str(head)]
    res = runner.invoke(app, [*args, "--hidden", "16", "--epochs", "60"])
    assert res.exit_code == 0, res.output
    loaded = LabelHead.load(head)
    assert loaded.encoder_version == Checkpoint.load(encoder_file).model_version
    assert loaded.spec.task == "purchase" and loaded.config.hidden == 16 and 0.0 < loaded.threshold < 1.0
    out = tmp_path / "eval.json"
    res = runner.invoke(app, ["evaluate-head", "--head", str(head), *common, "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "ROC-AUC" in res.output and "majority" in res.output
    payload = json.loads(out.read_text())
    results = {r["name"]: r["metrics"] for r in payload["results"]}
    assert list(results) == ["head (MLP)", "majority", "logreg-counts", "logreg-counts-weights"]
    assert set(results["majority"]) >= {"accuracy", "precision", "recall", "f1", "roc_auc"}
    assert results["head (MLP)"]["f1"] > results["majority"]["f1"] + 0.4
    assert payload["encoder_version"] == loaded.encoder_version and payload["spec"]["split"] == "user"
    assert payload["test_users"] + payload["train_users"] == 60


def test_cli_custom_labels_and_time_split(events_file, encoder_file, histories, tmp_path):
    labels = tmp_path / "labels.csv"
    rows = ["user_id,ts,label"]
    for user, events in histories.items():  # label: the event at ts is a cart (planted: right after a non-cart)
        rows += [f"{user},{e.ts},{int(e.action == 'cart')}" for e in events[1:]]
    labels.write_text("\n".join(rows) + "\n")
    head = tmp_path / "custom.pt"
    res = CliRunner().invoke(
        app,
        [
            "train-head", "--model", encoder_file, "--task", "custom", "--labels", str(labels),
            "--data", events_file, "--out", str(head), "--split", "time", "--hidden", "0", "--epochs", "20",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        app, ["evaluate-head", "--head", str(head), "--data", events_file, "--baselines", "majority"]
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(head.with_suffix(".eval.json").read_text())
    assert [r["name"] for r in payload["results"]] == ["head (logistic)", "majority"]
    assert payload["spec"]["labels_path"] == str(labels) and payload["spec"]["split"] == "time"


def test_a_head_refuses_embeddings_of_another_encoder(events_file, encoder_file, histories, tmp_path):
    other = tmp_path / "other.ckpt"
    Checkpoint.seeded(ENCODER, seed=1).save(other)
    spec = TaskSpec("click", max_per_user=5)
    checkpoint = Checkpoint.load(encoder_file)
    data = LabelledData.of(histories, spec, None)
    head = train_label_head(checkpoint, data, spec, HeadConfig(hidden=0, epochs=3), encoder_path=encoder_file)
    head.save(tmp_path / "h.pt")
    with pytest.raises(ValueError, match="trained on the embeddings of encoder"):
        evaluate_label_head(head, Checkpoint.load(other), data)
    res = CliRunner().invoke(
        app, ["evaluate-head", "--head", str(tmp_path / "h.pt"), "--data", events_file, "--model", str(other)]
    )
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert head.encoder_version in text and Checkpoint.load(other).model_version in text
    assert "retrain the head" in text and "--model" in text


def test_a_damaged_head_file_is_refused_with_the_cause(tmp_path):
    path = tmp_path / "h.pt"
    path.write_bytes(b"not a head")
    with pytest.raises(ValueError, match="not a Ripple label head"):
        LabelHead.load(path)
    with pytest.raises(FileNotFoundError, match="ripple train-head"):
        LabelHead.load(tmp_path / "missing.pt")
