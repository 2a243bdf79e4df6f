"""The running service: settings, event contract, pipeline, runners, metrics and CLI."""

from stream_app.events import BehaviorEvent, EventLimits, Rejection, decode_event
from stream_app.pipeline import BatchResult, Pipeline
from stream_app.records import DeadLetter, RawRecord, UserEmbedding
from stream_app.settings import Settings

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
