"""The embedded runner end to end: resume, idempotent replay, formats, CLI."""

from __future__ import annotations

import csv
import io

import msgspec
import numpy as np
from hypothesis import given
from hypothesis import settings as settings_hypothesis
from hypothesis import strategies as st
from typer.testing import CliRunner

from graph_state import UserGraph
from stream_app.cli import app
from stream_app.core.records import DeadLetter, UserEmbedding
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.files.readers import _cells
from tests.conftest import BASE_TS, Ev, write_jsonl


def final_embeddings(*paths) -> dict[str, UserEmbedding]:
    latest: dict[str, UserEmbedding] = {}
    for path in paths:
        with open(path, "rb") as f:
            for line in f:
                emb = msgspec.json.decode(line, type=UserEmbedding)
                prev = latest.get(emb.user_id)
                assert prev is None or emb.state_version >= prev.state_version
                latest[emb.user_id] = emb
    return latest


def assert_same(a: dict[str, UserEmbedding], b: dict[str, UserEmbedding]) -> None:
    assert a.keys() == b.keys()
    for uid in a:
        assert a[uid].state_version == b[uid].state_version
        np.testing.assert_allclose(a[uid].embedding, b[uid].embedding, atol=1e-5)


def settings(tmp_path, name: str, **kw) -> Settings:
    return Settings.from_env({}, state_dir=str(tmp_path / name), **kw)


def lines(n=3000, malformed=0.05, seed=1) -> list[bytes]:
    return list(generate_events(GeneratorSpec(users=40, items=120, events=n, seed=seed, malformed=malformed)))


def test_two_halves_with_the_same_state_equal_one_run(tmp_path):
    data = lines()
    whole = write_jsonl(tmp_path / "all.jsonl", data)
    first = write_jsonl(tmp_path / "first.jsonl", data[:1234])
    second = write_jsonl(tmp_path / "second.jsonl", data[1234:])
    replay(whole, "jsonl", str(tmp_path / "one.out"), settings(tmp_path, "s1", batch_size=100), progress=False)
    s = settings(tmp_path, "s2", batch_size=37)
    replay(first, "jsonl", str(tmp_path / "h1.out"), s, progress=False)
    replay(second, "jsonl", str(tmp_path / "h2.out"), s, progress=False)
    assert_same(final_embeddings(tmp_path / "one.out"), final_embeddings(tmp_path / "h1.out", tmp_path / "h2.out"))


def test_large_graphs_read_back_through_their_tails_equal_one_run(tmp_path):
    """Graphs past 256 nodes are written as a record plus a tail of the events since; with no
    graph cache every batch reads them back through the tail, and a run split in two equals one."""
    rng = np.random.default_rng(3)
    data = [
        msgspec.json.encode(
            {
                "event_id": f"e{n}",
                "user_id": f"u{n % 2}",
                "item_id": f"i{rng.integers(600)}",
                "action": "view",
                "ts": BASE_TS + n,
            }
        )
        for n in range(1400)
    ]
    whole = write_jsonl(tmp_path / "all.jsonl", data)
    first = write_jsonl(tmp_path / "first.jsonl", data[:900])
    second = write_jsonl(tmp_path / "second.jsonl", data[900:])
    big = {"max_nodes": 1000, "batch_size": 16}
    replay(whole, "jsonl", str(tmp_path / "one.out"), settings(tmp_path, "s1", **big), progress=False)
    s = settings(tmp_path, "s2", graph_cache_users=0, **big)
    replay(first, "jsonl", str(tmp_path / "h1.out"), s, progress=False)
    replay(second, "jsonl", str(tmp_path / "h2.out"), s, progress=False)
    one, two = final_embeddings(tmp_path / "one.out"), final_embeddings(tmp_path / "h1.out", tmp_path / "h2.out")
    assert min(e.n_nodes for e in one.values()) >= 300  # large enough for tails
    for uid in one:  # incremental (one run) against full recomputes (no cache): float rounding apart
        assert one[uid].state_version == two[uid].state_version
        np.testing.assert_allclose(one[uid].embedding, two[uid].embedding, rtol=1e-5, atol=1e-5)
    from graph_state import RocksStore, encode
    from graph_state.rocks_store import _TAIL

    stores = [RocksStore(tmp_path / name, s.graph_config(), s.rocks_options()) for name in ("s1", "s2")]
    try:
        assert any(stores[1]._db.get(_TAIL + uid.encode()) is not None for uid in one)  # tails were in play
        a, b = (store.get_many(list(one)) for store in stores)
        assert all(encode(a[uid], include_cache=False) == encode(b[uid], include_cache=False) for uid in one)
    finally:
        for store in stores:
            store.close()


