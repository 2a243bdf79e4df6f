"""An event file as per-user histories of validated events: what training, evaluation and heads read."""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from pathlib import Path

from stream_app.core.events import BehaviorEvent, Rejection, decode_event
from stream_app.core.settings import Settings
from stream_app.files.readers import read_events

E_FORMAT_SESSIONS = "--format sessions reads the SR-GNN split; {path} is neither its directory nor train_sessions.txt."


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


class DataFormat(StrEnum):
    sessions = "sessions"
    recbole = "recbole"
    jsonl = "jsonl"
    csv = "csv"
    diginetica = "diginetica"


def load_split(data: Path, fmt: DataFormat, settings: Settings, val_share: float, seed: int):
    """The training/validation/test split of a data file (what ``ripple train`` and ``ripple evaluate`` read)."""
    from operators.offline.datasets import fingerprint_files, leave_one_out, sessions_split

    if fmt is DataFormat.sessions:
        if not (data.is_dir() or data.name.endswith(".txt")):
            raise ValueError(E_FORMAT_SESSIONS.format(path=data))
        return sessions_split(str(data), val_share=val_share, seed=seed)
    histories, rejected = read_histories(str(data), fmt.value, settings)
    split = leave_one_out(histories, fingerprint_files([str(data)], f"{fmt.value}:loo"))
    split.info["rejected"] = sum(rejected.values())
    return split
