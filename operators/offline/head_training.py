"""Training label heads (the serving half is :mod:`operators.heads`): features, fitting, metrics, baselines.

A head reads the vector the stream would publish for each example's prefix (the
prefix's events → ``UserGraph.apply`` → ``Embedder.embed_many``, as evaluation does)
and predicts a binary label (:mod:`operators.offline.labels`). It is logistic regression
(``hidden=0``) or one hidden ReLU layer over standardised inputs, trained with Adam on
binary cross-entropy; early stopping and the decision threshold use a validation part
of the *training* examples, split by the same rule as the test set (other users, or the
latest training examples). The threshold maximises validation F1 unless one is given:
for rare labels 0.5 would predict almost nothing positive.

Baselines: ``majority`` (always the training majority; its score is the training
positive rate, so its ROC-AUC is 0.5), ``counts`` (logistic regression on the prefix's
per-action ``log(1 + count)``) and ``counts-weights`` (plus each action's mean event
weight, e.g. the user's mean rating so far), trained and thresholded like the head.

Metrics (:func:`binary_metrics`): accuracy, precision, recall, F1 at the threshold
(precision/recall/F1 are 0 when undefined) and ROC-AUC from ranks (ties count half;
NaN when the set holds one class only).

>>> m = binary_metrics(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.4, 0.1]), threshold=0.5)
>>> m["accuracy"], m["precision"], m["recall"], m["roc_auc"]
(0.5, 0.5, 0.5, 0.75)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from graph_state import Behavior, GraphConfig, UserGraph, decode, encode
from operators.checkpoint import Checkpoint
from operators.graph_settings import graph_config_of
from operators.heads import Classifier, HeadConfig, LabelHead, TaskSpec
from operators.inference import Embedder
from operators.offline.labels import Example, ExampleSet, Labels, derive_examples, ordered_histories, split_examples

BASELINES = ("majority", "counts", "counts-weights")
E_ONE_CLASS = (
    "every training label is {label}: a classifier needs both classes. Check the task and labels, or use more data."
)
E_BASELINE = "unknown baseline(s) {names}; choose from majority, counts, counts-weights."


# ---- metrics ---------------------------------------------------------------------------


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties half); NaN with one class.

    >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    >>> roc_auc(np.array([0, 1]), np.array([0.5, 0.5]))
    0.5
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average 1-based rank over each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (predicted positive: ``score >= threshold``), ROC-AUC and the counts."""
    y = np.asarray(y_true).astype(bool)
    pred = np.asarray(scores, dtype=np.float64) >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    n = len(y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": float((pred == y).sum()) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": roc_auc(y, scores),
        "positive_rate": float(y.mean()) if n else 0.0,
        "predicted_positive_rate": float(pred.mean()) if n else 0.0,
        "examples": float(n),
    }


def best_f1_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold with the highest F1 on these examples (0.5 when there are no positives).

    >>> best_f1_threshold(np.array([0, 1, 0, 1]), np.array([0.1, 0.7, 0.3, 0.6]))
    0.6
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return 0.5
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # predict positive down to the end of a tie run
    tp = np.cumsum(y_sorted)[last_of_run]
    predicted = (np.flatnonzero(last_of_run) + 1).astype(np.float64)
    f1 = 2 * tp / (predicted + y.sum())
    return float(s_sorted[last_of_run][int(np.argmax(f1))])


# ---- features --------------------------------------------------------------------------


def embed_examples(
    checkpoint: Checkpoint,
    histories: Mapping[str, Sequence[Behavior]],
    examples: Sequence[Example],
    graph_config: GraphConfig | None = None,
    batch_size: int = 512,
) -> np.ndarray:
    """The served vector of every example's prefix: its events → ``UserGraph.apply`` → ``Embedder.embed_many``.

    Each user's graph is built once, event by event; a copy (through the stored-state
    codec) is taken at every example's prefix length.
    """
    config = graph_config or graph_config_of(checkpoint)
    embedder = Embedder(checkpoint)
    ordered = ordered_histories(histories)
    out = np.zeros((len(examples), checkpoint.config.dim), dtype=np.float32)
    by_user: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_user.setdefault(ex.user_id, []).append(i)
    graphs: list[UserGraph] = []
    rows: list[int] = []

    def flush() -> None:
        if graphs:
            out[rows] = embedder.embed_many(graphs)
            graphs.clear()
            rows.clear()

    for user, idx in by_user.items():
        events = ordered[user]
        g = UserGraph(config)
        applied = 0
        for i in sorted(idx, key=lambda j: examples[j].length):
            while applied < examples[i].length:
                g.apply(events[applied])
                applied += 1
            graphs.append(decode(encode(g, include_cache=False), config))
            rows.append(i)
            if len(graphs) >= batch_size:
                flush()
    flush()
    return out