def test_rerun_of_the_same_file_resumes_after_the_last_committed_batch(tmp_path):
    path = write_jsonl(tmp_path / "ev.jsonl", lines(500, 0.0))
    s = settings(tmp_path, "st", batch_size=64)
    first = replay(path, "jsonl", str(tmp_path / "a.out"), s, progress=False)
    again = replay(path, "jsonl", str(tmp_path / "b.out"), s, progress=False)
    assert first.events == 500 and again.events == 0 and again.skipped_lines == 500
    forced = replay(path, "jsonl", str(tmp_path / "c.out"), s, progress=False, from_start=True)
    assert forced.outcomes["duplicate"] == 500 and forced.outcomes["applied"] == 0


def test_file_with_every_event_duplicated_later_gives_identical_results(tmp_path):
    data = lines(1500, 0.0, seed=4)
    rng = np.random.default_rng(0)
    doubled = list(data)
    for line in data:
        at = doubled.index(line) + 1
        doubled.insert(int(rng.integers(at, min(len(doubled), at + 400) + 1)), line)
    replay(
        write_jsonl(tmp_path / "a.jsonl", data),
        "jsonl",
        str(tmp_path / "a.out"),
        settings(tmp_path, "a"),
        progress=False,
    )
    summary = replay(
        write_jsonl(tmp_path / "b.jsonl", doubled),
        "jsonl",
        str(tmp_path / "b.out"),
        settings(tmp_path, "b"),
        progress=False,
    )
    assert summary.outcomes["duplicate"] == len(data)
    assert_same(final_embeddings(tmp_path / "a.out"), final_embeddings(tmp_path / "b.out"))


def test_malformed_lines_are_dead_lettered_with_reasons(tmp_path):
    data = lines(2000, 0.1, seed=9)
    path = write_jsonl(tmp_path / "ev.jsonl", data)
    summary = replay(
        path, "jsonl", str(tmp_path / "o.out"), settings(tmp_path, "s"), str(tmp_path / "dlq"), progress=False
    )
    dead = [msgspec.json.decode(line, type=DeadLetter) for line in open(tmp_path / "dlq", "rb")]
    assert len(dead) == summary.outcomes["rejected"] > 100
    assert summary.outcomes["applied"] + len(dead) == 2000
    assert {d.raw() for d in dead} <= set(data)
    assert len(summary.rejected) >= 8


def test_csv_recbole_and_diginetica_formats(tmp_path):
    (tmp_path / "ev.csv").write_text(
        "event_id,user_id,item_id,action,ts,weight\n"
        "e1,u1,a,view,1767225600,\ne2,u1,b,purchase,2026-01-01T00:01:00Z,2\nbroken,row\n"
    )
    (tmp_path / "ml.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n196\t302\t4\t881250950\n"
    )
    (tmp_path / "dg.csv").write_text(
        "session_id;user_id;item_id;timeframe;eventdate\n1;NA;81766;526309;2016-05-09\n1;NA;31331;1031018;2016-05-09\n"
    )
    for name, fmt, users, rejected in [
        ("ev.csv", "csv", {"u1"}, 1),
        ("ml.inter", "recbole", {"196"}, 0),
        ("dg.csv", "diginetica", {"1"}, 0),
    ]:
        out = tmp_path / f"{name}.out"
        summary = replay(str(tmp_path / name), fmt, str(out), settings(tmp_path, f"state-{fmt}"), progress=False)
        assert summary.outcomes["applied"] == 2 and summary.outcomes["rejected"] == rejected
        final = final_embeddings(out)
        assert set(final) == users and all(e.state_version == 2 and e.n_nodes == 2 for e in final.values())


