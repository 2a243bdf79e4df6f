"""Offline training on next-item prediction: full softmax over the vocabulary, early stopping on MRR@20.

The model is any module whose ``forward(batch)`` returns user vectors and whose
``item_vectors()`` returns the vectors they are scored against: the graph encoder
(batches sliced from packed prefix graphs, :class:`operators.offline.datasets.PackedGraphs`)
or a sequence baseline. The loss is cross-entropy of ``user · item`` over every
vocabulary item, or, with ``negatives = m > 0``, a sampled softmax: each step scores
the batch's targets plus ``m`` items drawn uniformly (shared by the batch), and adds
``log(1 / inclusion probability)`` to the sampled columns so the normaliser stays an
unbiased estimate of the full one. Validation always ranks all items.

Training is deterministic for a given seed when it runs on one thread (the default):
multi-threaded CPU scatter/index-add kernels sum in a run-dependent order, so
``threads > 1`` buys speed at the price of bit-for-bit reproducibility.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from graph_state import GraphConfig
from operators.checkpoint import Checkpoint, build_encoder, with_features
from operators.encoder import EncoderConfig
from operators.global_view import build_global_view
from operators.graph_settings import graph_config_dict
from operators.item_features import ItemFeatures
from operators.item_index import ItemIndex
from operators.offline.datasets import Split, pack_case_graphs, pack_prefix_graphs
from operators.offline.evaluation import rank_metrics, rank_of_targets
from operators.offline.global_view_folds import (
    OutOfFoldGraphs,
    OutOfFoldModel,
    first_block,
    fold_of_histories,
    pack_by_fold,
    stacked_views,
)

E_NO_EXAMPLES = "the training data has no next-item examples; every history needs at least two events."
STOP_METRIC = "mrr@20"


class Packed(Protocol):
    targets: np.ndarray

    def __len__(self) -> int: ...
    def batch(self, sel: np.ndarray) -> Any: ...


@dataclass(frozen=True)
class TrainConfig:
    """How to train; stored with the checkpoint."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    lr_decay: float = 1.0
    """Learning rate is multiplied by this after every epoch."""
    weight_decay: float = 0.0
    patience: int = 2
    """Epochs without a better validation MRR@20 before stopping."""
    seed: int = 0
    max_minutes: float = 0.0
    """Wall-clock budget for the optimisation loop (0 = none); the best epoch so far is kept."""
    negatives: int = 0
    """Sampled-softmax negatives per step (0 = full softmax over the vocabulary)."""
    threads: int = 1
    """torch threads while training (1 = reproducible; 0 = leave torch's setting)."""
    max_valid: int = 20_000
    """Validation cases scored after each epoch (a fixed subset when there are more)."""
    global_folds: int = 5
    """Models with a global item view: training prefixes of each of this many folds of the histories
    read the view built from the other folds (<= 1: every prefix reads the served view)."""
    progress: bool = True


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best: dict[str, float] = field(default_factory=dict)
    stopped: str = "epochs"
    seconds: float = 0.0
    samples: int = 0
    step_losses: list[float] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


