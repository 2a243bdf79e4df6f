"""A redelivered batch stores the republished graphs again, so a lost changelog record is sent anew.

The Faust table writes RocksDB first and sends the changelog record afterwards; a SIGKILL in
between leaves a graph that only the local store has. The redelivered events are duplicates
of it; storing the graph again (same bytes) puts it back into the changelog.
"""

from __future__ import annotations

from graph_state import GraphConfig, MemoryStore, encode
from stream_app import Pipeline, RawRecord
from stream_app.core.pipeline import DUPLICATE
from tests.conftest import random_stream, to_json
from tests.unit.stream_app.core.test_pipeline import EMBEDDER


class RecordingStore(MemoryStore):
    def __init__(self, config: GraphConfig) -> None:
        super().__init__(config)
        self.puts: list[dict[str, bytes]] = []

    def put_many(self, graphs, meta=None):
        self.puts.append({uid: encode(g) for uid, g in graphs.items()})
        super().put_many(graphs, meta)


def test_redelivered_latest_event_stores_the_same_graph_again():
    events = random_stream(7, 30, n_users=3)
    store = RecordingStore(GraphConfig())
    pipeline = Pipeline(store, EMBEDDER)
    first = pipeline.process([RawRecord(to_json(ev)) for ev in events])
    pipeline.commit(first)
    stored = store.puts[-1]

    again = pipeline.process([RawRecord(to_json(ev)) for ev in events[-10:]])
    assert again.outcomes == {DUPLICATE: 10} and not again.graphs
    republished = {emb.user_id for emb in again.embeddings}
    assert republished and again.restore.keys() == republished
    pipeline.commit(again)
    assert store.puts[-1] == {uid: stored[uid] for uid in republished}  # the same bytes, once more


def test_older_duplicates_store_nothing():
    events = random_stream(8, 12, n_users=1)
    store = RecordingStore(GraphConfig())
    pipeline = Pipeline(store, EMBEDDER)
    pipeline.commit(pipeline.process([RawRecord(to_json(ev)) for ev in events]))
    puts = len(store.puts)
    older = pipeline.process([RawRecord(to_json(ev)) for ev in events[:5]])
    assert older.embeddings == [] and not older.restore
    pipeline.commit(older)
    assert len(store.puts) == puts
