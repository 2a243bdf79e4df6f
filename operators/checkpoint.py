"""A trained (or seeded) model in one file; its ``model_version`` is a content hash."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Any

import msgspec
import torch

from operators.encoder import EncoderConfig, FeatureTable, GraphEncoder
from operators.global_view import GlobalView
from operators.item_features import ItemFeatures
from operators.item_index import ItemIndex
from operators.session_knn import KNNMix

CHECKPOINT_FORMAT = 1
E_MISSING = (
    "model checkpoint {path} does not exist; train one with `ripple train` or omit --model to use the seeded default."
)
E_UNREADABLE = "model checkpoint {path} cannot be read ({cause}); it is not a Ripple checkpoint or is truncated."
E_FORMAT = "model checkpoint {path} has format {found}, this build reads {expected}; retrain or upgrade Ripple."


def save_atomically(payload: dict, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file, fsync, rename: a reader (a live model swap) never sees half a file."""
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


def load_payload(path: str, expected_format: int, e_missing: str, e_unreadable: str, e_format: str) -> dict:
    """``torch.load`` (weights only) of a file written by :func:`save_atomically`, format checked.

    The messages name the path (``{path}``) and, for the last two, the cause or the formats found
    and expected (``{cause}``, ``{found}``, ``{expected}``).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(e_missing.format(path=path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        fmt = payload.get("format")
    except Exception as exc:
        raise ValueError(e_unreadable.format(path=path, cause=exc)) from exc
    if fmt != expected_format:
        raise ValueError(e_format.format(path=path, found=fmt, expected=expected_format))
    return payload


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
    feature_tokens: list[str] = field(default_factory=list)
    """Names of the item feature tokens (row ``i`` of ``encoder.token_emb`` is token ``i``); the
    per-item token ids live in the encoder's state, so serving needs nothing but this file."""
    knn_mix: KNNMix | None = None
    """A session-kNN index and weight mixed into the item ranking (``ripple mix``); ``None``: user · item alone.
    It changes recommendations, not embeddings, and is part of the model version."""

    @property
    def config(self) -> EncoderConfig:
        return self.encoder.config

    @classmethod
    def seeded(
        cls,
        config: EncoderConfig | None = None,
        seed: int = 0,
        vocab: list[str] | None = None,
        features: ItemFeatures | None = None,
        global_view: GlobalView | None = None,
    ) -> Checkpoint:
        """A deterministic untrained model: same seed, same weights, same version.

        With ``features`` the config is completed with their label and token count; a config
        with ``global_k`` needs its ``global_view``.
        """
        config = config or EncoderConfig()
        if features is not None:
            config = with_features(config, features)
        index = ItemIndex(vocab or [], config.hash_buckets)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            encoder = build_encoder(config, index, features, global_view)
        finally:
            torch.random.set_rng_state(gen_state)
        encoder.eval()
        return cls(encoder, index, fingerprint=f"seeded:{seed}", feature_tokens=features.tokens if features else [])

    _version: str | None = field(default=None, init=False, repr=False, compare=False)
    _encoder_version: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def model_version(self) -> str:
        """The content hash of everything served: the encoder, its vocabulary and, when present, the kNN mix."""
        cached = self._version
        if cached is None:
            cached = self._content_hash(with_mix=True)
            self._version = cached
        return cached

    @property
    def encoder_version(self) -> str:
        """The content hash of what makes the embeddings: :attr:`model_version` without the kNN mix.

        Equal to :attr:`model_version` for a checkpoint without a mix; a model and its ``ripple
        mix`` publish the same vectors under different model versions, and share this one (a
        label head reads vectors, so it binds to it).
        """
        cached = self._encoder_version
        if cached is None:
            cached = self._content_hash(with_mix=False)
            self._encoder_version = cached
        return cached

    def invalidate_version(self) -> None:
        """Call after changing weights in place (training does)."""
        self._version = self._encoder_version = None

    def _content_hash(self, with_mix: bool) -> str:
        h = hashlib.sha256()
        h.update(msgspec.json.encode(self.config.to_dict(), order="sorted"))
        h.update(msgspec.json.encode(self.index.vocab))
        for name, tensor in sorted(self.encoder.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        if with_mix and self.knn_mix is not None:
            h.update(b"knn_mix")
            h.update(self.knn_mix.digest())
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
        if self.feature_tokens:
            payload["feature_tokens"] = self.feature_tokens
        if self.knn_mix is not None:
            payload["knn_mix"] = self.knn_mix.state()
        save_atomically(payload, path)
        return self.model_version

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Checkpoint:
        path = os.fspath(path)
        payload = load_payload(path, CHECKPOINT_FORMAT, E_MISSING, E_UNREADABLE, E_FORMAT)
        try:
            config = EncoderConfig(**payload["config"])
            index = ItemIndex(payload["vocab"], config.hash_buckets)
            state = payload["state_dict"]
            table = FeatureTable(state["feat_offsets"], state["feat_tokens"]) if config.feature_tokens else None
            view = None
            if config.global_k:
                view = GlobalView(state["global_offsets"], state["global_neighbours"], state["global_weights"])
            encoder = GraphEncoder(config, index.n_rows, table, view)
            encoder.load_state_dict(state)
            mix = KNNMix.from_state(payload["knn_mix"], index) if "knn_mix" in payload else None
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise ValueError(E_UNREADABLE.format(path=path, cause=exc)) from exc
        encoder.eval()
        ckpt = cls(
            encoder,
            index,
            payload["fingerprint"],
            payload["metrics"],
            payload["training"],
            list(payload.get("feature_tokens", [])),
            mix,
        )
        if payload.get("model_version") not in (None, ckpt.model_version):
            raise ValueError(E_UNREADABLE.format(path=path, cause="its content does not match its model_version"))
        return ckpt


def with_features(config: EncoderConfig, features: ItemFeatures) -> EncoderConfig:
    """``config`` recording ``features`` (label and token count)."""
    return dataclasses.replace(config, item_features=features.label, feature_tokens=len(features.tokens))


def build_encoder(
    config: EncoderConfig,
    index: ItemIndex,
    features: ItemFeatures | None = None,
    global_view: GlobalView | None = None,
) -> GraphEncoder:
    """A freshly initialised encoder for ``index``, with the feature table of ``features`` when the config has one
    and ``global_view`` (:func:`operators.global_view.build_global_view`) when it has a global view."""
    table = None
    if config.feature_tokens:
        if features is None:
            raise ValueError(f"the encoder config names item features {config.item_features!r}; pass them.")
        table = FeatureTable.from_numpy(*features.table(index.vocab, index.n_rows))
    return GraphEncoder(config, index.n_rows, table, global_view)
