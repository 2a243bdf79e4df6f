"""``ripple mix``: add a session-kNN score to a trained checkpoint's item ranking, tuned on validation.

The new checkpoint serves the same embeddings (same encoder) and ranks items by
``user · item + w · knn(item) / max knn``, the kNN query built from the user's graph
(``operators/session_knn.py``); ``ripple evaluate``, ``ripple recommend``, the worker's
recommendations view and ``RIPPLE_RECOMMEND_TOP`` all rank that way once it serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from stream_app.cli.typer_app import app, console, fail
from stream_app.core.settings import Settings
from stream_app.files.histories import DataFormat, load_split

KNN_KINDS = ("stan", "vsknn", "sknn")


@app.command()
def mix(
    model: Annotated[Path, typer.Option(help="The trained checkpoint.", exists=True, dir_okay=False)],
    data: Annotated[Path, typer.Option(help="The data the model was trained on.", exists=True)],
    out: Annotated[Path, typer.Option(help="Checkpoint to write (the model plus its kNN index and weight).")],
    format: Annotated[DataFormat, typer.Option("--format", help="Format of --data.")] = DataFormat.jsonl,
    kind: Annotated[str, typer.Option(help="The kNN method: stan, vsknn or sknn.")] = "stan",
    val_share: Annotated[float, typer.Option(help="sessions: the --val-share of the training.")] = 0.1,
    seed: Annotated[
        Optional[int], typer.Option(help="sessions: the --seed of the training (default: the one it recorded).")
    ] = None,
    weights: Annotated[
        str, typer.Option(help="Comma-separated weights to choose from on validation (0 = the GCN alone).")
    ] = "0,0.25,0.5,1,2,4,8,16,32,64,128",
    knn_valid: Annotated[int, typer.Option(min=1, help="Validation cases per kNN setting while tuning.")] = 5000,
    weight_valid: Annotated[int, typer.Option(min=1, help="Validation cases that choose the weight.")] = 20000,
    exclude_seen: Annotated[bool, typer.Option(help="Rank as evaluation with --exclude-seen will.")] = False,
    max_nodes: Annotated[Optional[int], typer.Option(help="Override the checkpoint's graph window.")] = None,
    threads: Annotated[int, typer.Option(help="torch threads (0 = torch's default).")] = 1,
) -> None:
    """Tune a session-kNN method and its weight beside the model's score on the validation split; write the mix.

    Nothing of the test cases is looked at; `ripple evaluate --model OUT` scores the result.
    When the model alone wins on validation (weight 0), no file is written.
    """
    import dataclasses

    import torch

    from operators.checkpoint import Checkpoint
    from operators.graph_settings import graph_config_of
    from operators.offline.knn import describe
    from operators.offline.knn_mix import fit_mix

    if threads > 0:
        torch.set_num_threads(threads)
    if kind not in KNN_KINDS:
        fail(f"unknown kNN method {kind!r}; choose from {', '.join(KNN_KINDS)}.")
    try:
        grid = [float(w) for w in weights.replace(" ", "").split(",") if w]
    except ValueError:
        fail(f"--weights takes comma-separated numbers, e.g. 0,0.5,1,2 (got {weights!r}).")
        return
    try:
        checkpoint = Checkpoint.load(model)
        if checkpoint.knn_mix is not None:
            raise ValueError(f"{model} already mixes {checkpoint.knn_mix.label}; mix the model it was made from.")
        recorded = checkpoint.training.get("train_config", {}).get("seed")
        split_seed = seed if seed is not None else int(recorded or 0)
        settings = Settings.from_env(max_nodes=max_nodes)
        split = load_split(data, format, settings, val_share, split_seed)
        graph = graph_config_of(checkpoint)
        if max_nodes is not None:
            graph = dataclasses.replace(graph, max_nodes=max_nodes)
        console.print(
            f"{split.protocol}: {len(split.train):,} training histories, {len(split.valid):,} validation cases "
            f"(split seed {split_seed})"
        )
        fit = fit_mix(
            checkpoint,
            split,
            kind,
            grid,
            knn_valid,
            weight_valid,
            seed=split_seed,
            exclude_seen=exclude_seen,
            graph_config=graph,
            log=console.print,
        )
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
        return
    console.print(describe(fit.tuned, split.time_unit))
    table = Table("weight", "valid Recall@20", "valid MRR@20", title=f"{model.name} + w · {kind} ({fit.cases:,} cases)")
    for w, m in fit.valid.items():
        mark = " (chosen)" if w == fit.weight else ""
        table.add_row(f"{w:g}{mark}", f"{100 * m['recall@20']:.2f}", f"{100 * m['mrr@20']:.2f}")
    Console().print(table)
    if fit.weight == max(fit.valid) and len(fit.valid) > 1:
        console.print("[yellow]the largest weight won: the kNN alone may rank better still; try larger --weights.[/]")
    if fit.weight == 0:
        console.print(f"the model alone is best on validation; nothing written ({fit.seconds:.0f}s)")
        return
    version = fit.checkpoint.save(out)
    sessions = fit.checkpoint.knn_mix.knn.sessions.n_sessions if fit.checkpoint.knn_mix else 0
    console.print(
        f"model [bold]{out}[/] (version {version}): {model.name} + {fit.weight:g} · {kind} over "
        f"{sessions:,} training sessions ({fit.seconds:.0f}s)"
    )
