"""The batched full forward in a child process: the file runner's second core.

A micro-batch of small graphs costs the file runner about as much Python (decoding, ``apply``,
state, output) as GCN forward; on one core the two take turns. With :class:`ForwardProcess` the
runner hands each such batch's gathered columns (:func:`graph_state.gather`, ~150 KB for 256
events) to a child process and goes on with the next batch while the child computes; it
collects the vectors before it publishes the batch (``Pipeline.stage`` / ``Pipeline.finish``).
The child runs :func:`operators.incremental.forward_with_caches` on the same model and thread count,
so its vectors are the bits the runner would compute itself.

What goes there is the incremental engine's *full* forward of each batch (its incremental part
needs the graphs' layer caches and stays in the runner); the layer caches the engine keeps from a
full forward come back with the vectors. If the child dies, the runner logs it once and computes
in-process from then on: nothing is lost.

>>> from graph_state import GraphConfig, UserGraph, gather
>>> from types import SimpleNamespace as Ev
>>> from operators import Checkpoint, Embedder
>>> g = UserGraph(GraphConfig())
>>> _ = g.apply(Ev(event_id="1", item_id="a", action="view", ts=0.0, weight=None))
>>> checkpoint = Checkpoint.seeded(seed=0)
>>> with ForwardProcess(checkpoint) as forward:
...     pending = forward.submit(gather([g], checkpoint.index, checkpoint.index.row), keep=[])
...     vectors, _ = pending.result()
>>> bool((vectors == Embedder(checkpoint).embed_many([g])).all())
True
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
import traceback
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, SpawnContext
from multiprocessing.reduction import ForkingPickler
from types import TracebackType

import numpy as np
import torch

from graph_state import Gathered
from operators.checkpoint import Checkpoint
from operators.encoder import GraphEncoder
from operators.incremental import forward_with_caches
from operators.tensors import columns_to_batch

log = logging.getLogger("ripple.forward")
W_DIED = "the forward process stopped (%s); computing the forward in this process from now on"


CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def usable_cpus(cpu_max: str = CGROUP_CPU_MAX) -> int:
    """Whole CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container
    limited to 1.5 CPUs on a 16-core host has 1, not 16)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        with open(cpu_max) as f:
            quota = quota_cpus(f.read())
    except OSError:
        quota = None
    return cpus if quota is None else min(cpus, quota)


def quota_cpus(cpu_max: str) -> int | None:
    """Whole CPUs of a cgroup v2 ``cpu.max`` (``"<quota> <period>"``, or ``"max …"`` for none).

    >>> quota_cpus("max 100000"), quota_cpus("150000 100000"), quota_cpus("50000 100000"), quota_cpus("junk")
    (None, 1, 1, None)
    """
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        return max(1, int(parts[0]) // int(parts[1]))
    except (ValueError, ZeroDivisionError):
        return None


def _forward(encoder: GraphEncoder, columns: Gathered, keep: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    with torch.inference_mode():
        return forward_with_caches(encoder, columns_to_batch(columns), keep)


def _serve(conn: Connection, parent_end: Connection, encoder: GraphEncoder, threads: int) -> None:
    """The child: columns in, vectors out, until the parent says stop or its end closes."""
    # A forked child holds a copy of the parent's end: closed, so the parent's exit (even kill -9)
    # is an EOF here rather than a child waiting forever.
    parent_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if threads >= 1:
        torch.set_num_threads(threads)
    encoder.eval()
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        columns, keep = message
        try:
            answer: tuple[str, object] = ("ok", _forward(encoder, columns, keep))
        except Exception:
            answer = ("error", traceback.format_exc())
        try:
            conn.send(answer)
        except OSError:  # the parent is gone
            return


class Pending:
    """One submitted batch: :meth:`result` waits for its vectors."""

    def __init__(self, owner: ForwardProcess, columns: Gathered, keep: list[int]) -> None:
        self._owner = owner
        self.columns, self.keep = columns, keep

    def result(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """The user vectors, and the layer caches of the graphs ``keep`` named."""
        return self._owner._receive(self)


class ForwardProcess:
    """A child process that runs a checkpoint's full forward on gathered columns (see the module docstring).

    Batches are answered in the order they were submitted; the caller collects each with
    :meth:`Pending.result` in that order. Close it (or use it as a context manager) to end the child.
    """

    def __init__(self, checkpoint: Checkpoint, threads: int = 1) -> None:
        self.checkpoint = checkpoint
        self.alive = True
        # fork: the child has the model already (no copy through a pipe, no second torch import).
        ctx: ForkContext | SpawnContext
        if "fork" in multiprocessing.get_all_start_methods():
            ctx = multiprocessing.get_context("fork")
        else:
            ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve, args=(child, self._conn, checkpoint.encoder, threads), name="ripple-forward", daemon=True
        )
        self._process.start()
        child.close()
        self._queue: list[Pending] = []
        self._outbox: queue.SimpleQueue[bytes | memoryview | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send, name="ripple-forward-send", daemon=True)
        self._sender.start()

    def submit(self, columns: Gathered, keep: list[int]) -> Pending:
        """Hand over a batch's columns; ``keep``: the graphs (positions) whose layer caches to return."""
        pending = Pending(self, columns, keep)
        if self.alive:
            # Sent by a thread: the child may be blocked sending the previous answer (larger than the
            # pipe's buffer) until :meth:`_receive` reads it, and would never read this one meanwhile.
            self._outbox.put(ForkingPickler.dumps((columns, keep)))
        self._queue.append(pending)
        return pending

    def _send(self) -> None:
        while (data := self._outbox.get()) is not None:
            try:
                self._conn.send_bytes(data)
            except OSError:
                return  # the child is gone: _receive finds out and computes here

    def _receive(self, pending: Pending) -> tuple[np.ndarray, list[np.ndarray]]:
        if not self._queue or self._queue[0] is not pending:
            raise RuntimeError("forward results must be collected in the order the batches were submitted")
        self._queue.pop(0)
        if self.alive:
            try:
                status, value = self._conn.recv()
            except (EOFError, OSError) as exc:
                self._died(exc)
            else:
                if status == "ok":
                    return value
                log.warning("the forward process failed on a batch; computing it here:\n%s", value)
        return _forward(self.checkpoint.encoder, pending.columns, pending.keep)

    def _died(self, exc: BaseException) -> None:
        log.warning(W_DIED, exc or type(exc).__name__)
        self.alive = False

    def close(self) -> None:
        if self.alive:
            self._outbox.put(ForkingPickler.dumps(None))  # after every batch handed over: the child stops
            # Answers nobody will collect (a run that stopped early) are read and dropped: the child
            # would otherwise block sending one and never read the stop.
            for _ in self._queue:
                try:
                    self._conn.recv()
                except Exception:  # EOF, or a read an interrupt cut short: the join below decides
                    break
            self._queue.clear()
        self.alive = False
        self._outbox.put(None)  # the sender thread stops
        self._sender.join(timeout=5)
        self._conn.close()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def __enter__(self) -> ForwardProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
