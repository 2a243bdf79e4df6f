"""Downstream labels for user embeddings: derived from the event log or read from a file, split without leakage.

An :class:`Example` is a prefix of one user's history (events in time order, file
order breaking ties, as training orders them) and a binary label about what comes
after it. The prefix is all a head may see: its features are the embedding of the
graph those events build, nothing later.

Tasks:

* ``purchase`` / ``click``: one example per position ``t`` of a user's history
  (``t >= min_history``); the label is whether event ``t`` (the user's next action
  after the prefix) is a purchase / a click. ``max_per_user`` keeps each user's last
  positions so heavy users do not dominate.
* ``custom``: a CSV labels file (optional header, ``#`` comments), either
  ``user_id,label`` (one label per user; the prefix is the user's whole history in the
  data) or ``user_id,ts,label`` (the prefix holds the user's events *strictly before*
  ``ts``: an event logged in the same second as the label may be what the label is
  about). ``ts`` is epoch seconds or ISO-8601 (naive = UTC); labels are ``0``/``1``,
  ``true``/``false`` or ``yes``/``no``.

Splits (:func:`split_examples`) never put the same example on both sides: ``user``
sends every example of a user to one side (by a seeded stable hash of the user id);
``time`` puts examples whose label time is after a cut-off (the ``1 - test_share``
quantile) in the test set, so a head never learns from the future it is tested on.

>>> from types import SimpleNamespace as Ev
>>> log = {"u": [Ev(event_id=str(i), item_id="a", action=a, ts=float(i), weight=None)
...              for i, a in enumerate(["view", "cart", "purchase", "view"])]}
>>> [(e.length, e.label) for e in next_action_examples(log, "purchase")]
[(1, 0), (2, 1), (3, 0)]
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from graph_state import Behavior
from operators.heads import E_SPLIT, E_TASK, SPLITS, TASKS
from operators.item_index import stable_hash

E_NEEDS_LABELS = "task custom reads its labels from a file; pass --labels FILE (user_id,label or user_id,ts,label)."
E_LABEL_VALUE = "{path}:{line}: label {value!r} is not 0/1 (or true/false, yes/no); heads are binary classifiers."
E_TS_VALUE = "{path}:{line}: ts {value!r} is neither epoch seconds nor ISO-8601; fix the line."
E_COLUMNS = (
    "{path}:{line}: expected {expected} columns like the first row (user_id,label or user_id,ts,label), got {found}."
)
E_EMPTY_LABELS = "{path} holds no labels; write one 'user_id,label' or 'user_id,ts,label' row per example."
E_NO_EXAMPLES = (
    "no labelled examples: {why}. Check that --data holds the users of the labels and that histories are long enough "
    "(--min-history)."
)
E_TIME_SPLIT_PER_USER = (
    "per-user labels (user_id,label) carry no time, so --split time cannot order them; use --split user or give "
    "user_id,ts,label rows."
)
E_EMPTY_SIDE = "the {split} split with test share {share} leaves the {side} set empty; use more data or another share."

_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}


@dataclass(frozen=True)
class Example:
    """The first ``length`` events of ``user_id``'s time-ordered history, labelled ``label`` at time ``ts``.

    ``ts`` is NaN for per-user labels (they have no time).
    """

    user_id: str
    length: int
    label: int
    ts: float


@dataclass(frozen=True)
class Labels:
    """A custom labels file: rows of (user_id, ts, label); ``ts`` is NaN for per-user labels."""

    path: str
    per_user: bool
    rows: list[tuple[str, float, int]]
    digest: str = ""


@dataclass
class ExampleSet:
    """Examples plus why others were dropped (``unknown_user``, ``short_history``, ``capped``)."""

    examples: list[Example]
    dropped: Counter[str] = field(default_factory=Counter)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([e.label for e in self.examples], dtype=np.int64)


def ordered_histories(histories: Mapping[str, Sequence[Behavior]]) -> dict[str, list[Behavior]]:
    """Each user's events sorted by ``ts`` (stable: file order breaks ties), as training orders them."""
    return {user: sorted(events, key=lambda e: float(e.ts)) for user, events in histories.items()}


def next_action_examples(
    histories: Mapping[str, Sequence[Behavior]], action: str, max_per_user: int = 0, min_history: int = 1
) -> list[Example]:
    """One example per position: does the user's next event have ``action``? (``max_per_user`` 0 = all)."""
    out: list[Example] = []
    for user, events in ordered_histories(histories).items():
        positions = range(max(1, min_history), len(events))
        if max_per_user > 0:
            positions = positions[-max_per_user:]
        out.extend(Example(user, t, int(events[t].action == action), float(events[t].ts)) for t in positions)
    return out


