"""Item side features: item id → a bag of tokens (categories, year, text words), read from a file.

Three formats:

* ``recbole``: a RecBole atomic ``.item`` file (tab-separated, header ``name:type``).
  ``token`` fields give one token, ``token_seq`` fields one token per space-separated
  word (ml-100k: ``class`` = genres, ``release_year``, ``movie_title``).
* ``csv``: a header, the item id in the ``item_id`` column (else the first one); every
  other cell is split on ``|`` and whitespace.
* ``jsonl``: one object per line with ``item_id``; list values give one token per
  element, strings one per whitespace-separated word, numbers one token.

Tokens are named ``field=value`` so equal words of different fields stay apart.
``fields`` keeps only the named fields; a token carried by fewer than ``min_count``
items is dropped (a token of one item is only a second item id). The encoder sums
an item's token vectors (mean of its bag) into its item vector; an item with no
tokens, or outside the checkpoint's training vocabulary, gets a zero feature vector,
so it falls back to exactly the plain item embedding.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

FORMATS = ("recbole", "csv", "jsonl")
E_FORMAT = "unknown item features format {value!r}; choose one of {choices} (or name the file .item/.csv/.jsonl)."
E_MISSING = "item features file {path} does not exist; pass an existing file to --item-features."
E_NO_ID = "{path}: no item id column (expected 'item_id' or RecBole's 'item_id:token'); fix the header."
E_BAD_LINE = "{path}:{line}: {cause}; fix or remove the line."
E_EMPTY = (
    "{path} gives no item tokens{fields}; check --item-fields against the file's columns ({columns}) "
    "or lower --feature-min-count."
)
_SPLIT = re.compile(r"[|\s]+")


@dataclass(frozen=True)
class ItemFeatures:
    """Token vocabulary and each item's token ids, plus where they came from.

    >>> f = ItemFeatures.from_tokens({"a": ["g=x", "g=y"], "b": ["g=x"], "c": []}, source="mem")
    >>> f.tokens, f.items["a"], f.items["b"], "c" in f.items
    (['g=x', 'g=y'], (0, 1), (0,), False)
    >>> offsets, ids = f.table(["b", "zzz", "a"], n_rows=4)
    >>> offsets.tolist(), ids.tolist()
    ([0, 1, 1, 3, 3], [0, 0, 1])
    """

    tokens: list[str]
    items: dict[str, tuple[int, ...]]
    source: str = ""
    fingerprint: str = ""

    @classmethod
    def from_tokens(
        cls, tokens_of: Mapping[str, Sequence[str]], source: str = "", fingerprint: str = "", min_count: int = 1
    ) -> ItemFeatures:
        counts = Counter(t for toks in tokens_of.values() for t in set(toks))
        vocab: dict[str, int] = {}
        items: dict[str, tuple[int, ...]] = {}
        for item, toks in tokens_of.items():
            ids = []
            for tok in dict.fromkeys(toks):  # first occurrence order, no repeats
                if counts[tok] < min_count:
                    continue
                ids.append(vocab.setdefault(tok, len(vocab)))
            if ids:
                items[item] = tuple(ids)
        return cls(list(vocab), items, source, fingerprint)

    @property
    def label(self) -> str:
        """What the encoder config records: file name and content digest."""
        return f"{self.source}:{self.fingerprint}" if self.fingerprint else self.source

    def table(self, vocab: Sequence[str], n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids per embedding row as CSR ``(offsets [n_rows + 1], ids)``; hashed rows stay empty."""
        offsets = np.zeros(n_rows + 1, dtype=np.int64)
        ids: list[int] = []
        for row, item in enumerate(vocab):
            toks = self.items.get(item, ())
            ids.extend(toks)
            offsets[row + 1] = len(toks)
        np.cumsum(offsets, out=offsets)
        return offsets, np.asarray(ids, dtype=np.int64)

    def coverage(self, vocab: Sequence[str]) -> float:
        """Share of ``vocab`` items that have at least one token."""
        return sum(item in self.items for item in vocab) / max(1, len(vocab))