class Trainer:
    """Mini-batch Adam on full-softmax cross-entropy; keeps the weights of the best epoch."""

    def __init__(self, model: nn.Module, train: Packed, valid: Packed, n_items: int, config: TrainConfig) -> None:
        if len(train) == 0:
            raise ValueError(E_NO_EXAMPLES)
        self.model = model
        self.train_data = train
        self.valid_data = valid
        self.n_items = n_items
        self.config = config

    def item_vectors(self) -> torch.Tensor:
        vectors: torch.Tensor = self.model.item_vectors()  # type: ignore[operator]
        return vectors[: self.n_items]

    def fit(self, log: Callable[[str], None] | None = None) -> TrainResult:
        previous = torch.get_num_threads()
        if self.config.threads > 0:
            torch.set_num_threads(self.config.threads)
        try:
            return self._fit(log)
        finally:
            torch.set_num_threads(previous)

    def _fit(self, log: Callable[[str], None] | None) -> TrainResult:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self._sampler = torch.Generator().manual_seed(cfg.seed)
        opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        result = TrainResult()
        best_state = copy.deepcopy(self.model.state_dict())
        best_score = -1.0
        started = time.perf_counter()
        deadline = started + cfg.max_minutes * 60 if cfg.max_minutes > 0 else float("inf")
        valid_sel = np.arange(len(self.valid_data))
        if len(valid_sel) > cfg.max_valid:
            valid_sel = np.sort(np.random.default_rng(cfg.seed + 1).choice(valid_sel, cfg.max_valid, replace=False))
        n = len(self.train_data)
        bad_epochs = 0
        for epoch in range(1, cfg.epochs + 1):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * cfg.lr_decay ** (epoch - 1)
            self.model.train()
            perm = rng.permutation(n)
            epoch_started = time.perf_counter()
            total, seen = 0.0, 0
            bar = tqdm(range(0, n, cfg.batch_size), desc=f"epoch {epoch}", unit="batch", disable=not cfg.progress)
            timed_out = False
            for start in bar:
                sel = perm[start : start + cfg.batch_size]
                loss = self._step(opt, sel)
                total += loss * len(sel)
                seen += len(sel)
                result.step_losses.append(loss)
                if bar.n % 20 == 0:
                    rate = seen / max(1e-9, time.perf_counter() - epoch_started)
                    bar.set_postfix(loss=f"{total / seen:.4f}", samples_s=f"{rate:,.0f}")
                if time.perf_counter() > deadline:
                    timed_out = True
                    break
            bar.close()
            train_seconds = time.perf_counter() - epoch_started
            result.seconds += train_seconds
            result.samples += seen
            metrics = self.validate(valid_sel)
            row = {
                "epoch": float(epoch),
                "loss": total / max(1, seen),
                "samples": float(seen),
                "train_seconds": train_seconds,
                "samples_per_second": seen / max(1e-9, train_seconds),
                **{f"val_{k}": v for k, v in metrics.items()},
            }
            result.history.append(row)
            if log is not None:
                log(
                    f"epoch {epoch}: loss {row['loss']:.4f}, val recall@20 {metrics.get('recall@20', 0):.4f}, "
                    f"val mrr@20 {metrics.get(STOP_METRIC, 0):.4f}, {row['samples_per_second']:,.0f} samples/s"
                )
            score = metrics.get(STOP_METRIC, 0.0)
            if score > best_score:
                best_score, result.best_epoch, result.best = score, epoch, metrics
                best_state = copy.deepcopy(self.model.state_dict())
                bad_epochs = 0
            else:
                bad_epochs += 1
            if timed_out:
                result.stopped = "time budget"
                break
            if bad_epochs >= cfg.patience:
                result.stopped = "early stopping"
                break
        self.model.load_state_dict(best_state)
        self.model.eval()
        return result

    def _step(self, opt: torch.optim.Optimizer, sel: np.ndarray) -> float:
        inputs = self.train_data.batch(sel)
        targets = torch.from_numpy(self.train_data.targets[sel])
        user = self.model(inputs)
        m = self.config.negatives
        if 0 < m < self.n_items:
            sampled = torch.randint(0, self.n_items, (m,), generator=self._sampler)
            candidates = torch.unique(torch.cat([targets, sampled]))
            logits = user @ self.item_vectors()[candidates].T
            is_target = torch.isin(candidates, targets)
            n_targets = int(is_target.sum())
            others = len(candidates) - n_targets
            if others:
                logits = logits + (~is_target) * float(np.log((self.n_items - n_targets) / others))
            loss = F.cross_entropy(logits, torch.searchsorted(candidates, targets))
        else:
            loss = F.cross_entropy(user @ self.item_vectors().T, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def validate(self, sel: np.ndarray, batch_size: int = 1024) -> dict[str, float]:
        if len(sel) == 0:
            return {}
        self.model.eval()
        ranks = []
        with torch.inference_mode():
            items = self.item_vectors()
            for start in range(0, len(sel), batch_size):
                part = sel[start : start + batch_size]
                scores = self.model(self.valid_data.batch(part)) @ items.T
                ranks.append(rank_of_targets(scores, torch.from_numpy(self.valid_data.targets[part])))
        return rank_metrics(torch.cat(ranks), (10, 20))


def train_encoder(
    split: Split,
    graph_config: GraphConfig,
    encoder_config: EncoderConfig,
    train_config: TrainConfig,
    out_path: str | None = None,
    log: Callable[[str], None] | None = None,
    features: ItemFeatures | None = None,
) -> tuple[Checkpoint, TrainResult]:
    """Pack the split's prefix graphs, train a :class:`GraphEncoder`, return (and save) its checkpoint.

    With ``features`` the encoder fuses each item's side-feature tokens into its item
    vector and the checkpoint carries the feature table. With ``encoder_config.global_k`` the
    global item view is built from the training histories only and travels in the checkpoint.
    """
    say = log or (lambda _msg: None)
    if features is not None:
        encoder_config = with_features(encoder_config, features)
    index = ItemIndex(split.vocab, encoder_config.hash_buckets)
    t0 = time.perf_counter()
    out_of_fold = encoder_config.global_k > 0 and train_config.global_folds > 1
    folds = fold_of_histories(len(split.train), train_config.global_folds, train_config.seed)
    graph_folds = None
    if out_of_fold:
        train_data, graph_folds = pack_by_fold(
            split.train, folds, train_config.global_folds, lambda part: pack_prefix_graphs(part, graph_config, index)
        )
    else:
        train_data = pack_prefix_graphs(split.train, graph_config, index)
    valid_data = pack_case_graphs(split.valid, graph_config, index)
    pack_seconds = time.perf_counter() - t0
    say(
        f"packed {len(train_data):,} training graphs ({len(train_data.item_rows):,} nodes) and "
        f"{len(valid_data):,} validation graphs in {pack_seconds:.1f}s; {len(split.vocab):,} items"
    )
    if features is not None:
        say(
            f"item features {features.label}: {len(features.tokens):,} tokens, "
            f"{100 * features.coverage(split.vocab):.1f}% of the {len(split.vocab):,} items have some"
        )
    view = None
    k, window = encoder_config.global_k, encoder_config.global_window
    if k > 0:
        t1 = time.perf_counter()
        rows = [index.rows([ev.item_id for ev in history]) for history in split.train]
        if out_of_fold:
            view = stacked_views(rows, index.n_rows, k, window, folds, train_config.global_folds)
        else:
            view = build_global_view(rows, index.n_rows, k, window)
        served = first_block(view, index.n_rows)
        say(
            f"global view: {len(served.neighbours):,} neighbour links (k={k}, window {window})"
            + (f", and one without each of {train_config.global_folds} folds" if out_of_fold else "")
            + f" in {time.perf_counter() - t1:.1f}s"
        )
    torch.manual_seed(train_config.seed)
    encoder = build_encoder(encoder_config, index, features, view)
    model: nn.Module = encoder
    train_set: Packed = train_data
    if graph_folds is not None:
        model, train_set = OutOfFoldModel(encoder), OutOfFoldGraphs(train_data, graph_folds, index.n_rows)
    result = Trainer(model, train_set, valid_data, len(split.vocab), train_config).fit(say)
    if view is not None:
        encoder.set_global_view(first_block(view, index.n_rows))  # what serving reads
    checkpoint = Checkpoint(
        encoder,
        index,
        fingerprint=split.fingerprint or "unknown",
        metrics={"valid": result.best},
        training=training_record(split, graph_config, train_config, result, pack_seconds),
        feature_tokens=features.tokens if features is not None else [],
    )
    if out_path:
        checkpoint.save(out_path)
        plot_history(result, curves_path(out_path), title=f"{encoder_config.conv.upper()} on {split.protocol}")
    return checkpoint, result


def training_record(
    split: Split, graph_config: GraphConfig, train_config: TrainConfig, result: TrainResult, pack_seconds: float
) -> dict[str, Any]:
    return {
        "graph": graph_config_dict(graph_config),
        "train_config": asdict(train_config),
        "protocol": split.protocol,
        "data": dict(split.info),
        "train_examples": result.samples,
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "train_seconds": round(result.seconds, 2),
        "pack_seconds": round(pack_seconds, 2),
        "samples_per_second": round(result.samples_per_second, 1),
        "history": [{k: float(v) for k, v in row.items()} for row in result.history],
    }


def curves_path(checkpoint_path: str) -> str:
    root, _ = os.path.splitext(checkpoint_path)
    return root + ".curves.png"


def plot_history(result: TrainResult, path: str, title: str = "") -> str:
    """Training loss (per step, smoothed, and per epoch) and validation metrics per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    steps = np.asarray(result.step_losses, dtype=np.float64)
    if steps.size:
        window = max(1, steps.size // 100)
        smooth = np.convolve(steps, np.ones(window) / window, mode="valid")
        per_epoch = steps.size / max(1, len(result.history))
        ax_loss.plot(np.arange(smooth.size) / per_epoch + window / per_epoch, smooth, lw=1, label="step (smoothed)")
    epochs = [row["epoch"] for row in result.history]
    ax_loss.plot(epochs, [row["loss"] for row in result.history], "o-", label="epoch mean")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    for key in ("val_recall@20", "val_mrr@20", "val_recall@10", "val_mrr@10"):
        if result.history and key in result.history[0]:
            ax_val.plot(epochs, [row[key] for row in result.history], "o-", label=key)
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel("validation")
    ax_val.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
