"""Label heads as served: a small classifier on frozen user embeddings, bound to its encoder, and its file.

A head reads the vector the stream publishes and predicts a binary label; the worker and
the file runner add its probability to each embedding (``RIPPLE_HEAD_PATH``). It is
logistic regression (``hidden=0``) or one hidden ReLU layer over standardised inputs;
its decision threshold travels with the weights. Training, baselines and metrics are
offline work: :mod:`operators.offline.head_training` (``ripple train-head``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from operators.checkpoint import Checkpoint, load_payload, save_atomically

HEAD_FORMAT = 1
E_ENCODER_MISMATCH = (
    "head {path} was trained on the embeddings of encoder {expected}, but the model given is {found} ({model}); "
    "pass the checkpoint the head was trained with (--model), or retrain the head on this one with "
    "`ripple train-head --model {model} ...`."
)
E_HEAD_UNREADABLE = "head {path} cannot be read ({cause}); it is not a Ripple label head or is truncated."
E_HEAD_FORMAT = "head {path} has format {found}, this build reads {expected}; retrain it with `ripple train-head`."
E_HEAD_MISSING = "head {path} does not exist; train one with `ripple train-head`."
TASKS = ("purchase", "click", "custom")
SPLITS = ("user", "time")
E_TASK = "unknown task {task!r}; choose purchase, click or custom (custom needs --labels FILE)."
E_SPLIT = "unknown split {split!r}; choose user or time."


@dataclass(frozen=True)
class TaskSpec:
    """What a head predicts and how its examples are split; stored in the head so evaluation re-derives them."""

    task: str
    labels_path: str = ""
    labels_digest: str = ""
    split: str = "user"
    test_share: float = 0.2
    seed: int = 0
    max_per_user: int = 20
    """Examples kept per user (the latest ones; 0 = all)."""
    min_history: int = 1
    """Events a prefix needs before it is an example."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(E_TASK.format(task=self.task))
        if self.split not in SPLITS:
            raise ValueError(E_SPLIT.format(split=self.split))
        if not 0.0 < self.test_share < 1.0:
            raise ValueError(f"the test share must be between 0 and 1 (got {self.test_share}).")

    def to_dict(self) -> dict[str, str | float | int]:
        return dict(self.__dict__)


# ---- the classifier --------------------------------------------------------------------


@dataclass(frozen=True)
class HeadConfig:
    """How a head (and the trained baselines) learn; stored with the head."""

    hidden: int = 64
    """Units of the hidden ReLU layer (0 = logistic regression)."""
    epochs: int = 200
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    patience: int = 15
    """Epochs without a lower validation loss before stopping (the best epoch is kept)."""
    val_share: float = 0.15
    """Share of the training examples (split like the test set) that validates."""
    threshold: float | None = None
    """Decision threshold on the probability (None = the one with the best validation F1)."""
    seed: int = 0
    threads: int = 1
    """torch threads while fitting (1 = reproducible, and fastest for a model this small; 0 = torch's setting)."""


class Classifier(nn.Module):
    """Standardise → (Linear → ReLU →) Linear → one logit; the decision threshold travels with the weights."""

    mean: torch.Tensor
    std: torch.Tensor
    threshold: torch.Tensor

    def __init__(self, n_inputs: int, hidden: int = 0) -> None:
        super().__init__()
        self.n_inputs = n_inputs
        self.hidden = hidden
        self.register_buffer("mean", torch.zeros(n_inputs))
        self.register_buffer("std", torch.ones(n_inputs))
        self.register_buffer("threshold", torch.tensor(0.5, dtype=torch.float64))
        self.net: nn.Module = (
            nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            if hidden
            else nn.Linear(n_inputs, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(-1)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        self.eval()
        with torch.inference_mode():
            logits = self(torch.as_tensor(np.asarray(features, dtype=np.float32)))
        return torch.sigmoid(logits.double()).numpy()


# ---- the head file ---------------------------------------------------------------------


@dataclass
class LabelHead:
    """A trained classifier bound to the encoder whose embeddings it reads.

    ``ripple train-head`` builds one (:func:`operators.offline.head_training.train_label_head`);
    serving loads it (:meth:`load`), checks it against the model (:meth:`check_encoder`) and
    scores every published vector (:meth:`score_many`):

    >>> import numpy as np, torch
    >>> from operators import Checkpoint, EncoderConfig
    >>> checkpoint = Checkpoint.seeded(EncoderConfig(dim=4, hash_buckets=16), seed=0)
    >>> classifier = Classifier(n_inputs=4)  # logistic regression: hidden=0
    >>> with torch.no_grad():
    ...     _ = classifier.net.weight.fill_(1.0)
    ...     _ = classifier.net.bias.fill_(0.0)
    >>> head = LabelHead(classifier, checkpoint.encoder_version, TaskSpec("purchase"), HeadConfig(hidden=0))
    >>> head.check_encoder(checkpoint)  # the encoder it was trained on: accepted
    >>> head.score_many(np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])).round(3).tolist()
    [0.5, 0.982]
    >>> head.threshold  # a trained head carries the one with the best validation F1
    0.5
    >>> other = Checkpoint.seeded(EncoderConfig(dim=4, hash_buckets=16), seed=1)
    >>> head.check_encoder(other)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: head the head was trained on the embeddings of encoder ..., but the model given is ...
    """

    classifier: Classifier
    encoder_version: str
    spec: TaskSpec
    config: HeadConfig
    encoder_path: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return float(self.classifier.threshold)

    @property
    def head_version(self) -> str:
        h = hashlib.sha256(self.encoder_version.encode())
        for name, tensor in sorted(self.classifier.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def check_encoder(self, checkpoint: Checkpoint, model: str = "", path: str = "") -> None:
        """Refuse embeddings of any encoder but the one the head was trained on (a ``ripple mix`` of it
        publishes the same vectors and is accepted)."""
        if checkpoint.encoder_version != self.encoder_version:
            raise ValueError(
                E_ENCODER_MISMATCH.format(
                    path=path or "the head",
                    expected=self.encoder_version,
                    found=checkpoint.encoder_version,
                    model=model or self.encoder_path or "model.ckpt",
                )
            )

    def score_many(self, vectors: np.ndarray) -> np.ndarray:
        """Probability of the positive label for each user vector."""
        return self.classifier.predict_proba(vectors)

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write atomically (temp file + rename); return the head version."""
        payload = {
            "format": HEAD_FORMAT,
            "n_inputs": self.classifier.n_inputs,
            "hidden": self.classifier.hidden,
            "state_dict": self.classifier.state_dict(),
            "encoder_version": self.encoder_version,
            "encoder_path": self.encoder_path,
            "spec": self.spec.to_dict(),
            "config": asdict(self.config),
            "metrics": self.metrics,
            "info": self.info,
        }
        save_atomically(payload, path)
        return self.head_version

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LabelHead:
        path = os.fspath(path)
        payload = load_payload(path, HEAD_FORMAT, E_HEAD_MISSING, E_HEAD_UNREADABLE, E_HEAD_FORMAT)
        try:
            classifier = Classifier(int(payload["n_inputs"]), int(payload["hidden"]))
            classifier.load_state_dict(payload["state_dict"])
            classifier.eval()
            return cls(
                classifier,
                str(payload["encoder_version"]),
                TaskSpec(**payload["spec"]),
                HeadConfig(**payload["config"]),
                str(payload.get("encoder_path", "")),
                dict(payload.get("metrics", {})),
                dict(payload.get("info", {})),
            )
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise ValueError(E_HEAD_UNREADABLE.format(path=path, cause=exc)) from exc