def detect_format(path: str) -> str:
    name = path.lower()
    if name.endswith(".item"):
        return "recbole"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    raise ValueError(E_FORMAT.format(value=os.path.basename(path), choices=FORMATS))


def read_item_features(
    path: str, fmt: str | None = None, fields: Iterable[str] | None = None, min_count: int = 2
) -> ItemFeatures:
    """Read an item features file (see the module docstring)."""
    if not os.path.exists(path):
        raise FileNotFoundError(E_MISSING.format(path=path))
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(E_FORMAT.format(value=fmt, choices=FORMATS))
    wanted = set(fields) if fields else None
    columns: set[str] = set()
    tokens_of: dict[str, list[str]] = {}
    reader = {"recbole": _recbole_rows, "csv": _csv_rows, "jsonl": _jsonl_rows}[fmt]
    for item, field_values in reader(path, columns):
        toks = tokens_of.setdefault(item, [])
        for name, values in field_values:
            if wanted is None or name in wanted:
                toks.extend(f"{name}={v}" for v in values)
    features = ItemFeatures.from_tokens(tokens_of, os.path.basename(path), _digest(path), min_count)
    if not features.tokens:
        named = f" for fields {sorted(wanted)}" if wanted else ""
        raise ValueError(E_EMPTY.format(path=path, fields=named, columns=", ".join(sorted(columns))))
    return features


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


Row = tuple[str, list[tuple[str, list[str]]]]


def _recbole_rows(path: str, columns: set[str]) -> Iterator[Row]:
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        names = [h.partition(":")[0] for h in header]
        kinds = [h.partition(":")[2] for h in header]
        if "item_id" not in names:
            raise ValueError(E_NO_ID.format(path=path))
        id_col = names.index("item_id")
        use = [i for i, k in enumerate(kinds) if i != id_col and k in ("token", "token_seq")]
        columns.update(names[i] for i in use)
        for n, line in enumerate(f, 2):
            cells = line.rstrip("\r\n").split("\t")
            if not line.strip():
                continue
            if len(cells) < len(header):
                cells += [""] * (len(header) - len(cells))
            item = cells[id_col].strip()
            if not item:
                raise ValueError(E_BAD_LINE.format(path=path, line=n, cause="empty item id"))
            values = []
            for i in use:
                cell = cells[i].strip()
                parts = cell.split() if kinds[i] == "token_seq" else ([cell] if cell else [])
                values.append((names[i], parts))
            yield item, values


def _csv_rows(path: str, columns: set[str]) -> Iterator[Row]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if not header:
            raise ValueError(E_NO_ID.format(path=path))
        header = [h.strip() for h in header]
        id_col = header.index("item_id") if "item_id" in header else 0
        use = [i for i in range(len(header)) if i != id_col]
        columns.update(header[i] for i in use)
        for cells in rows:
            if not cells or len(cells) <= id_col or not cells[id_col].strip():
                continue
            yield (
                cells[id_col].strip(),
                [(header[i], [p for p in _SPLIT.split(cells[i]) if p]) for i in use if i < len(cells)],
            )


def _jsonl_rows(path: str, columns: set[str]) -> Iterator[Row]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(E_BAD_LINE.format(path=path, line=n, cause=f"not JSON ({exc.msg})")) from exc
            if not isinstance(obj, dict) or obj.get("item_id") in (None, ""):
                raise ValueError(E_BAD_LINE.format(path=path, line=n, cause="expected an object with 'item_id'"))
            values = []
            for name, value in obj.items():
                if name == "item_id":
                    continue
                columns.add(name)
                if isinstance(value, list):
                    parts = [str(v) for v in value if v is not None and str(v) != ""]
                elif isinstance(value, str):
                    parts = value.split()
                elif isinstance(value, bool | int | float):
                    parts = [str(value)]
                else:
                    parts = []
                values.append((name, parts))
            yield str(obj["item_id"]), values