def test_cli_generate_replay_and_settings(tmp_path):
    runner = CliRunner()
    events = tmp_path / "ev.jsonl"
    res = runner.invoke(app, ["generate", "--out", str(events), "--events", "400", "--malformed", "0.05"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "replay",
            "--events",
            str(events),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--state",
            str(tmp_path / "st"),
            "--dead-letter",
            str(tmp_path / "d.jsonl"),
            "--batch-size",
            "50",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "events/s" in res.output and "rejected" in res.output
    assert final_embeddings(tmp_path / "o.jsonl")
    res = runner.invoke(
        app, ["replay", "--events", str(events), "--out", str(tmp_path / "x"), "--model", str(tmp_path / "nope.ckpt")]
    )
    assert res.exit_code == 2 and "ripple train" in res.output
    res = runner.invoke(app, ["settings"])
    assert res.exit_code == 0 and "RIPPLE_MAX_NODES" in res.output


def test_invalid_settings_are_reported_with_the_variable():
    import pytest

    with pytest.raises(ValueError, match="RIPPLE_BATCH_SIZE"):
        Settings.from_env({"RIPPLE_BATCH_SIZE": "many"})
    with pytest.raises(ValueError, match="max_nodes"):
        Settings.from_env({"RIPPLE_MAX_NODES": "0"})
    with pytest.raises(ValueError, match="persist_cache_every"):
        Settings.from_env({"RIPPLE_PERSIST_CACHE_EVERY": "-1"})


def test_the_layer_cache_is_stored_only_when_asked(tmp_path):
    from graph_state import RocksStore

    def stored_cache(settings: Settings, name: str) -> bytes:
        cfg = settings.graph_config()
        store = RocksStore(tmp_path / name, cfg, settings.rocks_options())
        g = UserGraph(cfg)
        for n, item in enumerate("abcd"):
            g.apply(Ev(f"e{n}", item, "view", BASE_TS + n))
        g.cache_key, g.cache = "model@4", b"\x01" * 8
        store.put_many({"u": g})
        store.close()
        store = RocksStore(tmp_path / name, cfg, settings.rocks_options())
        try:
            return store.get_many(["u"])["u"].cache
        finally:
            store.close()

    assert stored_cache(Settings.from_env({}), "default") == b""  # derived data, in memory only
    assert stored_cache(Settings.from_env({"RIPPLE_PERSIST_CACHE_EVERY": "2"}), "every2") == b"\x01" * 8


def test_cli_explain_shows_the_users_behaviours(tmp_path):
    runner = CliRunner()
    events = write_jsonl(tmp_path / "ev.jsonl", lines(300, 0.0))
    replay(events, "jsonl", str(tmp_path / "o.jsonl"), settings(tmp_path, "st"), progress=False)
    user = next(iter(final_embeddings(tmp_path / "o.jsonl")))
    res = runner.invoke(app, ["explain", "--user", user, "--state", str(tmp_path / "st"), "--top", "3"])
    assert res.exit_code == 0, res.output
    assert "share" in res.output and "state_version" in res.output
    res = runner.invoke(app, ["explain", "--user", "nobody", "--state", str(tmp_path / "st")])
    assert res.exit_code == 2 and "no state for user" in res.output


def test_explain_top_puts_the_top_behaviours_of_each_published_vector_in_its_record(tmp_path):
    from graph_state import RocksStore
    from operators import Checkpoint, EncoderConfig
    from operators.explain import explain

    path = write_jsonl(tmp_path / "events.jsonl", lines(n=800, malformed=0.0))
    plain, explained = settings(tmp_path, "plain"), settings(tmp_path, "explained", explain_top=3)
    replay(str(path), "jsonl", str(tmp_path / "plain.jsonl"), plain, progress=False)
    replay(str(path), "jsonl", str(tmp_path / "explained.jsonl"), explained, progress=False)
    assert b"explanation" not in (tmp_path / "plain.jsonl").read_bytes()  # off by default: the contract's fields only
    with_why = final_embeddings(tmp_path / "explained.jsonl")
    assert_same(with_why, final_embeddings(tmp_path / "plain.jsonl"))  # the vectors do not change
    checkpoint = Checkpoint.seeded(EncoderConfig(actions=explained.actions), seed=explained.model_seed)
    store = RocksStore(explained.state_dir, explained.graph_config(), explained.rocks_options())
    try:
        graphs = store.get_many(sorted(with_why))
    finally:
        store.close()
    for uid, emb in with_why.items():
        assert emb.explanation is not None and 1 <= len(emb.explanation) <= 3
        want = explain(checkpoint, graphs[uid], 3)
        assert [(e.item_id, e.action) for e in emb.explanation] == [(p.item_id, p.action) for p in want]
        np.testing.assert_allclose([e.share for e in emb.explanation], [p.share for p in want], atol=1e-5)
        assert [e.share for e in emb.explanation] == sorted((e.share for e in emb.explanation), reverse=True)


@settings_hypothesis(max_examples=300, deadline=None)
@given(cells=st.lists(st.text(alphabet=st.sampled_from(list('ab1 ;,\t"\x00é')), max_size=6), min_size=1, max_size=5))
def test_rows_split_as_the_csv_module_reads_them(cells):
    for sep in (",", "\t", ";"):
        text = sep.join(cells)
        if not text.strip():
            continue  # blank lines never reach the row mapper
        assert _cells(text, sep) == next(csv.reader(io.StringIO(text), delimiter=sep))


def test_a_row_with_a_stray_carriage_return_is_dead_lettered_not_a_crash(tmp_path):
    (tmp_path / "ml.inter").write_bytes(
        b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        b"196\t242\t3\t881250949\n196\t30\r2\t4\t881250950\n196\t302\t4\t881250951\n"
    )
    summary = replay(
        str(tmp_path / "ml.inter"),
        "recbole",
        str(tmp_path / "o.out"),
        settings(tmp_path, "s"),
        str(tmp_path / "dlq"),
        progress=False,
    )
    assert summary.outcomes["applied"] == 2 and summary.rejected == {"malformed_json": 1}
    dead = [msgspec.json.decode(line, type=DeadLetter) for line in open(tmp_path / "dlq", "rb")]
    assert [d.raw() for d in dead] == [b"196\t30\r2\t4\t881250950"]
