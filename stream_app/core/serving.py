"""What both runners serve, built from the settings: the model, the label head and the pipeline.

The worker (``stream_app/kafka/faust_app.py``), the file runner (``stream_app/files/file_runner.py``),
the live model swap, the benches and the CLI all load a checkpoint and a head, and build a
:class:`Pipeline`, through these functions: a model is served (and refused) by the same
rules whichever way the events arrive.

>>> from graph_state import MemoryStore
>>> settings = Settings.from_env({}, graph_cache_users=0)
>>> pipeline = build_pipeline(settings, MemoryStore(settings.graph_config()))
>>> pipeline.embedder.model_version == load_checkpoint(settings).model_version  # the seeded default model
True
"""

from __future__ import annotations

from dataclasses import dataclass

from graph_state import CachedStore, GraphStore
from operators import Checkpoint, Embedder, EncoderConfig
from operators.graph_settings import graph_config_of
from operators.heads import LabelHead
from stream_app.core.events import EventLimits
from stream_app.core.metrics import Metrics
from stream_app.core.pipeline import Pipeline
from stream_app.core.recommend import Recommender
from stream_app.core.settings import Settings

W_UNTRAINED = (
    "note: no --model / RIPPLE_MODEL_PATH, so the encoder is the seeded, untrained one (random weights: the "
    "vectors carry no learned signal); train one with `ripple train --data EVENTS --out model.ckpt` "
    "(`make demo` shows how) and pass --model model.ckpt."
)
E_GRAPH_MISMATCH = (
    "checkpoint {path} was trained on user graphs built with {trained}, but the settings say {current}; "
    "the published embeddings would not be the vectors the model was trained and evaluated on. "
    "Fix: run with {fix}, or retrain the model with the current settings."
)


def load_checkpoint(settings: Settings) -> Checkpoint:
    """The checkpoint named by the settings, or the seeded default model.

    A trained checkpoint records the graph settings (window, actions, action
    weights, decay) it was trained with; serving it on graphs built differently
    would publish vectors that were never evaluated, so that is refused with the
    settings that fix it.
    """
    if not settings.model_path:
        return Checkpoint.seeded(EncoderConfig(actions=settings.actions), seed=settings.model_seed)
    checkpoint = Checkpoint.load(settings.model_path)
    check_servable(checkpoint, settings)
    return checkpoint


def load_head(settings: Settings, checkpoint: Checkpoint) -> LabelHead | None:
    """The label head named by ``RIPPLE_HEAD_PATH`` (None when unset), refused unless trained on ``checkpoint``."""
    if not settings.head_path:
        return None
    head = LabelHead.load(settings.head_path)
    head.check_encoder(checkpoint, settings.model_path or "the seeded default model", settings.head_path)
    return head


def check_servable(checkpoint: Checkpoint, settings: Settings) -> None:
    """What a loaded checkpoint must satisfy to be served with ``settings`` (startup and live swap)."""
    if checkpoint.training.get("graph"):
        check_graph_settings(checkpoint, settings)
    recommender(settings).check(checkpoint)


def recommender(settings: Settings) -> Recommender:
    """``RIPPLE_RECOMMEND_TOP`` / ``RIPPLE_RECOMMEND_EXCLUDE_SEEN`` for the pipeline."""
    return Recommender(settings.recommend_top, settings.recommend_exclude_seen)


def check_graph_settings(checkpoint: Checkpoint, settings: Settings) -> None:
    trained, current = graph_config_of(checkpoint), settings.graph_config()
    differ = [
        name
        for name in ("max_nodes", "actions", "action_weights", "decay_seconds")
        if _canonical(getattr(trained, name)) != _canonical(getattr(current, name))
    ]
    if not differ:
        return

    def show(config: object) -> str:
        return " ".join(f"RIPPLE_{n.upper()}={_env_value(getattr(config, n))}" for n in differ)

    raise ValueError(
        E_GRAPH_MISMATCH.format(
            path=settings.model_path, trained=show(trained), current=show(current), fix=show(trained)
        )
    )


def _canonical(value: object) -> object:
    if isinstance(value, dict):
        return sorted((str(k), float(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(value, float):
        return round(value, 9)
    return value


def _env_value(value: object) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v:g}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class ServedModel:
    """The checkpoint a runner serves and the label head scored beside it (``None``: no head)."""

    checkpoint: Checkpoint
    head: LabelHead | None = None


def load_model(settings: Settings) -> ServedModel:
    """``RIPPLE_MODEL_PATH`` (or the seeded model) and ``RIPPLE_HEAD_PATH``, each checked as serving requires."""
    checkpoint = load_checkpoint(settings)
    return ServedModel(checkpoint, load_head(settings, checkpoint))


def build_pipeline(
    settings: Settings,
    store: GraphStore,
    metrics: Metrics | None = None,
    limits: EventLimits | None = None,
    model: ServedModel | None = None,
    cache_users: int | None = None,
) -> Pipeline:
    """The pipeline the settings describe, over ``store``: the one way every runner builds it.

    ``store`` is the runner's own (RocksDB for files, the Faust table for the worker); the
    graph cache of ``RIPPLE_GRAPH_CACHE_USERS`` users and ``RIPPLE_GRAPH_CACHE_MB`` (``cache_users``
    overrides the first, 0: no cache) goes in front of it. ``model`` is the one the settings name
    unless given (:func:`load_model`); ``limits`` the settings' event limits unless given (the
    worker requires keys).
    """
    model = model or load_model(settings)
    users = settings.graph_cache_users if cache_users is None else cache_users
    if users > 0:
        store = CachedStore(store, users, settings.graph_cache_mb << 20)
    return Pipeline(
        store,
        Embedder(model.checkpoint, settings.incremental_policy()),
        limits or settings.event_limits(),
        metrics,
        model.head,  # RIPPLE_HEAD_PATH: head_score beside each embedding
        settings.explain_top,
        recommender(settings),
    )
