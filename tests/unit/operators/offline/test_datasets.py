"""Readers and packed prefix graphs: the training tensors are exactly the serving tensors."""

from __future__ import annotations

import numpy as np
import torch

from graph_state import GraphConfig, UserGraph
from operators.item_index import ItemIndex
from operators.offline.datasets import (
    leave_one_out,
    pack_case_sequences,
    pack_prefix_graphs,
    pack_prefix_sequences,
    read_prefixes,
    session_events,
    sessions_split,
)
from operators.tensors import graphs_to_batch
from tests.conftest import random_stream


def histories(seed: int = 3) -> dict[str, list]:
    out: dict[str, list] = {}
    for ev in random_stream(seed, 300, n_users=6, n_items=25):
        out.setdefault(ev.user_id, []).append(ev)
    return out


def test_packed_prefix_graphs_slice_into_the_same_batch_as_graphs_to_batch():
    config = GraphConfig(max_nodes=6)  # small window: eviction and slot reuse happen
    index = ItemIndex([f"i{n}" for n in range(0, 25, 2)], hash_buckets=7)  # odd items are hashed
    seqs = list(histories().values())
    packed = pack_prefix_graphs(seqs, config, index, skip_unknown=False)
    graphs, targets = [], []
    for seq in seqs:
        for t in range(1, len(seq)):
            g = UserGraph(config)
            for ev in seq[:t]:
                g.apply(ev)
            graphs.append(g)
            targets.append(index.row(seq[t].item_id) if index.is_known(seq[t].item_id) else -1)
    assert len(packed) == len(graphs) and packed.targets.tolist() == targets
    sel = np.random.default_rng(0).permutation(len(graphs))[:40]
    got = packed.batch(sel)
    want = graphs_to_batch([graphs[i] for i in sel], index)
    for name in (
        "item_rows",
        "actions",
        "log_counts",
        "recency",
        "edge_index",
        "edge_weight",
        "batch",
        "last_node",
        "ptr",
    ):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_leave_one_out_sorts_by_time_and_holds_out_the_last_two():
    split = leave_one_out(histories())
    for case_v, case_t, train in zip(split.valid, split.test, split.train, strict=True):
        assert list(case_t.history[:-1]) == list(case_v.history) == list(train)
        assert case_t.history[-1].item_id == case_v.target
        assert all(a.ts <= b.ts for a, b in zip(case_t.history, case_t.history[1:], strict=False))


def test_sessions_split_reads_the_srgnn_files(tmp_path):
    (tmp_path / "train_sessions.txt").write_text("1 2 3\n4 5\n2 3 4 5\n")
    (tmp_path / "test_prefixes.tsv").write_text("1 2\t3\n9\t1\n")
    split = sessions_split(str(tmp_path), val_share=0.0)
    assert split.vocab == ["1", "2", "3", "4", "5"] and split.valid == []
    assert [len(s) for s in split.train] == [3, 2, 4]
    assert [(c.target, [e.item_id for e in c.history]) for c in split.test] == [("3", ["1", "2"]), ("1", ["9"])]
    assert read_prefixes(str(tmp_path / "test_prefixes.tsv"))[0] == (["1", "2"], "3")
    index = ItemIndex(split.vocab, 1)
    packed = pack_prefix_graphs(split.train, GraphConfig(), index)
    assert len(packed) == 2 + 1 + 3  # every prefix of every session
    seq = pack_prefix_sequences(split.train, index, max_len=2)
    rows, lengths = seq.batch(np.arange(len(seq)))
    assert lengths.tolist() == [1, 2, 1, 1, 2, 2] and rows[1].tolist() == [0, 1]
    cases = pack_case_sequences(split.test, index, max_len=5)
    assert cases.targets.tolist() == [2, 0]
    assert session_events("s", ["a", "b"])[1].ts - session_events("s", ["a", "b"])[0].ts == 1.0
