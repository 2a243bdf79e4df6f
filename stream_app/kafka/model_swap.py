"""Live model swap: the worker notices a new checkpoint at ``RIPPLE_MODEL_PATH`` and serves it.

How it works (one worker; every worker of a deployment does the same on its own):

1. a Faust timer (every ``RIPPLE_MODEL_POLL_S`` seconds) hands :meth:`ModelWatcher.poll` to
   a thread, so the event loop keeps processing micro-batches meanwhile;
2. ``poll`` compares the file's ``os.stat`` (inode, size, mtime in ns: an atomic rename or a
   Kubernetes volume update changes it) with the one it saw last; on a change it loads the
   file and validates it exactly as a starting worker does (``Checkpoint.load``: format,
   content against the recorded ``model_version``; :func:`check_servable`: the graph settings
   it was trained with) plus the action vocabulary (:meth:`Pipeline.check_actions`);
3. a checkpoint with the serving ``model_version`` (the same content, touched or copied
   again) changes nothing; a new valid one comes back as an :class:`Embedder`;
4. the worker takes the lock every event batch and deletion batch holds from process to
   commit and replaces the pipeline's embedder there (:meth:`Pipeline.swap_model`): the swap
   falls between two micro-batches, and every embedding published after it carries the new
   ``model_version``. Per-node layer caches in the stored graphs are keyed by
   ``model_version`` (``operators.incremental.cache_key``), so each user's first batch after
   the swap recomputes their whole graph with the new model; nothing else needs clearing.

A file that fails validation is rejected: one log line at ERROR names the file, the cause
and the fix, ``ripple_model_reloads_total{outcome="rejected"}`` goes up, the old model keeps
serving, and the file is not read again until it changes.

Why a polled file and not a control topic: the worker already takes its model from
``RIPPLE_MODEL_PATH``, a restart must come back with the model it served last (the path
says which), and a broadcast topic would need a consumer outside the worker's consumer
group on every worker (a group gives each message to one member only). Rolling a model is
then one atomic file replacement per worker (``mv``, a volume or image update).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from operators import Checkpoint, Embedder
from stream_app.core.metrics import Metrics
from stream_app.core.pipeline import Pipeline
from stream_app.core.serving import check_servable
from stream_app.core.settings import Settings

log = logging.getLogger("ripple.model_swap")

SWAPPED = "swapped"
REJECTED = "rejected"
UNCHANGED = "unchanged"
E_REJECTED = (
    "model reload rejected: {path}: {cause} The worker keeps serving model {serving} "
    "and reads the file again when it changes."
)
E_ATOMIC = (
    " Write checkpoints atomically: copy to a temporary name on the same filesystem, "
    "then `mv` it over RIPPLE_MODEL_PATH."
)
E_MISSING = "the file is gone (deleted or renamed away)."


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of a file without reading it."""

    inode: int
    size: int
    mtime_ns: int


def file_stamp(path: str) -> FileStamp | None:
    """The file's stamp, following symlinks; ``None`` when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return FileStamp(st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class ReloadResult:
    """What one look at the checkpoint file found (``embedder`` only when it is a new, valid model)."""

    outcome: str
    embedder: Embedder | None = None
    detail: str = ""
    seconds: float = 0.0


class ModelWatcher:
    """Watches ``settings.model_path`` for a new checkpoint; :meth:`poll` is safe to run in a thread.

    Create it *before* loading the checkpoint the worker starts with: a file replaced between
    the two is then seen as changed and read again by the first poll.
    """

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        if not settings.model_path:
            raise ValueError("a live model swap needs RIPPLE_MODEL_PATH (the seeded default model has no file)")
        self.settings = settings
        self.path = settings.model_path
        self.metrics = metrics
        self.seen = file_stamp(self.path)

    def changed(self) -> bool:
        return file_stamp(self.path) != self.seen

    def poll(self, serving_version: str) -> ReloadResult | None:
        """``None`` when the file did not change since the last look; else load, validate and report.

        Never raises for a bad file: that is a ``rejected`` result (logged and counted here).
        """
        stamp = file_stamp(self.path)
        if stamp == self.seen:
            return None
        self.seen = stamp  # taken before reading: a write during the load is seen by the next poll
        started = time.perf_counter()
        hint = E_ATOMIC  # a file that cannot be read is most often a copy caught half-written
        try:
            if stamp is None:
                raise FileNotFoundError(E_MISSING)
            checkpoint = Checkpoint.load(self.path)  # format, and content against its model_version
            hint = ""  # the checks below name their own fix
            check_servable(checkpoint, self.settings)  # the graph settings it was trained with
            Pipeline.check_actions(checkpoint, self.settings.actions)
            result = ReloadResult(UNCHANGED, detail=checkpoint.model_version)
            if checkpoint.model_version != serving_version:
                embedder = Embedder(checkpoint, self.settings.incremental_policy())
                result = ReloadResult(SWAPPED, embedder, checkpoint.model_version)
        except Exception as exc:  # any unreadable or incompatible file is a rejection, never a crash
            cause = str(exc).strip().strip('"')
            cause = cause if cause.endswith(".") else cause + "."
            log.error(E_REJECTED.format(path=self.path, cause=cause, serving=serving_version) + hint)
            self.count(REJECTED)
            return ReloadResult(REJECTED, detail=cause, seconds=time.perf_counter() - started)
        result.seconds = time.perf_counter() - started
        if result.outcome == UNCHANGED:
            log.info("model file %s changed but holds the serving model %s: nothing to swap", self.path, result.detail)
            self.count(UNCHANGED)
        return result

    def count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.model_reloads.labels(outcome=outcome).inc()
