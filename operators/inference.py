"""Batched inference: many user graphs → one forward → one vector per user."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from graph_state import UserGraph
from operators.checkpoint import Checkpoint
from operators.forward_process import ForwardProcess
from operators.incremental import Deferred, IncrementalEncoder, IncrementalPolicy, UserDelta
from operators.tensors import graphs_to_batch


def set_threads(n: int) -> None:
    """Torch intra-op threads for inference.

    Micro-batch tensors are small: on 2 cores, 2 threads make a scatter of a few
    thousand rows 50x slower than 1 thread once anything else runs (measured in
    docs/benchmarks.md), so the runners default to 1.
    """
    if n >= 1 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


class Embedder:
    """Runs a checkpoint's encoder over user graphs, never tracking gradients.

    >>> from graph_state import GraphConfig
    >>> from types import SimpleNamespace as Ev
    >>> g = UserGraph(GraphConfig())
    >>> _ = g.apply(Ev(event_id="1", item_id="a", action="view", ts=0.0, weight=None))
    >>> Embedder(Checkpoint.seeded()).embed_many([g, g]).shape
    (2, 64)

    The pipeline calls :meth:`embed_changed`: with the nodes an event changed (a
    :class:`UserDelta`), only their L-hop neighbourhood is recomputed from the graph's
    per-node layer cache, and the vector is the one a full forward gives:

    >>> from operators.incremental import IncrementalPolicy, UserDelta
    >>> embedder = Embedder(Checkpoint.seeded(seed=0), IncrementalPolicy(min_nodes=0))
    >>> g = UserGraph(GraphConfig())
    >>> for n in range(12):
    ...     _ = g.apply(Ev(event_id=str(n), item_id=f"i{n}", action="view", ts=float(n), weight=None))
    >>> _ = embedder.embed_changed([g], [None])  # no delta: a full forward, which fills the cache
    >>> base = g.state_version
    >>> change = g.apply(Ev(event_id="12", item_id="i11", action="cart", ts=12.0, weight=None))
    >>> vector = embedder.embed_changed([g], [UserDelta(base, frozenset(change.nodes))])[0]
    >>> embedder.incremental.stats["incremental"], bool(np.allclose(vector, embedder.embed_one(g), atol=1e-5))
    (1, True)
    """

    def __init__(self, checkpoint: Checkpoint, policy: IncrementalPolicy | None = None) -> None:
        self.checkpoint = checkpoint
        self.checkpoint.encoder.eval()
        self.incremental = IncrementalEncoder(checkpoint, policy)

    @property
    def model_version(self) -> str:
        return self.checkpoint.model_version

    @property
    def dim(self) -> int:
        return self.checkpoint.config.dim

    def embed_many(self, graphs: Sequence[UserGraph]) -> np.ndarray:
        """One float32 row per graph, in order."""
        if not graphs:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = graphs_to_batch(graphs, self.checkpoint.index)
        with torch.inference_mode():
            return self.checkpoint.encoder(batch).numpy()

    def embed_changed(self, graphs: Sequence[UserGraph], deltas: Sequence[UserDelta | None]) -> np.ndarray:
        """Like :meth:`embed_many`, recomputing only what each delta can have changed.

        Reads and refreshes each graph's per-node layer cache; a graph whose cache
        does not belong to ``delta.base_version`` of this model is recomputed fully.
        """
        return self.incremental.embed_many(graphs, deltas)

    def embed_deferred(
        self,
        graphs: Sequence[UserGraph],
        deltas: Sequence[UserDelta | None],
        forward: ForwardProcess,
        extra: object = None,
    ) -> Deferred:
        """:meth:`embed_changed` with its full forward computed by ``forward`` (a child process) while the
        caller goes on; ``.result()`` waits for the vectors. The same vectors, bit for bit. With an
        ``extra``, ``forward.post`` runs on them and it in the process (``Deferred.posted``)."""
        return self.incremental.embed_deferred(graphs, deltas, forward, extra)

    def embed_one(self, graph: UserGraph) -> np.ndarray:
        return self.embed_many([graph])[0]

    def attention(self, graph: UserGraph) -> np.ndarray:
        """Readout attention weight of each node of one graph (slot order)."""
        batch = graphs_to_batch([graph], self.checkpoint.index)
        enc = self.checkpoint.encoder
        with torch.inference_mode():
            _, alpha = enc.readout(enc.node_states(batch), batch)
        return alpha.numpy()
