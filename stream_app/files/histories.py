"""An event file as per-user histories of validated events: what training, evaluation and heads read."""

from __future__ import annotations

from collections import Counter

from stream_app.core.events import BehaviorEvent, Rejection, decode_event
from stream_app.core.settings import Settings
from stream_app.files.readers import read_events


def read_histories(path: str, fmt: str, settings: Settings) -> tuple[dict[str, list[BehaviorEvent]], Counter[str]]:
    """Validated events of an event file, per user in file order, and the rejection counts."""
    limits = settings.event_limits()
    histories: dict[str, list[BehaviorEvent]] = {}
    rejected: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    for record in read_events(path, fmt):
        event = decode_event(record.value, record.key, limits)
        if isinstance(event, Rejection):
            rejected[event.reason] += 1
            continue
        key = (event.user_id, event.event_id)
        if key in seen:  # the graph would ignore it too; keep targets consistent with that
            rejected["duplicate"] += 1
            continue
        seen.add(key)
        histories.setdefault(event.user_id, []).append(event)
    return histories, rejected
