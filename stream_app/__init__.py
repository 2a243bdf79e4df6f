"""The running service: `core` (settings, events, the pipeline, metrics), `kafka` (the worker, the feed), `files`
(the file runner, readers, exports) and `cli` (the `ripple` command); see docs/architecture.md."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream_app.core.events import BehaviorEvent, EventLimits, Rejection, decode_event
    from stream_app.core.pipeline import BatchResult, Pipeline
    from stream_app.core.records import DeadLetter, RawRecord, UserEmbedding
    from stream_app.core.settings import Settings

# Imported on first use, not with the package: `ripple feed`, `lookup`, `produce` and `tail` never load
# torch (the pipeline does), which costs ~5 s and ~800 MiB per process.
_EXPORTS = {
    "BatchResult": "stream_app.core.pipeline",
    "BehaviorEvent": "stream_app.core.events",
    "DeadLetter": "stream_app.core.records",
    "EventLimits": "stream_app.core.events",
    "Pipeline": "stream_app.core.pipeline",
    "RawRecord": "stream_app.core.records",
    "Rejection": "stream_app.core.events",
    "Settings": "stream_app.core.settings",
    "UserEmbedding": "stream_app.core.records",
    "decode_event": "stream_app.core.events",
}

__all__ = [
    "BatchResult",
    "BehaviorEvent",
    "DeadLetter",
    "EventLimits",
    "Pipeline",
    "RawRecord",
    "Rejection",
    "Settings",
    "UserEmbedding",
    "decode_event",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stream_app' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
