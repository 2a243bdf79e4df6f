"""The item rows a batch's columns carry: the native gather hashes new items itself (no call per item)
and leaves the index as its own lookup would."""

from __future__ import annotations

import pytest

from graph_state import GraphConfig, UserGraph
from graph_state import user_graph as ug
from operators.item_index import ItemIndex
from operators.tensors import gather_columns
from tests.conftest import BASE_TS, Ev

pytestmark = pytest.mark.skipif(not ug.NATIVE, reason="graph_state._native is not built")

ITEMS = ["a", "b", "ünï", "🙂-x", "c", "d", "e", "f", "g", "h"]


def graphs(config: GraphConfig) -> list[UserGraph]:
    out = []
    for u in range(6):
        g = UserGraph(config)
        for n in range(4 + u):  # the larger ones evict (max_nodes 5): their reused slots are stale
            g.apply(Ev(f"{u}-{n}", ITEMS[(n * 3 + u) % len(ITEMS)], ts=BASE_TS + n))
        out.append(g)
    return out


def test_new_and_stale_items_get_the_rows_the_index_gives():
    """Graphs new to the index and graphs with stale slots (after evictions): the columns' rows, the
    graphs' memos and the index's resolved rows are what ``ItemIndex.row`` would have made, vocabulary
    items and hashed ones (non-ASCII ids included) alike."""
    config = GraphConfig(max_nodes=5)
    native, python = ItemIndex(["b", "e"], hash_buckets=7), ItemIndex(["b", "e"], hash_buckets=7)
    mine, theirs = graphs(config), graphs(config)
    for step in range(2):
        columns = gather_columns(mine, native)
        expected = ug.py_gather(theirs, python, python.row)
        assert columns.rows.tolist() == expected.rows.tolist()
        assert columns.rows.tolist() == [python.row(i) for g in theirs for i in g.item_ids]
        assert native.resolved == python.resolved and len(native.resolved) > 2
        for g in mine:
            assert g._rows_owner is native and g._stale_rows == []
            assert list(g._rows) == [native.row(i) for i in g.item_ids]
        for gs in (mine, theirs):  # new items in reused and new slots
            for u, g in enumerate(gs):
                g.apply(Ev(f"{u}-new{step}", f"new-{step}-{u % 3}", ts=BASE_TS + 100 + step))


def test_past_its_limit_the_lookup_rows_new_items():
    """With more resolved rows than the limit, the native gather leaves new items to the lookup
    (``ItemIndex.row`` then starts its memo again), as the lookup itself would have."""
    g = UserGraph(GraphConfig())
    for n, item in enumerate(["x", "y", "z"]):
        g.apply(Ev(str(n), item, ts=BASE_TS + n))
    called: list[str] = []

    def lookup(item: str) -> int:
        called.append(item)
        return 99

    known = {"x": 5}
    columns = ug.gather([g], object(), lookup, known, (10, 4, 1))
    assert called == ["z"]  # "y" was hashed and remembered (1 item, not past the limit); then 2 were
    assert len(known) == 2 and 10 <= known["y"] < 14
    assert columns.rows.tolist() == [5, known["y"], 99]
