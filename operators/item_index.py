"""Item id → embedding row: a trained vocabulary plus hashing buckets for unseen items."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence


def stable_hash(item_id: str) -> int:
    """A process-independent 64-bit hash (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "little")


class ItemIndex:
    """Maps item ids to rows of the item embedding table.

    Items in ``vocab`` (those seen in training) own rows ``0..len(vocab)-1``.
    Every other item shares one of ``hash_buckets`` rows after them, chosen by a
    stable hash, so an unseen item always gets the same, deterministic vector and
    two unseen items collide only by chance.

    >>> index = ItemIndex(["a", "b"], hash_buckets=4)
    >>> index.row("b"), index.n_rows, 2 <= index.row("never-seen") < 6
    (1, 6, True)
    >>> index.row("never-seen") == ItemIndex(["a", "b"], hash_buckets=4).row("never-seen")
    True
    """

    def __init__(self, vocab: Iterable[str] = (), hash_buckets: int = 1 << 14) -> None:
        if hash_buckets < 1:
            raise ValueError(f"hash_buckets must be at least 1 (got {hash_buckets}).")
        self.vocab: list[str] = list(vocab)
        self.hash_buckets = hash_buckets
        self._rows = {item: i for i, item in enumerate(self.vocab)}
        if len(self._rows) != len(self.vocab):
            raise ValueError("the item vocabulary has duplicate ids; deduplicate it before building the index.")
        self._cache: dict[str, int] = dict(self._rows)
        """Every row resolved so far, vocabulary first; hashed rows are added on first use."""

    @property
    def resolved(self) -> dict[str, int]:
        """Every row :meth:`row` has resolved so far (read-only: ``graph_state.gather`` reads new
        items' rows here without a call per item)."""
        return self._cache

    @property
    def hashed_rows(self) -> tuple[int, int, int]:
        """How :meth:`row` rows an item :attr:`resolved` lacks (it holds the whole vocabulary, so such an
        item is not in it): ``len(vocab) + stable_hash(item) % hash_buckets``, remembered in
        :attr:`resolved` while it holds at most the last number of items. ``graph_state.gather``
        hashes new items itself with it (``(base, buckets, limit)``), no call per item."""
        return len(self.vocab), self.hash_buckets, 1_000_000 + len(self._rows)

    @property
    def n_rows(self) -> int:
        return len(self.vocab) + self.hash_buckets

    def row(self, item_id: str) -> int:
        row = self._cache.get(item_id)
        if row is None:
            row = self._rows.get(item_id)
            if row is None:
                row = len(self.vocab) + stable_hash(item_id) % self.hash_buckets
            if len(self._cache) > 1_000_000 + len(self._rows):
                self._cache = dict(self._rows)
            self._cache[item_id] = row
        return row

    def rows(self, item_ids: Sequence[str]) -> list[int]:
        cache = self._cache
        try:
            return [cache[item] for item in item_ids]
        except KeyError:
            return [self.row(item) for item in item_ids]

    def is_known(self, item_id: str) -> bool:
        return item_id in self._rows
