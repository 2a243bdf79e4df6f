"""Train and evaluate the graph encoder with N seeds; mean ± sd of every metric beside the baselines.

Each seed is one ``ripple train --seed S`` (the same options otherwise; with ``--format
sessions`` the seed also draws the validation sessions); then one ``ripple evaluate``
scores every checkpoint and the baselines (once: they do not depend on the encoder's
seed) on the same test cases. The table shows the GCN's mean ± sample standard
deviation over the seeds and each seed's row; the JSON holds every number.

    export RIPPLE_DECAY_SECONDS=100000000
    python bench/seeds.py --data ../shared/data/ml-100k/ml-100k.inter --format recbole --seeds 0 1 2 \\
        --out-dir runs/ml-seeds --train-args "--epochs 30 --dim 64 --patience 3" \\
        --eval-args "--k 10 --k 20 --exclude-seen" --baselines pop,cooc,sknn,vsknn,stan --record seeds-ml-100k
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.report import markdown, record, show, this_command  # noqa: E402

METRICS = ("recall", "mrr", "ndcg")


def ripple(args: list[str]) -> None:
    """Run one ``python -m stream_app`` command from the repository root; stop on failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    print("$ ripple " + " ".join(shlex.quote(a) for a in args), flush=True)
    done = subprocess.run([sys.executable, "-m", "stream_app", *args], cwd=ROOT, env=env)
    if done.returncode != 0:
        sys.exit(f"ripple {args[0]} failed (exit {done.returncode}); see its output above.")


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def group(results: list[dict], seeds: list[int], label: str, names: list[str]) -> dict:
    """One model's per-seed metrics and their mean and sd."""
    per_seed = [
        {"seed": s, **r["metrics"], "train_seconds": r.get("train_seconds", 0.0)}
        for s, r in zip(seeds, results, strict=True)
    ]
    summary = {n: mean_sd([row[n] for row in per_seed]) for n in [*names, "train_seconds"]}
    return {
        "label": label,
        "seeds": per_seed,
        "mean": {n: v[0] for n, v in summary.items()},
        "sd": {n: v[1] for n, v in summary.items()},
    }


def summarise(payload: dict, seeds: list[int], label: str, mixed_label: str = "") -> dict:
    """The GCN's per-seed metrics, their mean and sd (and those of its kNN mixes when ``mixed_label``), and the
    baselines' metrics, from one evaluate JSON."""
    ks = payload["ks"]
    names = [f"{m}@{k}" for k in ks for m in METRICS]
    n = len(seeds)
    groups = [group(payload["results"][:n], seeds, label, names)]
    if mixed_label:
        groups.append(group(payload["results"][n : 2 * n], seeds, mixed_label, names))
    baselines = payload["results"][n * len(groups) :]
    return {
        **groups[0],
        "mixed": groups[1] if mixed_label else None,
        "ks": ks,
        "metrics": names,
        "baselines": [{"name": b["name"], **b["metrics"], "params": b.get("params", "")} for b in baselines],
        "data": payload["data"],
        "test_cases": payload["test_cases"],
        "items": payload["items"],
    }


