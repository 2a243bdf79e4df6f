"""``ripple evaluate --baselines pop,cooc,sknn,vsknn,stan`` on every supported format, without a model."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from stream_app.cli import app

BASE_TS = 1_767_225_600


def user_histories(seed: int = 5, users: int = 40) -> dict[str, list[tuple[str, int]]]:
    """Per user, items with timestamps; users follow one of four item cycles, so neighbours carry signal."""
    rng = random.Random(seed)
    out = {}
    for u in range(users):
        start = rng.randrange(10)
        group = u % 4
        ts = BASE_TS + 100 * u
        out[f"u{u}"] = [(f"{group}{(start + t) % 10}", ts + 60 * t) for t in range(rng.randint(4, 9))]
    return out


def write(fmt: str, tmp_path) -> str:
    histories = user_histories()
    rows = [(u, item, ts) for u, h in histories.items() for item, ts in h]
    if fmt == "sessions":
        (tmp_path / "train_sessions.txt").write_text("\n".join(" ".join(i for i, _ in h) for h in histories.values()))
        prefixes = [" ".join(i for i, _ in h[:-1]) + "\t" + h[-1][0] for h in list(histories.values())[:10]]
        (tmp_path / "test_prefixes.tsv").write_text("\n".join(prefixes) + "\n")
        return str(tmp_path)
    path = tmp_path / f"events.{fmt}"
    if fmt == "jsonl":
        lines = [
            json.dumps({"event_id": f"{u}-{n}", "user_id": u, "item_id": i, "action": "view", "ts": ts})
            for n, (u, i, ts) in enumerate(rows)
        ]
    elif fmt == "csv":
        lines = ["event_id,user_id,item_id,action,ts,weight"] + [
            f"{u}-{n},{u},{i},view,{ts}," for n, (u, i, ts) in enumerate(rows)
        ]
    elif fmt == "recbole":
        lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"] + [
            f"{u}\t{i}\t4\t{ts}" for u, i, ts in rows
        ]
    else:  # diginetica: session;user;item;timeframe (ms);date
        lines = ["session_id;user_id;item_id;timeframe;eventdate"] + [
            f"{u[1:]};NA;{i};{(ts - BASE_TS) * 1000};2016-05-09" for u, i, ts in rows
        ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("fmt", ["sessions", "jsonl", "csv", "recbole", "diginetica"])
def test_knn_baselines_run_on_every_format_and_report_their_chosen_settings(tmp_path, fmt):
    data = write(fmt, tmp_path)
    out = tmp_path / "eval.json"
    args = ["evaluate", "--data", data, "--format", fmt, "--baselines", "pop,cooc,sknn,vsknn,stan", "--json", str(out)]
    res = CliRunner().invoke(app, [*args, "--val-share", "0.3", "--knn-valid", "50"])
    assert res.exit_code == 0, res.output
    for name in ("SKNN", "V-SKNN", "STAN"):
        assert f"{name}: chose k=" in " ".join(res.output.split())
    payload = json.loads(out.read_text())
    results = {r["name"]: r for r in payload["results"]}
    assert list(results) == ["most-popular", "item-transitions", "SKNN", "V-SKNN", "STAN"]
    assert results["V-SKNN"]["param_weighting"] in {"linear", "div", "quadratic", "log"}
    assert {"param_lambda1", "param_lambda2", "param_lambda3", "valid_mrr@20", "settings_tried"} <= set(results["STAN"])
    assert results["SKNN"]["cases"] == payload["test_cases"] > 0
    # the cycles make the next item predictable from neighbours: far above popularity
    assert results["SKNN"]["metrics"]["recall@10"] > results["most-popular"]["metrics"]["recall@10"]


def test_evaluate_names_unknown_baselines_and_an_empty_request(tmp_path):
    data = write("jsonl", tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--data", data, "--baselines", "pop,knn"])
    assert res.exit_code != 0 and "unknown baseline(s) ['knn']" in res.output
    assert "sknn, vsknn, stan" in res.output
    res = runner.invoke(app, ["evaluate", "--data", data, "--baselines", ""])
    assert res.exit_code != 0 and "nothing to evaluate" in res.output