def count_features(
    histories: Mapping[str, Sequence[Behavior]],
    examples: Sequence[Example],
    actions: Sequence[str],
    with_weights: bool = False,
) -> np.ndarray:
    """Per action of ``actions`` (unknown ones count as ``other``): ``log(1 + count)`` in the prefix, and with
    ``with_weights`` the mean event weight of that action (1 when an event has none; 0 without events)."""
    ordered = ordered_histories(histories)
    index = {a: i for i, a in enumerate(actions)}
    other = index.get("other", len(actions) - 1)
    k = len(actions)
    out = np.zeros((len(examples), 2 * k if with_weights else k), dtype=np.float32)
    cumulative: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, ex in enumerate(examples):
        if ex.user_id not in cumulative:
            events = ordered[ex.user_id]
            onehot = np.zeros((len(events) + 1, k), dtype=np.float64)
            weights = np.zeros((len(events) + 1, k), dtype=np.float64)
            for t, ev in enumerate(events, 1):
                a = index.get(ev.action, other)
                onehot[t, a] = 1.0
                weights[t, a] = 1.0 if ev.weight is None else float(ev.weight)
            cumulative[ex.user_id] = (np.cumsum(onehot, axis=0), np.cumsum(weights, axis=0))
        counts, weight_sums = cumulative[ex.user_id]
        c = counts[ex.length]
        out[i, :k] = np.log1p(c)
        if with_weights:
            out[i, k:] = np.divide(weight_sums[ex.length], c, out=np.zeros(k), where=c > 0)
    return out


# ---- fitting ---------------------------------------------------------------------------


