"""Where user graphs live: the store interface and its in-memory backend."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from graph_state.codec import decode, encode
from graph_state.config import GraphConfig
from graph_state.user_graph import UserGraph


class GraphStore(Protocol):
    """A key-value home for user graphs plus a few bytes of runner metadata.

    ``put_many`` must be atomic: either every graph and meta value of the call is
    stored or none is, so a crash never leaves a batch half applied.
    """

    config: GraphConfig

    def get_many(self, user_ids: Iterable[str]) -> dict[str, UserGraph]: ...
    def put_many(self, graphs: Mapping[str, UserGraph], meta: Mapping[str, bytes] | None = None) -> None: ...
    def delete(self, user_id: str) -> bool: ...
    def get_meta(self, name: str) -> bytes | None: ...
    def user_ids(self) -> Iterator[str]: ...
    def close(self) -> None: ...


class MemoryStore:
    """A dict-backed :class:`GraphStore` that still round-trips through the codec.

    >>> store = MemoryStore(GraphConfig())
    >>> store.put_many({"u1": UserGraph(GraphConfig())}, meta={"offset": b"7"})
    >>> list(store.user_ids()), store.get_meta("offset")
    (['u1'], b'7')
    """

    def __init__(self, config: GraphConfig) -> None:
        self.config = config
        self._graphs: dict[str, bytes] = {}
        self._meta: dict[str, bytes] = {}

    def get_many(self, user_ids: Iterable[str]) -> dict[str, UserGraph]:
        found: dict[str, UserGraph] = {}
        for uid in user_ids:
            raw = self._graphs.get(uid)
            if raw is not None:
                found[uid] = decode(raw, self.config)
        return found

    def put_many(self, graphs: Mapping[str, UserGraph], meta: Mapping[str, bytes] | None = None) -> None:
        self.prepare_many(graphs, meta)()

    def prepare_many(
        self, graphs: Mapping[str, UserGraph], meta: Mapping[str, bytes] | None = None
    ) -> Callable[[], None]:
        """The graphs encoded now; the returned call stores them (``RocksStore.prepare_many``)."""
        encoded = {uid: encode(g) for uid, g in graphs.items()}
        meta = dict(meta or {})

        def write() -> None:
            self._graphs.update(encoded)
            self._meta.update(meta)

        return write

    def delete(self, user_id: str) -> bool:
        return self._graphs.pop(user_id, None) is not None

    def get_meta(self, name: str) -> bytes | None:
        return self._meta.get(name)

    def user_ids(self) -> Iterator[str]:
        return iter(list(self._graphs))

    def close(self) -> None:
        pass


class CachedStore:
    """A write-through LRU of decoded graphs in front of another store.

    Decoding is the largest per-event cost after the forward pass, and active
    users come back within seconds, so keeping their decoded graphs saves it.
    Valid only while this process is the store's single writer, and only if every
    batch whose graphs were mutated is committed — otherwise call :meth:`clear`.

    It holds at most ``capacity`` graphs and, when ``max_bytes`` is set, at most that many bytes
    of them (:meth:`UserGraph.footprint`, measured when a graph enters and whenever it is
    written): a 10-node graph takes ~7 KB, a 1,000-node one with its layer cache over 1 MB, so a
    count alone bounds memory only for one size of graph.

    >>> store = CachedStore(MemoryStore(GraphConfig()), capacity=1)
    >>> store.put_many({"a": UserGraph(GraphConfig()), "b": UserGraph(GraphConfig())})
    >>> len(store), sorted(store.get_many(["a", "b"]))
    (1, ['a', 'b'])
    """

    def __init__(self, inner: GraphStore, capacity: int = 4096, max_bytes: int = 0) -> None:
        self.inner = inner
        self.config = inner.config
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._lru: OrderedDict[str, UserGraph] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.nbytes = 0
        """The footprint of the cached graphs as last measured (0 without ``max_bytes``)."""

    def __len__(self) -> int:
        return len(self._lru)

    def get_many(self, user_ids: Iterable[str]) -> dict[str, UserGraph]:
        found: dict[str, UserGraph] = {}
        missing: list[str] = []
        for uid in user_ids:
            graph = self._lru.get(uid)
            if graph is None:
                missing.append(uid)
            else:
                self._lru.move_to_end(uid)
                found[uid] = graph
        if missing:
            loaded = self.inner.get_many(missing)
            found.update(loaded)
            self._remember(loaded)
        return found

    def put_many(self, graphs: Mapping[str, UserGraph], meta: Mapping[str, bytes] | None = None) -> None:
        self.inner.put_many(graphs, meta)
        self._remember(graphs)

    def prepare_many(
        self, graphs: Mapping[str, UserGraph], meta: Mapping[str, bytes] | None = None
    ) -> Callable[[], None]:
        """The inner store's ``prepare_many``; the graphs are cached from now on (the next batch reads
        them here before they are written)."""
        write: Callable[[], None] = self.inner.prepare_many(graphs, meta)  # type: ignore[attr-defined]
        self._remember(graphs)
        return write

    def _remember(self, graphs: Mapping[str, UserGraph]) -> None:
        lru, sizes, budget = self._lru, self._sizes, self.max_bytes
        for uid, graph in graphs.items():
            if lru.get(uid) is not graph:  # a graph read through get_many was made the most recent there
                lru[uid] = graph
                lru.move_to_end(uid)
            if budget:
                size = graph.footprint()
                self.nbytes += size - sizes.get(uid, 0)
                sizes[uid] = size
        while len(lru) > self.capacity or (budget and self.nbytes > budget):
            uid, _ = lru.popitem(last=False)
            self.nbytes -= sizes.pop(uid, 0)

    def delete(self, user_id: str) -> bool:
        self._lru.pop(user_id, None)
        self.nbytes -= self._sizes.pop(user_id, 0)
        return self.inner.delete(user_id)

    def get_meta(self, name: str) -> bytes | None:
        return self.inner.get_meta(name)

    def user_ids(self) -> Iterator[str]:
        return self.inner.user_ids()

    def clear(self) -> None:
        self._lru.clear()
        self._sizes.clear()
        self.nbytes = 0

    def close(self) -> None:
        self.clear()
        self.inner.close()
