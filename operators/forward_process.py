"""The batched full forward in a child process: the file runner's second core.

A micro-batch of small graphs costs the file runner about as much Python (decoding, ``apply``,
state, output) as GCN forward; on one core the two take turns. With :class:`ForwardProcess` the
runner hands each such batch's gathered columns (:func:`graph_state.gather`, ~250 KB for 256
events; copied into memory both processes share when the child is forked, pickled otherwise or when
every slot still holds a batch the child has not answered) to a child process and goes on with the
next batch while the child computes; it collects the vectors before it publishes the batch
(``Pipeline.stage`` / ``Pipeline.finish``).
The child runs :func:`operators.incremental.forward_with_caches` on the same model and thread count,
so its vectors are the bits the runner would compute itself.

What goes there is the incremental engine's *full* forward of each batch (its incremental part
needs the graphs' layer caches and stays in the runner); the layer caches the engine keeps from a
full forward come back with the vectors. A process made with a ``post`` function also runs it
on each batch's whole vector matrix and the ``extra`` the batch came with (the file runner: its
output records and JSON lines, as much work as the forward of small graphs). Answers are read by
a thread as they arrive, so the child never waits to send one. If the child dies, the runner logs
it once and computes (and posts) in-process from then on: nothing is lost.

>>> from graph_state import GraphConfig, UserGraph, gather
>>> from types import SimpleNamespace as Ev
>>> from operators import Checkpoint, Embedder
>>> g = UserGraph(GraphConfig())
>>> _ = g.apply(Ev(event_id="1", item_id="a", action="view", ts=0.0, weight=None))
>>> checkpoint = Checkpoint.seeded(seed=0)
>>> with ForwardProcess(checkpoint) as forward:
...     pending = forward.submit(gather([g], checkpoint.index, checkpoint.index.row), keep=[])
...     vectors = pending.result().vectors
>>> bool((vectors == Embedder(checkpoint).embed_many([g])).all())
True
"""

from __future__ import annotations

import fcntl
import logging
import math
import mmap
import multiprocessing
import os
import queue
import signal
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, SpawnContext
from multiprocessing.reduction import ForkingPickler
from types import TracebackType
from typing import Any, NamedTuple, cast

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
PIPE_BYTES = 1 << 20
SHARED_SLOTS = 4
SHARED_SLOT_BYTES = 4 << 20
"""A forked process shares this much memory with the runner (pages made as they are first written):
each job's gathered columns are copied into one of the slots, not pickled through the pipe
(pickling and sending them was 7 % of the runner's main process on small graphs)."""


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


Post = Callable[[np.ndarray, Any], Any]
"""What the process does with a batch's whole vector matrix and the ``extra`` it came with (the file
runner: its output lines, so that the runner's own core does not format them)."""


class Answer(NamedTuple):
    """A batch's vectors (its ``out`` with the forward's rows filled in), the layer caches of the graphs
    ``keep`` named, and what the process's ``post`` made of them (``None`` without one).

    From the process, a batch its ``post`` made something of comes without its vectors: the caller
    takes the posted output instead (the file runner: where its lines end), and the vectors' 64 KB a
    batch are neither pickled there nor read here."""

    vectors: np.ndarray | None
    caches: list[np.ndarray]
    posted: Any = None


class _Shared(NamedTuple):
    """Gathered columns a job left in the shared memory: its slot, and each column's offset and shape there."""

    slot: int
    columns: tuple[tuple[int, tuple[int, ...]], ...]


