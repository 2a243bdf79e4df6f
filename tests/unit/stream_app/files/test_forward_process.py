"""The file runner with its forward in a second process: the same output, the same state, no loss."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import msgspec
import numpy as np
import pytest
import torch

from graph_state import GraphConfig, RocksStore, UserGraph, encode, gather
from operators import Checkpoint, ForwardProcess
from operators.forward_process import SHARED_SLOTS, Pending, usable_cpus
from operators.incremental import forward_with_caches
from operators.tensors import columns_to_batch
from stream_app.core.serving import load_model
from stream_app.core.settings import Settings
from stream_app.files.file_runner import forward_process, replay
from stream_app.files.generate import GeneratorSpec, generate_events
from tests.conftest import Ev, write_jsonl


def outputs(path) -> list[dict]:
    """The output records in order, without ``computed_at`` (the one field a rerun changes)."""
    with open(path, "rb") as f:
        records = [msgspec.json.decode(line) for line in f]
    for record in records:
        del record["computed_at"]
    return records


def states(path, config: GraphConfig, users: list[str]) -> dict[str, bytes]:
    store = RocksStore(path, config)
    try:
        return {uid: encode(g, include_cache=False) for uid, g in store.get_many(users).items()}
    finally:
        store.close()


@pytest.mark.parametrize("cache_users", [4096, 0])
def test_the_runner_with_a_forward_process_writes_what_it_writes_without(tmp_path, cache_users):
    """Every record (vector bits included), every dead letter and every stored graph equal, over
    batches of small graphs (to the process), graphs large enough for layer caches and the
    incremental path (here), users in consecutive batches (the next batch is staged before the
    previous one is written: with no graph cache it reads them from the staged batch), duplicates
    and malformed lines; then a second file continues both states the same way."""
    data = list(generate_events(GeneratorSpec(users=60, items=150, events=4000, seed=5, malformed=0.03)))
    first = write_jsonl(tmp_path / "first.jsonl", data[:3000] + data[:40])  # 40 duplicates at the end
    second = write_jsonl(tmp_path / "second.jsonl", data[3000:])
    runs = {}
    for mode in ("off", "on"):
        s = Settings.from_env(
            {},
            state_dir=str(tmp_path / mode),
            batch_size=37,
            forward_process=mode,
            graph_cache_users=cache_users,
            incremental_min_nodes=16,  # graphs from 16 nodes keep layer caches (default 32-64; these reach 50)
            incremental_batched_min_nodes=16,
        )
        a = replay(first, "jsonl", str(tmp_path / f"{mode}1.out"), s, str(tmp_path / f"{mode}1.dlq"), progress=False)
        b = replay(second, "jsonl", str(tmp_path / f"{mode}2.out"), s, progress=False)
        runs[mode] = (a, b, s)
    for n in (1, 2):
        off, on = outputs(tmp_path / f"off{n}.out"), outputs(tmp_path / f"on{n}.out")
        assert len(off) > 500
        if cache_users:
            assert off == on
        else:  # the staged batch's live graphs keep their layer caches: incremental ≡ full, to rounding
            vectors = [np.array([r.pop("embedding") for r in records]) for records in (off, on)]
            assert off == on
            np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-5, atol=1e-5)
    assert (tmp_path / "off1.dlq").read_bytes() == (tmp_path / "on1.dlq").read_bytes() != b""
    assert runs["off"][0].outcomes == runs["on"][0].outcomes and runs["on"][0].outcomes["duplicate"] >= 30
    users = sorted({r["user_id"] for r in outputs(tmp_path / "off2.out")})
    sizes = [r["n_nodes"] for r in outputs(tmp_path / "off1.out")]
    assert max(sizes) >= 40 and min(sizes) < 16  # both paths were in play
    config = runs["off"][2].graph_config()
    assert states(tmp_path / "off", config, users) == states(tmp_path / "on", config, users)


def graphs(n: int, seed: int) -> list[UserGraph]:
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n):
        g = UserGraph(GraphConfig())
        for e in range(int(rng.integers(1, 80))):
            g.apply(Ev(f"{u}-{e}", f"i{rng.integers(120)}", "view", float(e)))
        out.append(g)
    return out


def test_the_process_answers_in_order_with_the_bits_computed_here(one_thread):
    checkpoint = Checkpoint.seeded(seed=1)
    index, enc = checkpoint.index, checkpoint.encoder
    batches = [graphs(12, seed) for seed in range(4)]
    keeps = [[0, 3], [], [11], list(range(12))]
    with ForwardProcess(checkpoint) as forward:
        pending = [forward.submit(gather(b, index, index.row), k) for b, k in zip(batches, keeps, strict=True)]
        answers = [p.result() for p in pending]
    for b, keep, (user, caches, posted) in zip(batches, keeps, answers, strict=True):
        assert posted is None  # no post function
        with torch.inference_mode():
            here, here_caches = forward_with_caches(enc.eval(), columns_to_batch(gather(b, index, index.row)), keep)
        assert user.tobytes() == here.tobytes()
        assert [c.tobytes() for c in caches] == [c.tobytes() for c in here_caches]
        assert [c.shape[1] for c in caches] == [b[i].n_nodes for i in keep]


def vectors_here(enc, b: list[UserGraph], index) -> np.ndarray:
    """The batch's vectors computed in this process (on one thread, :func:`one_thread`: two threads sum
    in another order, other bits)."""
    with torch.inference_mode():
        return forward_with_caches(enc.eval(), columns_to_batch(gather(b, index, index.row)), [])[0]


def wait_for(flag: str) -> Callable[[np.ndarray, object], None]:
    def post(vectors: np.ndarray, extra: object) -> None:
        while not os.path.exists(flag):  # the process holds the first batch until the test says go
            time.sleep(0.01)

    return post


def test_columns_pass_through_shared_memory_and_a_busy_slot_is_not_overwritten(tmp_path, one_thread):
    """Ten batches handed over while the process holds the first: the first ones go through the
    shared slots, the ones whose slot still holds an unanswered batch are pickled, and every answer
    is the bits computed here (a slot overwritten early would give another batch's vectors)."""
    checkpoint = Checkpoint.seeded(seed=3)
    index, enc = checkpoint.index, checkpoint.encoder
    batches = [graphs(10, 100 + seed) for seed in range(10)]
    flag = str(tmp_path / "go")
    with ForwardProcess(checkpoint, post=wait_for(flag)) as forward:
        pending = [
            forward.submit(gather(b, index, index.row), [], extra="hold" if n == 0 else None)
            for n, b in enumerate(batches)
        ]
        open(flag, "w").close()
        kinds = [type(p.job.columns).__name__ for p in pending]
        answers = [p.result() for p in pending]
    assert kinds[:SHARED_SLOTS] == ["_Shared"] * SHARED_SLOTS and set(kinds[SHARED_SLOTS:]) == {"Gathered"}
    for b, answer in zip(batches, answers, strict=True):
        assert answer.vectors.tobytes() == vectors_here(enc, b, index).tobytes()


def digest(vectors: np.ndarray, extra: object) -> bytes | None:
    return vectors.tobytes() if extra == "post" else None


def test_a_posted_batch_comes_back_without_its_vectors(one_thread):
    """What the process's post made of a batch is what the caller takes, so the vectors stay there
    (64 KB a batch of 256 not pickled and read back); a batch without an ``extra`` is not posted and
    brings its vectors."""
    checkpoint = Checkpoint.seeded(seed=5)
    index, enc = checkpoint.index, checkpoint.encoder
    batches = [graphs(6, 300 + seed) for seed in range(2)]
    with ForwardProcess(checkpoint, post=digest) as forward:
        posted, plain = (
            forward.submit(gather(b, index, index.row), [], extra=extra).result()
            for b, extra in zip(batches, ("post", None), strict=True)
        )
    assert posted.vectors is None and posted.posted == vectors_here(enc, batches[0], index).tobytes()
    assert plain.posted is None and plain.vectors is not None
    assert plain.vectors.tobytes() == vectors_here(enc, batches[1], index).tobytes()


def fails_there(runner: int) -> Callable[[np.ndarray, object], None]:
    def post(vectors: np.ndarray, extra: object) -> None:
        if os.getpid() != runner:
            raise RuntimeError("a post that fails in the process")

    return post


@pytest.fixture
def one_thread():
    """This process on the forward process's one torch thread, as the runners set it (``set_threads``):
    a batch it computes in the process's stead has the same bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_batch_the_child_failed_on_is_computed_here_from_its_own_slot(caplog, one_thread):
    """The child fails on the first batch and answers the next three; only then are more batches
    handed over. The failed batch is computed here from its slot when it is collected, so that slot
    must not have gone to a later batch meanwhile."""
    checkpoint = Checkpoint.seeded(seed=4)
    index, enc = checkpoint.index, checkpoint.encoder
    batches = [graphs(10, 200 + seed) for seed in range(9)]
    with ForwardProcess(checkpoint, post=fails_there(os.getpid())) as forward:
        pending = [
            forward.submit(gather(b, index, index.row), [], extra="fail" if n == 0 else None)
            for n, b in enumerate(batches[:SHARED_SLOTS])
        ]
        deadline = time.monotonic() + 30
        while forward._inbox.qsize() < SHARED_SLOTS and time.monotonic() < deadline:
            time.sleep(0.01)  # every answer of the first four is in (the first one an error)
        pending += [forward.submit(gather(b, index, index.row), []) for b in batches[SHARED_SLOTS:]]
        with caplog.at_level(logging.WARNING, logger="ripple.forward"):
            answers = [p.result() for p in pending]
    assert any("failed on a batch" in r.getMessage() for r in caplog.records)
    for b, answer in zip(batches, answers, strict=True):
        assert answer.vectors.tobytes() == vectors_here(enc, b, index).tobytes()


def test_a_dead_process_costs_nothing_but_a_warning(caplog):
    checkpoint = Checkpoint.seeded(seed=2)
    index = checkpoint.index
    batch = graphs(8, seed=9)
    with torch.inference_mode():
        expected, _ = forward_with_caches(
            checkpoint.encoder.eval(), columns_to_batch(gather(batch, index, index.row)), []
        )
    with ForwardProcess(checkpoint) as forward:
        assert forward.submit(gather(batch, index, index.row), []).result()[0].tobytes() == expected.tobytes()
        forward._process.kill()
        forward._process.join()
        with caplog.at_level(logging.WARNING, logger="ripple.forward"):
            first = forward.submit(gather(batch, index, index.row), [])
            second = forward.submit(gather(batch, index, index.row), [])
            assert first.result()[0].tobytes() == expected.tobytes() == second.result()[0].tobytes()
        assert not forward.alive
        assert sum("forward process stopped" in r.getMessage() for r in caplog.records) == 1


def test_answers_may_be_collected_out_of_order():
    """The file runner keeps two batches in the process; the engine may need the later one's layer
    caches first: the earlier answer is read on the way and kept for its batch."""
    checkpoint = Checkpoint.seeded(seed=3)
    index = checkpoint.index
    batches = [graphs(2, 1), graphs(3, 2)]
    with ForwardProcess(checkpoint) as forward:
        a, b = (forward.submit(gather(g, index, index.row), []) for g in batches)
        later, earlier = b.result(), a.result()
        assert b.result() is later
        with pytest.raises(RuntimeError, match="not submitted"):
            ForwardProcess._receive(forward, Pending(forward, a.job))
    with torch.inference_mode():
        for answer, g in ((earlier, batches[0]), (later, batches[1])):
            here, _ = forward_with_caches(checkpoint.encoder.eval(), columns_to_batch(gather(g, index, index.row)), [])
            assert answer.vectors.tobytes() == here.tobytes()


def test_when_the_runner_starts_a_forward_process(tmp_path):
    model = load_model(Settings.from_env({}))
    batch = Settings.from_env({}).batch_size

    def started(lines: int, **kw) -> bool:
        found = forward_process(Settings.from_env({}, **kw), model, lines)
        if found is not None:
            found.close()
        return found is not None

    assert started(8 * batch) == (usable_cpus() >= 2) and not started(8 * batch - 1)  # auto
    assert started(10, forward_process="on") and not started(10**6, forward_process="off")
    assert not started(10**6, explain_top=3) and not started(10**6, recommend_top=5, forward_process="on")
    with pytest.raises(ValueError, match="forward_process"):
        Settings.from_env({"RIPPLE_FORWARD_PROCESS": "sometimes"})


def test_the_child_stops_by_itself_when_closed():
    """Closed, the child ends on its own (exit code 0), not killed after a timeout; so does one
    forked while another process's pipe was open (it holds a copy of that pipe's ends)."""
    checkpoint = Checkpoint.seeded(seed=4)
    index = checkpoint.index
    first = ForwardProcess(checkpoint)
    second = ForwardProcess(checkpoint)
    second.submit(gather(graphs(3, 1), index, index.row), []).result()
    first.close()
    second.close()
    assert first._process.exitcode == 0 and second._process.exitcode == 0


def test_metrics_see_each_batch_once_and_only_its_own_time(tmp_path):
    """Staged batches overlap; each is observed once, with its own staging and waiting time (the
    next batch's staging in between is not counted), and the counters match a one-process run."""
    from stream_app.core.metrics import Metrics

    path = write_jsonl(tmp_path / "ev.jsonl", list(generate_events(GeneratorSpec(users=30, items=80, events=1200))))
    seen = {}
    for mode in ("off", "on"):
        metrics = Metrics()
        s = Settings.from_env({}, state_dir=str(tmp_path / mode), batch_size=50, forward_process=mode)
        summary = replay(path, "jsonl", str(tmp_path / f"{mode}.out"), s, progress=False, metrics=metrics)
        value = metrics.registry.get_sample_value
        batches = value("ripple_batch_seconds_count")
        assert batches == 24 == value("ripple_embed_seconds_count")
        assert value("ripple_batch_seconds_sum") < summary.seconds
        assert value("ripple_embed_seconds_sum") <= value("ripple_batch_seconds_sum")
        seen[mode] = (
            value("ripple_events_processed_total", {"outcome": "applied"}),
            value("ripple_embeddings_published_total"),
        )
    assert seen["off"] == seen["on"] and seen["on"][0] > 1000


def test_closing_with_answers_nobody_collected_still_ends_the_child():
    """A run that stops early (an error, Ctrl-C) closes the process with batches in flight whose
    answers, with their layer caches, are larger than the pipe holds."""
    checkpoint = Checkpoint.seeded(seed=5)
    index = checkpoint.index
    batch = graphs(40, seed=11)
    with ForwardProcess(checkpoint) as forward:
        for _ in range(4):
            forward.submit(gather(batch, index, index.row), list(range(40)))
    assert forward._process.exitcode == 0


def test_a_cgroup_quota_caps_the_cpus_auto_counts(tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert usable_cpus(str(quota)) == 1  # 1.5 CPUs of quota: one whole CPU, so no forward process
    quota.write_text("max 100000\n")
    assert usable_cpus(str(quota)) == usable_cpus(str(tmp_path / "absent")) >= 1


def test_stage_refuses_a_store_that_cannot_encode_before_writing():
    """Staging encodes a batch before the next one changes its graphs: a store that can only encode
    while it writes (the worker's table) would store the next batch's state under this one's offsets."""
    from graph_state import MemoryStore
    from operators import Embedder
    from stream_app.core.pipeline import Pipeline
    from stream_app.core.records import RawRecord

    class WritesOnly:
        def __init__(self) -> None:
            self.inner = MemoryStore(GraphConfig())
            self.config = self.inner.config

        def get_many(self, users):
            return self.inner.get_many(users)

        def put_many(self, graphs, meta=None):
            self.inner.put_many(graphs, meta)

    pipeline = Pipeline(WritesOnly(), Embedder(Checkpoint.seeded(seed=6)))  # type: ignore[arg-type]
    record = RawRecord(b'{"event_id":"e","user_id":"u","item_id":"i","action":"view","ts":1767225600}')
    assert not pipeline.can_stage()
    with pytest.raises(TypeError, match="cannot encode a batch before writing"):
        pipeline.stage([record])
    assert pipeline.run([record], type("Quiet", (), {"publish": lambda self, result: None})()).graphs


def test_the_process_writes_the_compact_encoding_as_the_runner_would(tmp_path):
    """RIPPLE_EMBEDDING_ENCODING=f32: the lines the process makes decode to the same records."""
    from stream_app.core.embedding_format import decode_embedding

    path = write_jsonl(tmp_path / "ev.jsonl", list(generate_events(GeneratorSpec(users=40, items=90, events=900))))
    seen = {}
    for mode in ("off", "on"):
        s = Settings.from_env(
            {"RIPPLE_EMBEDDING_ENCODING": "f32"}, state_dir=str(tmp_path / mode), batch_size=40, forward_process=mode
        )
        replay(path, "jsonl", str(tmp_path / f"{mode}.out"), s, progress=False)
        with open(tmp_path / f"{mode}.out", "rb") as f:
            lines = f.read().splitlines()
        assert all(isinstance(msgspec.json.decode(line)["embedding"], str) for line in lines)  # packed, not a list
        seen[mode] = [msgspec.structs.replace(decode_embedding(line), computed_at=0.0) for line in lines]
    assert seen["on"] == seen["off"] and len(seen["on"]) > 500


@pytest.mark.parametrize("torn", [False, True])
def test_a_child_killed_mid_run_loses_nothing(tmp_path, monkeypatch, caplog, torn):
    """The child exits while batches are in flight (two staged ahead) — before it answers its fourth
    batch, or (``torn``) halfway through appending that batch's lines to the output: the runner cuts
    off what the child left, computes and formats those batches itself, and writes the same records
    as a run without the process."""
    from stream_app.files import file_runner

    path = write_jsonl(tmp_path / "ev.jsonl", list(generate_events(GeneratorSpec(users=30, items=80, events=1200))))
    runner = os.getpid()
    made = []
    original = file_runner.OutputLines.__call__

    def dies_on_the_fourth_batch(self, vectors, published):
        made.append(1)
        if os.getpid() != runner and len(made) == 4:
            if torn:
                with open(self.path, "ab") as f:  # half of this batch's first line, then gone
                    f.write(b'{"user_id":"u1","embedding":[0.1,')
            os._exit(3)  # as a kill would: no answer for this batch, nor for the ones behind it
        return original(self, vectors, published)

    monkeypatch.setattr(file_runner.OutputLines, "__call__", dies_on_the_fourth_batch)
    runs = {}
    for mode in ("off", "on"):
        s = Settings.from_env({}, state_dir=str(tmp_path / mode), batch_size=50, forward_process=mode)
        with caplog.at_level(logging.WARNING, logger="ripple.forward"):
            runs[mode] = replay(path, "jsonl", str(tmp_path / f"{mode}.out"), s, progress=False)
    stopped = [r.getMessage() for r in caplog.records if "forward process stopped" in r.getMessage()]
    assert len(stopped) == 1 and "EOFError" in stopped[0]  # named, even when the error has no message
    assert outputs(tmp_path / "on.out") == outputs(tmp_path / "off.out")
    assert runs["on"].published == runs["off"].published > 500


@pytest.mark.parametrize("published_before", [0, 4])
def test_a_run_that_stops_early_keeps_only_the_batches_it_published(tmp_path, monkeypatch, published_before):
    """Batches staged ahead were handed to the process, which may have appended their lines; the
    run fails before publishing them: the output ends with the last published batch, whole lines."""
    from stream_app.core.pipeline import Pipeline

    path = write_jsonl(tmp_path / "ev.jsonl", list(generate_events(GeneratorSpec(users=30, items=80, events=1200))))
    s = Settings.from_env({}, state_dir=str(tmp_path / "off"), batch_size=50, forward_process="off")
    replay(path, "jsonl", str(tmp_path / "off.out"), s, progress=False)
    published: list[int] = []
    finish = Pipeline.finish

    def fails_after(self, staged, sink):
        if len(published) == published_before:
            raise RuntimeError("stopped")
        result = finish(self, staged, sink)
        published.append(len(result.published_users))
        return result

    monkeypatch.setattr(Pipeline, "finish", fails_after)
    s = Settings.from_env({}, state_dir=str(tmp_path / "on"), batch_size=50, forward_process="on")
    with pytest.raises(RuntimeError, match="stopped"):
        replay(path, "jsonl", str(tmp_path / "on.out"), s, progress=False)
    on = outputs(tmp_path / "on.out")
    assert len(on) == sum(published) and on == outputs(tmp_path / "off.out")[: len(on)]
    assert (len(on) > 0) == (published_before > 0)
