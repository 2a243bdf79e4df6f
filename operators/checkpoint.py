"""A trained (or seeded) model in one file; its ``model_version`` is a content hash."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Any

import msgspec
import torch

from operators.encoder import EncoderConfig, GraphEncoder
from operators.item_index import ItemIndex

CHECKPOINT_FORMAT = 1
E_MISSING = (
    "model checkpoint {path} does not exist; train one with `ripple train` or omit --model to use the seeded default."
)
E_UNREADABLE = "model checkpoint {path} cannot be read ({cause}); it is not a Ripple checkpoint or is truncated."
E_FORMAT = "model checkpoint {path} has format {found}, this build reads {expected}; retrain or upgrade Ripple."


@dataclass
class Checkpoint:
    """Encoder weights with everything needed to use them.

    >>> a, b = Checkpoint.seeded(EncoderConfig(dim=8), seed=1), Checkpoint.seeded(EncoderConfig(dim=8), seed=1)
    >>> a.model_version == b.model_version != Checkpoint.seeded(EncoderConfig(dim=8), seed=2).model_version
    True
    """

    encoder: GraphEncoder
    index: ItemIndex
    fingerprint: str = "seeded"
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> EncoderConfig:
        return self.encoder.config

    @classmethod
    def seeded(cls, config: EncoderConfig | None = None, seed: int = 0, vocab: list[str] | None = None) -> Checkpoint:
        """A deterministic untrained model: same seed, same weights, same version."""
        config = config or EncoderConfig()
        index = ItemIndex(vocab or [], config.hash_buckets)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            encoder = GraphEncoder(config, index.n_rows)
        finally:
            torch.random.set_rng_state(gen_state)
        encoder.eval()
        return cls(encoder, index, fingerprint=f"seeded:{seed}")

    _version: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def model_version(self) -> str:
        cached = self._version
        if cached is None:
            cached = self._content_hash()
            self._version = cached
        return cached

    def invalidate_version(self) -> None:
        """Call after changing weights in place (training does)."""
        self._version = None

    def _content_hash(self) -> str:
        h = hashlib.sha256()
        h.update(msgspec.json.encode(self.config.to_dict(), order="sorted"))
        h.update(msgspec.json.encode(self.index.vocab))
        for name, tensor in sorted(self.encoder.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write atomically (temp file + rename); return the model version."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "state_dict": self.encoder.state_dict(),
            "vocab": self.index.vocab,
            "fingerprint": self.fingerprint,
            "metrics": self.metrics,
            "training": self.training,
            "model_version": self.model_version,
        }
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp"
        buf = io.BytesIO()
        torch.save(payload, buf)
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return self.model_version

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Checkpoint:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(E_MISSING.format(path=path))
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            fmt = payload.get("format")
        except Exception as exc:
            raise ValueError(E_UNREADABLE.format(path=path, cause=exc)) from exc
        if fmt != CHECKPOINT_FORMAT:
            raise ValueError(E_FORMAT.format(path=path, found=fmt, expected=CHECKPOINT_FORMAT))
        try:
            config = EncoderConfig(**payload["config"])
            index = ItemIndex(payload["vocab"], config.hash_buckets)
            encoder = GraphEncoder(config, index.n_rows)
            encoder.load_state_dict(payload["state_dict"])
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise ValueError(E_UNREADABLE.format(path=path, cause=exc)) from exc
        encoder.eval()
        ckpt = cls(encoder, index, payload["fingerprint"], payload["metrics"], payload["training"])
        if payload.get("model_version") not in (None, ckpt.model_version):
            raise ValueError(E_UNREADABLE.format(path=path, cause="its content does not match its model_version"))
        return ckpt