def custom_examples(
    histories: Mapping[str, Sequence[Behavior]], labels: Labels, max_per_user: int = 0, min_history: int = 1
) -> ExampleSet:
    """Examples of a labels file against the histories it labels (see the module docstring)."""
    ordered = ordered_histories(histories)
    dropped: Counter[str] = Counter()
    by_user: dict[str, list[tuple[float, int]]] = {}
    for user, ts, label in labels.rows:
        if user not in ordered:
            dropped["unknown_user"] += 1
            continue
        by_user.setdefault(user, []).append((ts, label))
    out: list[Example] = []
    for user, rows in by_user.items():
        events = ordered[user]
        times = [float(e.ts) for e in events]
        if labels.per_user:
            candidates = [Example(user, len(events), label, math.nan) for _, label in rows]
        else:
            rows.sort(key=lambda r: r[0])
            candidates = [Example(user, bisect.bisect_left(times, ts), label, ts) for ts, label in rows]
        kept = [e for e in candidates if e.length >= max(1, min_history)]
        dropped["short_history"] += len(candidates) - len(kept)
        if max_per_user > 0 and len(kept) > max_per_user:
            dropped["capped"] += len(kept) - max_per_user
            kept = kept[-max_per_user:]
        out.extend(kept)
    return ExampleSet(out, dropped)


def derive_examples(
    histories: Mapping[str, Sequence[Behavior]],
    task: str,
    labels: Labels | None = None,
    max_per_user: int = 0,
    min_history: int = 1,
) -> ExampleSet:
    """The examples of ``task`` (``purchase``, ``click`` or ``custom`` with ``labels``); raises if there are none."""
    if task not in TASKS:
        raise ValueError(E_TASK.format(task=task))
    if task == "custom":
        if labels is None:
            raise ValueError(E_NEEDS_LABELS)
        found = custom_examples(histories, labels, max_per_user, min_history)
    else:
        found = ExampleSet(next_action_examples(histories, task, max_per_user, min_history))
    if not found.examples:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(found.dropped.items())) or "the histories are empty"
        raise ValueError(E_NO_EXAMPLES.format(why=why))
    return found


# ---- the labels file ------------------------------------------------------------------


def parse_label(value: str) -> int | None:
    v = value.strip().lower()
    return 1 if v in _TRUE else 0 if v in _FALSE else None


def parse_ts(value: str) -> float | None:
    """Epoch seconds or ISO-8601 (naive means UTC); None when it is neither."""
    v = value.strip()
    try:
        ts = float(v)
        return ts if math.isfinite(ts) else None
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def read_labels(path: str) -> Labels:
    """Read a ``user_id,label`` or ``user_id,ts,label`` CSV; a first row whose label does not parse is a header."""
    rows: list[tuple[str, float, int]] = []
    width = 0
    digest = hashlib.sha256()
    with open(path, encoding="utf-8", newline="") as f:
        for n, cells in enumerate(csv.reader(f), 1):
            if not cells or not "".join(cells).strip() or cells[0].lstrip().startswith("#"):
                continue
            cells = [c.strip() for c in cells]
            if width == 0:
                if len(cells) not in (2, 3):
                    raise ValueError(E_COLUMNS.format(path=path, line=n, expected="2 or 3", found=len(cells)))
                width = len(cells)
                if parse_label(cells[-1]) is None:  # the header
                    continue
            if len(cells) != width:
                raise ValueError(E_COLUMNS.format(path=path, line=n, expected=width, found=len(cells)))
            label = parse_label(cells[-1])
            if label is None:
                raise ValueError(E_LABEL_VALUE.format(path=path, line=n, value=cells[-1]))
            ts = math.nan
            if width == 3:
                parsed = parse_ts(cells[1])
                if parsed is None:
                    raise ValueError(E_TS_VALUE.format(path=path, line=n, value=cells[1]))
                ts = parsed
            rows.append((cells[0], ts, label))
            digest.update(f"{cells[0]}\x00{ts!r}\x00{label}\n".encode())
    if not rows:
        raise ValueError(E_EMPTY_LABELS.format(path=path))
    return Labels(path, width == 2, rows, digest.hexdigest()[:16])


# ---- splits ------------------------------------------------------------------------------


def unit_hash(seed: int, salt: str, user_id: str) -> float:
    """A stable number in [0, 1) per (seed, salt, user): the same user always lands on the same side."""
    return stable_hash(f"{seed}\x00{salt}\x00{user_id}") / 2.0**64


def split_examples(
    examples: Sequence[Example], by: str = "user", test_share: float = 0.2, seed: int = 0, salt: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
    """``(train indices, test indices)`` of ``examples``; see the module docstring for the two rules.

    >>> ex = [Example(f"u{i % 10}", 1, i % 2, float(i)) for i in range(100)]
    >>> train, test = split_examples(ex, "time", 0.25)
    >>> len(test), max(ex[i].ts for i in train) < min(ex[i].ts for i in test)
    (25, True)
    >>> train, test = split_examples(ex, "user", 0.3, seed=1)
    >>> {ex[i].user_id for i in train} & {ex[i].user_id for i in test}
    set()
    """
    if by not in SPLITS:
        raise ValueError(E_SPLIT.format(split=by))
    if by == "user":
        side = {u: unit_hash(seed, salt, u) < test_share for u in {e.user_id for e in examples}}
        is_test = np.asarray([side[e.user_id] for e in examples], dtype=bool)
    else:
        ts = np.asarray([e.ts for e in examples], dtype=np.float64)
        if np.isnan(ts).any():
            raise ValueError(E_TIME_SPLIT_PER_USER)
        cutoff = np.quantile(ts, 1.0 - test_share, method="lower") if len(ts) else 0.0
        is_test = ts > cutoff
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    for side_name, idx in (("training", train), ("test", test)):
        if len(idx) == 0:
            raise ValueError(E_EMPTY_SIDE.format(split=by, share=test_share, side=side_name))
    return train, test