def fit_classifier(
    features: np.ndarray,
    labels: np.ndarray,
    examples: Sequence[Example],
    split: str,
    config: HeadConfig,
    hidden: int | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """Train on ``features``/``labels`` (the training examples); validate on a part split off like the test set."""
    previous = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        return _fit_classifier(features, labels, examples, split, config, hidden)
    finally:
        torch.set_num_threads(previous)


def _fit_classifier(
    features: np.ndarray,
    labels: np.ndarray,
    examples: Sequence[Example],
    split: str,
    config: HeadConfig,
    hidden: int | None,
) -> tuple[Classifier, dict[str, Any]]:
    y = np.asarray(labels, dtype=np.float32)
    if y.min() == y.max():
        raise ValueError(E_ONE_CLASS.format(label=int(y[0])))
    fit_idx, val_idx = validation_split(examples, y, split, config)
    x = np.asarray(features, dtype=np.float32)
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = Classifier(x.shape[1], config.hidden if hidden is None else hidden)
    std = x[fit_idx].std(axis=0)
    model.mean.copy_(torch.from_numpy(x[fit_idx].mean(axis=0)))
    model.std.copy_(torch.from_numpy(np.where(std > 1e-6, std, 1.0).astype(np.float32)))
    x_fit, y_fit = torch.from_numpy(x[fit_idx]), torch.from_numpy(y[fit_idx])
    x_val, y_val = torch.from_numpy(x[val_idx]), torch.from_numpy(y[val_idx])
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best_loss, best_epoch, best_state, bad = math.inf, 0, copy.deepcopy(model.state_dict()), 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        perm = torch.randperm(len(y_fit), generator=gen)
        for start in range(0, len(perm), config.batch_size):
            sel = perm[start : start + config.batch_size]
            loss = F.binary_cross_entropy_with_logits(model(x_fit[sel]), y_fit[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            val_loss = float(F.binary_cross_entropy_with_logits(model(x_val), y_val))
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch, best_state, bad = val_loss, epoch, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= config.patience:
                break
    model.load_state_dict(best_state)
    val_scores = model.predict_proba(x[val_idx])
    threshold = config.threshold if config.threshold is not None else best_f1_threshold(y[val_idx], val_scores)
    model.threshold.fill_(threshold)
    info = {
        "best_epoch": best_epoch,
        "val_loss": best_loss,
        "threshold": float(threshold),
        "fit_examples": len(fit_idx),
        "val_examples": len(val_idx) if val_idx is not fit_idx else 0,  # 0: validated on the fitted examples
        "valid": binary_metrics(y[val_idx], val_scores, threshold),
    }
    return model, info


def validation_split(
    examples: Sequence[Example], labels: np.ndarray, split: str, config: HeadConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, validation)`` indices split like the test set; both the same when too few examples allow no
    validation part with both classes (tiny data: validate on the fitted examples)."""
    try:
        fit_idx, val_idx = split_examples(examples, split, config.val_share, config.seed, salt="valid")
    except ValueError:
        everything = np.arange(len(labels))
        return everything, everything
    if labels[val_idx].min() == labels[val_idx].max() or labels[fit_idx].min() == labels[fit_idx].max():
        everything = np.arange(len(labels))
        return everything, everything
    return fit_idx, val_idx


# ---- training and evaluation -----------------------------------------------------------


@dataclass
class HeadReport:
    """Test metrics of one predictor (the head or a baseline)."""

    name: str
    metrics: dict[str, float]
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.metrics.items()}
        return {"name": self.name, "metrics": clean, "threshold": self.threshold}


@dataclass
class LabelledData:
    """A task's examples on some data, split: what both training and evaluation of a head start from."""

    histories: Mapping[str, Sequence[Behavior]]
    found: ExampleSet
    train: np.ndarray
    test: np.ndarray

    @classmethod
    def of(cls, histories: Mapping[str, Sequence[Behavior]], spec: TaskSpec, labels: Labels | None) -> LabelledData:
        found = derive_examples(histories, spec.task, labels, spec.max_per_user, spec.min_history)
        train, test = split_examples(found.examples, spec.split, spec.test_share, spec.seed)
        return cls(histories, found, train, test)

    def examples(self, idx: np.ndarray) -> list[Example]:
        return [self.found.examples[i] for i in idx]

    def labels(self, idx: np.ndarray) -> np.ndarray:
        return self.found.labels[idx]

    def describe(self) -> dict[str, Any]:
        y = self.found.labels
        return {
            "examples": len(y),
            "train_examples": len(self.train),
            "test_examples": len(self.test),
            "train_users": len({self.found.examples[i].user_id for i in self.train}),
            "test_users": len({self.found.examples[i].user_id for i in self.test}),
            "train_positive_rate": float(y[self.train].mean()),
            "test_positive_rate": float(y[self.test].mean()),
            "dropped": dict(self.found.dropped),
        }


def train_label_head(
    checkpoint: Checkpoint,
    data: LabelledData,
    spec: TaskSpec,
    config: HeadConfig,
    encoder_path: str = "",
    log: Callable[[str], None] | None = None,
) -> LabelHead:
    """Embed the training (and test) prefixes with the frozen encoder, fit the head, record its test metrics."""
    say = log or (lambda _msg: None)
    train_ex, test_ex = data.examples(data.train), data.examples(data.test)
    x_train = embed_examples(checkpoint, data.histories, train_ex)
    say(f"embedded {len(train_ex):,} training prefixes")
    classifier, info = fit_classifier(x_train, data.labels(data.train), train_ex, spec.split, config)
    x_test = embed_examples(checkpoint, data.histories, test_ex)
    test = binary_metrics(data.labels(data.test), classifier.predict_proba(x_test), float(classifier.threshold))
    return LabelHead(
        classifier,
        checkpoint.encoder_version,
        spec,
        config,
        encoder_path,
        metrics={"valid": info.pop("valid"), "test": test},
        info={**info, **data.describe()},
    )


def evaluate_label_head(
    head: LabelHead,
    checkpoint: Checkpoint,
    data: LabelledData,
    baselines: Sequence[str] = BASELINES,
) -> list[HeadReport]:
    """Test metrics of the head and of the baselines (trained here on the same training examples)."""
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(E_BASELINE.format(names=unknown))
    head.check_encoder(checkpoint)
    train_ex, test_ex = data.examples(data.train), data.examples(data.test)
    y_train, y_test = data.labels(data.train), data.labels(data.test)
    scores = head.score_many(embed_examples(checkpoint, data.histories, test_ex))
    reports = [
        HeadReport(
            f"head ({'MLP' if head.config.hidden else 'logistic'})",
            binary_metrics(y_test, scores, head.threshold),
            head.threshold,
        )
    ]
    if "majority" in baselines:
        rate = float(y_train.mean())
        constant = np.full(len(y_test), rate)
        # predict the majority class: everything is ">= threshold" exactly when positives are the majority
        reports.append(HeadReport("majority", binary_metrics(y_test, constant, -math.inf if rate >= 0.5 else math.inf)))
    actions = graph_config_of(checkpoint).actions
    for name in ("counts", "counts-weights"):
        if name not in baselines:
            continue
        with_weights = name == "counts-weights"
        x_tr = count_features(data.histories, train_ex, actions, with_weights)
        x_te = count_features(data.histories, test_ex, actions, with_weights)
        clf, _ = fit_classifier(x_tr, y_train, train_ex, head.spec.split, head.config, hidden=0)
        t = float(clf.threshold)
        reports.append(HeadReport(f"logreg-{name}", binary_metrics(y_test, clf.predict_proba(x_te), t), t))
    return reports