def rows(result: dict) -> tuple[list[str], list[list[str]]]:
    names = result["metrics"]
    header = ["model", *[n.replace("recall", "Recall").replace("mrr", "MRR").replace("ndcg", "NDCG") for n in names]]
    header.append("training min")
    out = []
    for g in filter(None, [result, result.get("mixed")]):
        mean, sd = g["mean"], g["sd"]
        out.append(
            [
                f"{g['label']}, mean ± sd of {len(g['seeds'])} seeds",
                *[f"{100 * mean[m]:.2f} ± {100 * sd[m]:.2f}" for m in names],
                f"{mean['train_seconds'] / 60:.1f} ± {sd['train_seconds'] / 60:.1f}",
            ]
        )
        for row in g["seeds"]:
            cells = [f"{100 * row[m]:.2f}" for m in names]
            out.append([f"{g['label']}, seed {row['seed']}", *cells, f"{row['train_seconds'] / 60:.1f}"])
    for b in result["baselines"]:
        label = f"{b['name']} ({b['params']})" if b["params"] else b["name"]
        out.append([label, *[f"{100 * b[m]:.2f}" for m in names], ""])
    return header, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--format", required=True, choices=["sessions", "recbole", "jsonl", "csv", "diginetica"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out-dir", default="runs/seeds", help="Checkpoints and the evaluation JSON go here.")
    p.add_argument("--train-args", default="", help="Options for every `ripple train` (quoted).")
    p.add_argument("--eval-args", default="--k 10 --k 20", help="Options for `ripple evaluate` (quoted).")
    p.add_argument("--baselines", default="pop,cooc", help="Baselines evaluated once beside the seeds.")
    p.add_argument("--label", default="GCN", help="Name of the encoder's rows.")
    p.add_argument("--reuse", action="store_true", help="Keep a seed's checkpoint if it exists instead of retraining.")
    p.add_argument("--json", default="", help="Write the summary here (default: OUT_DIR/seeds.json).")
    p.add_argument("--mix", default="", help="Also `ripple mix` each seed with this kNN (stan) and evaluate both.")
    p.add_argument("--mix-args", default="", help="Options for every `ripple mix` (quoted), e.g. --val-share 0.05.")
    p.add_argument("--record", default="", help="Also write the table to docs/benchmarks.md under this section name.")
    p.add_argument("--show", default="", help="Only print (and --record) the table of an earlier run's summary JSON.")
    args = p.parse_args()
    if args.show:
        with open(args.show) as f:
            report(json.load(f), args)
        return
    if len(args.seeds) < 2:
        p.error("--seeds needs at least two seeds for a standard deviation, e.g. --seeds 0 1 2")
    os.makedirs(args.out_dir, exist_ok=True)
    out_dir = os.path.abspath(args.out_dir)
    data = os.path.abspath(args.data)
    started = time.time()
    checkpoints = []
    for seed in args.seeds:
        ckpt = os.path.join(out_dir, f"seed{seed}.ckpt")
        if not (args.reuse and os.path.exists(ckpt)):
            train = ["train", "--data", data, "--format", args.format, "--out", ckpt, "--seed", str(seed)]
            ripple([*train, "--no-progress", *shlex.split(args.train_args)])
        checkpoints.append(ckpt)
    for seed, ckpt in list(zip(args.seeds, checkpoints, strict=True)) if args.mix else []:
        mixed = os.path.join(out_dir, f"seed{seed}-{args.mix}.ckpt")
        if not (args.reuse and os.path.exists(mixed)):
            mix = ["mix", "--model", ckpt, "--data", data, "--format", args.format, "--out", mixed, "--seed", str(seed)]
            ripple([*mix, "--kind", args.mix, *shlex.split(args.mix_args)])
        # no file: the model alone won on validation (weight 0), and it is its own "mix"
        checkpoints.append(mixed if os.path.exists(mixed) else ckpt)
    eval_json = os.path.join(out_dir, "evaluate.json")
    evaluate = ["evaluate", *[a for c in checkpoints for a in ("--model", c)], "--data", data, "--format", args.format]
    ripple([*evaluate, "--baselines", args.baselines, "--json", eval_json, *shlex.split(args.eval_args)])
    with open(eval_json) as f:
        mixed_label = f"{args.label}+{args.mix.upper()}" if args.mix else ""
        result = summarise(json.load(f), args.seeds, args.label, mixed_label)
    result["minutes"] = round((time.time() - started) / 60, 1)
    result["command"] = this_command()
    result["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result["train_args"] = args.train_args
    result["eval_args"] = args.eval_args
    result["mix_args"] = args.mix_args
    summary_path = args.json or os.path.join(out_dir, "seeds.json")
    with open(summary_path, "w") as f:
        json.dump(result, f, indent=2)
    report(result, args)
    print(f"summary: {summary_path} ({result['minutes']} min)")


def report(result: dict, args: argparse.Namespace) -> None:
    """Print the table of a run's summary, and record it when asked."""
    header, body = rows(result)
    title = f"{os.path.basename(args.data.rstrip('/'))}: {len(args.seeds)} seeds, {result['test_cases']:,} test cases"
    show(title, header, body)
    if args.record:
        note = (
            f"\n\nAll numbers in %; ± is the sample standard deviation over seeds {', '.join(map(str, args.seeds))} "
            f"(`ripple train --seed`); baselines were evaluated once. Whole run {result['minutes']} min."
        )
        record(args.record, title, markdown(header, body) + note, result.get("command", ""), result.get("finished", ""))


if __name__ == "__main__":
    main()
