from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from graph_state import GraphConfig, UserGraph
from tests.conftest import BASE_TS, Ev


def build(events, **cfg) -> UserGraph:
    g = UserGraph(GraphConfig(**cfg))
    for ev in events:
        g.apply(ev)
    return g


def test_transition_edge_weight_uses_action_weight_and_gap_decay():
    g = build(
        [Ev("1", "a", "view", BASE_TS), Ev("2", "b", "purchase", BASE_TS + 3600)],
        decay_seconds=3600.0,
    )
    ((src, dst, w),) = g.edges()
    assert (g.item_ids[src], g.item_ids[dst]) == ("a", "b")
    assert math.isclose(w, 5.0 * math.exp(-1.0))


def test_repeated_transition_accumulates_and_self_transition_adds_no_edge():
    g = build([Ev("1", "a"), Ev("2", "b"), Ev("3", "b"), Ev("4", "a"), Ev("5", "b")])
    weights = {(g.item_ids[s], g.item_ids[d]): w for s, d, w in g.edges()}
    assert weights == {("a", "b"): 2.0, ("b", "a"): 1.0}
    assert g.counts[g.slot_of("b")] == 3


def test_apply_reports_changed_nodes_and_edges():
    g = build([Ev("1", "a"), Ev("2", "b")])
    change = g.apply(Ev("3", "c"))
    assert change.nodes == {g.slot_of("b"), g.slot_of("c")}
    assert change.edges == {(g.slot_of("b"), g.slot_of("c"))}
    assert not change.duplicate


def test_eviction_drops_least_recent_node_and_its_edges():
    g = build([Ev("1", "a"), Ev("2", "b"), Ev("3", "a"), Ev("4", "c")], max_nodes=2)
    assert sorted(g.items()) == ["a", "c"]
    assert g.slot_of("b") is None
    assert all("b" not in (g.item_ids[s], g.item_ids[d]) for s, d, _ in g.edges())
    assert {(g.item_ids[s], g.item_ids[d]) for s, d, _ in g.edges()} == {("a", "c")}


def test_duplicate_event_changes_nothing():
    g = build([Ev("1", "a"), Ev("2", "b")])
    before = (g.state_version, g.counts.tolist(), g.edges())
    change = g.apply(Ev("1", "a"))
    assert change.duplicate
    assert (g.state_version, g.counts.tolist(), g.edges()) == before


def test_unknown_action_counts_as_other():
    g = build([Ev("1", "a", "teleport")])
    assert g.last_action[0] == g.config.action_index("other")


events_strategy = st.lists(
    st.tuples(st.integers(0, 40), st.sampled_from(["view", "click", "cart", "purchase"]), st.floats(0, 5000)),
    max_size=200,
)


@settings(max_examples=60, deadline=None)
@given(events=events_strategy, max_nodes=st.integers(1, 12), ring=st.integers(1, 50))
def test_window_bound_and_consistency(events, max_nodes, ring):
    g = UserGraph(GraphConfig(max_nodes=max_nodes, dedupe_ring=ring))
    ts = BASE_TS
    applied = 0
    for n, (item, action, gap) in enumerate(events):
        ts += gap
        if not g.apply(Ev(str(n), f"i{item}", action, ts)).duplicate:
            applied += 1
        assert g.n_nodes <= max_nodes
        assert len(g.ring) <= ring
    assert g.state_version == applied == len(events)
    assert len(set(g.item_ids)) == g.n_nodes
    for s, d, w in g.edges():
        assert s != d and w > 0 and s in g.in_neighbors(d)
    if events:
        assert g.item_ids[g.last_slot] == f"i{events[-1][0]}"
        assert min(g.recency()) == 0


def test_late_event_policy_refuses_only_beyond_the_allowed_lateness():
    g = build([Ev("1", "a", ts=BASE_TS + 1000)], max_lateness_s=600.0)
    slightly_late = g.apply(Ev("2", "b", ts=BASE_TS + 500))  # 500 s late: accepted, in arrival order
    assert not slightly_late.late_by and g.state_version == 2
    ((src, dst, w),) = g.edges()
    assert (g.item_ids[src], g.item_ids[dst], w) == ("a", "b", 1.0)  # negative gap clipped: no decay
    too_late = g.apply(Ev("3", "c", ts=BASE_TS - 200))  # 700 s before the previous event
    assert too_late.late_by == 700.0 and not too_late.nodes
    assert g.state_version == 2 and g.slot_of("c") is None and not g.seen("3")


def test_default_policy_accepts_any_lateness():
    g = build([Ev("1", "a", ts=BASE_TS + 10**6), Ev("2", "b", ts=BASE_TS)])
    assert g.state_version == 2