def _to_shared(memory: mmap.mmap, slot: int, columns: Gathered) -> _Shared | None:
    """``columns`` copied into the slot (``None``: larger than a slot; the job pickles them)."""
    if sum(column.nbytes for column in columns) + 64 * len(columns) > SHARED_SLOT_BYTES:
        return None
    base, at, placed = slot * SHARED_SLOT_BYTES, 0, []
    for column in columns:
        if column.size:
            into = np.frombuffer(memory, dtype=np.int64, count=column.size, offset=base + at)
            into.reshape(column.shape)[...] = column
        placed.append((at, column.shape))
        at += -(-column.nbytes // 64) * 64  # each column on a cache line of its own
    return _Shared(slot, tuple(placed))


def _from_shared(memory: mmap.mmap, shared: _Shared) -> Gathered:
    base = shared.slot * SHARED_SLOT_BYTES
    return Gathered(
        *(
            np.frombuffer(memory, dtype=np.int64, count=math.prod(shape), offset=base + at).reshape(shape)
            if math.prod(shape)
            else np.zeros(shape, dtype=np.int64)
            for at, shape in shared.columns
        )
    )


class _Job(NamedTuple):
    columns: Gathered | _Shared | None
    """The full forward's graphs (``None``: none; the job only posts ``out``), maybe in the shared memory."""
    keep: list[int]
    out: np.ndarray | None
    """The batch's vectors computed elsewhere, the forward's ``rows`` zero (``None``: only the forward's)."""
    rows: list[int]
    extra: Any


def _forward(encoder: GraphEncoder, columns: Gathered, keep: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    with torch.inference_mode():
        return forward_with_caches(encoder, columns_to_batch(columns), keep)


def _answer(encoder: GraphEncoder, post: Post | None, job: _Job, memory: mmap.mmap | None) -> Answer:
    """One job, in the child or (it died) in the parent: the same function either way."""
    caches: list[np.ndarray] = []
    vectors = job.out
    if job.columns is not None:
        columns = job.columns
        if isinstance(columns, _Shared):
            assert memory is not None
            columns = _from_shared(memory, columns)
        user, caches = _forward(encoder, columns, job.keep)
        if vectors is None:
            vectors = user
        else:
            vectors[job.rows] = user
    if vectors is None:
        raise ValueError("a forward job needs columns or out")
    posted = post(vectors, job.extra) if post is not None and job.extra is not None else None
    return Answer(vectors, caches, posted)


def _serve(
    jobs: Connection,
    answers: Connection,
    parent_ends: tuple[Connection, ...],
    encoder: GraphEncoder,
    threads: int,
    post: Post | None,
    memory: mmap.mmap | None,
) -> None:
    """The child: jobs in, answers out, until the parent says stop or its end closes."""
    # A forked child holds copies of the parent's ends: closed, so the parent's exit (even kill -9)
    # is an EOF here rather than a child waiting forever.
    for end in parent_ends:
        end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if threads >= 1:
        torch.set_num_threads(threads)
    encoder.eval()
    while True:
        try:
            message = jobs.recv()
        except EOFError:
            return
        if message is None:
            return
        try:
            done = _answer(encoder, post, message, memory)
            answer: tuple[str, object] = ("ok", done if done.posted is None else done._replace(vectors=None))
        except Exception:
            answer = ("error", traceback.format_exc())
        try:
            answers.send(answer)
        except OSError:  # the parent is gone
            return


def _widen(*ends: Connection) -> None:
    """Pipe buffers of up to 1 MiB (Linux; the default is 64 KiB): a batch's job, and most answers,
    then pass in one write, without waiting for the other side's thread to be scheduled."""
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            size = min(int(f.read()), PIPE_BYTES)
        for end in ends:
            fcntl.fcntl(end.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (OSError, ValueError):
        pass  # another OS, or a smaller limit: the default buffer works, only slower


class Pending:
    """One submitted batch: :meth:`result` waits for its :class:`Answer`."""

    def __init__(self, owner: ForwardProcess, job: _Job) -> None:
        self._owner = owner
        self.job = job
        self.answer: Answer | None = None

    def result(self) -> Answer:
        """Its answer (the answers of batches submitted before it are read first and kept for them)."""
        if self.answer is None:
            self._owner._receive(self)
        assert self.answer is not None
        return self.answer


class ForwardProcess:
    """A child process that runs a checkpoint's full forward on gathered columns (see the module docstring).

    Batches are answered in the order they were submitted; the caller collects each with
    :meth:`Pending.result`, in any order. Close it (or use it as a context manager) to end the child.
    """

    def __init__(self, checkpoint: Checkpoint, threads: int = 1, post: Post | None = None) -> None:
        self.checkpoint = checkpoint
        self.post = post
        """Run on each batch's vectors that came with an ``extra`` (see :data:`Post`); forked with the process."""
        self.alive = True
        # fork: the child has the model already (no copy through a pipe, no second torch import).
        ctx: ForkContext | SpawnContext
        if "fork" in multiprocessing.get_all_start_methods():
            ctx = multiprocessing.get_context("fork")
        else:
            ctx = multiprocessing.get_context("spawn")
        # Memory both share (forked: the mapping is inherited), made before the child.
        self._memory = mmap.mmap(-1, SHARED_SLOTS * SHARED_SLOT_BYTES) if ctx.get_start_method() == "fork" else None
        self._submitted = 0
        self._answered = 0  # batches whose answers were taken (computed here, if the child failed): slots free
        # Two one-way pipes (not a socket pair): their buffers can be widened.
        child_jobs, self._jobs = ctx.Pipe(duplex=False)
        self._answers, child_answers = ctx.Pipe(duplex=False)
        _widen(self._jobs, child_answers)
        self._process = ctx.Process(
            target=_serve,
            args=(
                child_jobs,
                child_answers,
                (self._jobs, self._answers),
                checkpoint.encoder,
                threads,
                post,
                self._memory,
            ),
            name="ripple-forward",
            daemon=True,
        )
        self._process.start()
        child_jobs.close()
        child_answers.close()
        self._queue: list[Pending] = []
        self._inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        # Answers are read as they come: the child never waits to send one, so it always reads the
        # next job, and this process's sends never wait long (no deadlock with big answers).
        self._reader = threading.Thread(target=self._read, name="ripple-forward-read", daemon=True)
        self._reader.start()

    def submit(
        self,
        columns: Gathered | None,
        keep: list[int],
        out: np.ndarray | None = None,
        rows: list[int] | None = None,
        extra: Any = None,
    ) -> Pending:
        """Hand over a batch's full forward: its gathered ``columns`` (``None``: nothing to compute) and
        ``keep``, the graphs (positions) whose layer caches to return. With ``out``, the answer's
        vectors are ``out`` with the forward's vectors at ``rows``; with ``extra`` too, the process's
        :attr:`post` runs on them there."""
        shared: _Shared | None = None
        if columns is not None and self._memory is not None and self.alive:
            slot_free = self._submitted - SHARED_SLOTS < self._answered  # the slot's last batch is answered
            if slot_free:
                shared = _to_shared(self._memory, self._submitted % SHARED_SLOTS, columns)
        job = _Job(shared or columns, keep, out, rows if rows is not None else [], extra)
        self._submitted += 1
        pending = Pending(self, job)
        if self.alive:
            self._send(job)
        self._queue.append(pending)
        return pending

    def _send(self, job: _Job | None) -> None:
        try:
            self._jobs.send_bytes(ForkingPickler.dumps(job))
        except OSError:
            pass  # the child is gone: the reader has its EOF, _receive finds out and computes here

    def _read(self) -> None:
        while True:
            try:
                answer = self._answers.recv()
            except (EOFError, OSError) as exc:
                self._inbox.put(("gone", exc))
                return
            self._inbox.put(answer)

    def _receive(self, pending: Pending) -> None:
        """Read answers, in the order their batches were submitted, up to ``pending``'s."""
        if pending not in self._queue:
            raise RuntimeError("this batch was not submitted to this forward process, or it was closed")
        while self._queue:
            first = self._queue.pop(0)
            first.answer = self._next(first)
            # Only now is the batch's slot free: a batch the child failed on was computed here (above),
            # from its slot.
            self._answered += 1
            if first is pending:
                return

    def _next(self, pending: Pending) -> Answer:
        if self.alive:
            status, value = self._inbox.get()
            if status == "ok":
                return cast(Answer, value)
            if status == "gone":
                self._died(cast(BaseException, value))
            else:
                log.warning("the forward process failed on a batch; computing it here:\n%s", value)
        return _answer(self.checkpoint.encoder, self.post, pending.job, self._memory)

    def _died(self, exc: BaseException) -> None:
        log.warning(W_DIED, str(exc) or type(exc).__name__)
        self.alive = False

    def close(self) -> None:
        """End the child once it has answered every batch handed over (answers nobody collects, of a
        run that stopped early, are dropped), and the reader."""
        if self.alive:
            self._send(None)  # after every batch handed over: the child stops
        self.alive = False
        self._queue.clear()
        self._jobs.close()  # and if the child did not get the stop, it gets an EOF
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._reader.join(timeout=5)  # the child's end is closed: the reader has its EOF
        self._answers.close()

    def __enter__(self) -> ForwardProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
