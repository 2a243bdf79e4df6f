"""``ripple train`` and ``ripple evaluate``: offline training and full-ranking evaluation.

Event files (jsonl, csv, recbole, diginetica) are read and validated by the stream's
own reader and decoder, grouped per user, and handed to ``operators`` as
``BehaviorEvent`` histories; the SR-GNN ``sessions`` split is a training-only format
read by ``operators.offline.datasets``. Evaluation embeds every case through
``UserGraph.apply`` → ``Embedder.embed_many``, the path the stream publishes from.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from stream_app.cli.typer_app import app, console, fail
from stream_app.core.settings import Settings
from stream_app.files.histories import DataFormat, load_split

E_NO_TEST = "{path} gives no test cases (test_prefixes.tsv next to the train file, or users with 3+ events)."
E_NOTHING = "nothing to evaluate: pass --model checkpoint(s), --baselines, or both."
BASELINES = ("pop", "cooc", "sknn", "vsknn", "stan", "gru")


def _settings(max_nodes: Optional[int]) -> Settings:
    return Settings.from_env(max_nodes=max_nodes)


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Event file, or the SR-GNN directory / train_sessions.txt.", exists=True)],
    out: Annotated[Path, typer.Option(help="Checkpoint to write; the training curves go next to it as .curves.png.")],
    format: Annotated[DataFormat, typer.Option("--format", help="Format of --data.")] = DataFormat.jsonl,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    dim: Annotated[int, typer.Option(min=4, max=1024)] = 64,
    layers: Annotated[int, typer.Option(min=1, max=8)] = 1,
    conv: Annotated[str, typer.Option(help="gcn or gat.")] = "gcn",
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    lr_decay: Annotated[float, typer.Option(help="Learning-rate factor after each epoch.")] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    max_nodes: Annotated[Optional[int], typer.Option(help="Distinct items per user graph (RIPPLE_MAX_NODES).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    val_share: Annotated[float, typer.Option(help="sessions: share of training sessions held out.")] = 0.1,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.9)] = 0.1,
    norm_scale: Annotated[float, typer.Option(help="Cosine scores times this (0 = plain dot product).")] = 16.0,
    weight_decay: Annotated[float, typer.Option(min=0.0)] = 0.0,
    patience: Annotated[int, typer.Option(min=1)] = 2,
    negatives: Annotated[int, typer.Option(min=0, help="Sampled-softmax negatives per step (0 = full softmax).")] = 0,
    max_minutes: Annotated[float, typer.Option(help="Training time budget in minutes (0 = none).")] = 0.0,
    hash_buckets: Annotated[int, typer.Option(min=1, help="Shared rows for items outside the vocabulary.")] = 1024,
    threads: Annotated[
        int, typer.Option(help="torch threads; 1 is bit-for-bit reproducible (0 = torch's default).")
    ] = 1,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    item_features: Annotated[
        Optional[Path],
        typer.Option(help="Item side features (RecBole .item, CSV or JSONL: item_id → tokens).", exists=True),
    ] = None,
    item_features_format: Annotated[
        Optional[str], typer.Option(help="recbole, csv or jsonl (default: from the file name).")
    ] = None,
    item_fields: Annotated[
        Optional[str], typer.Option(help="Comma-separated feature fields (default: all), e.g. class,release_year.")
    ] = None,
    feature_min_count: Annotated[int, typer.Option(min=1, help="Drop tokens carried by fewer items.")] = 2,
    similarity_k: Annotated[
        int, typer.Option(min=0, max=64, help="Similarity edges: k most similar items per node (0 = off).")
    ] = 0,
    global_k: Annotated[
        int,
        typer.Option(min=0, max=256, help="Global item view: k strongest transition neighbours per item (0 = off)."),
    ] = 0,
    global_window: Annotated[
        int, typer.Option(min=1, max=16, help="Global view: steps apart two items may be to be neighbours.")
    ] = 1,
    global_folds: Annotated[
        int,
        typer.Option(
            min=0, help="Global view: each fold of the training histories trains on the view of the others (<=1: off)."
        ),
    ] = 5,
) -> None:
    """Train the graph encoder on next-item prediction; write a checkpoint and its training curves."""
    import torch

    from operators.encoder import EncoderConfig
    from operators.item_features import read_item_features
    from operators.offline.training import TrainConfig, curves_path, train_encoder

    if threads > 0:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        settings = _settings(max_nodes)
        split = load_split(data, format, settings, val_share, seed)
        console.print(
            f"{split.protocol}: {sum(len(h) for h in split.train):,} training events in {len(split.train):,} "
            f"histories, {len(split.valid):,} validation and {len(split.test):,} test cases, "
            f"{len(split.vocab):,} items ({time.perf_counter() - started:.1f}s)"
        )
        enc = EncoderConfig(
            dim=dim,
            layers=layers,
            conv=conv,
            hash_buckets=hash_buckets,
            actions=settings.actions,
            dropout=dropout,
            norm_scale=norm_scale,
            similarity_k=similarity_k,
            global_k=global_k,
            global_window=global_window,
        )
        features = None
        if item_features is not None:
            fields = [f.strip() for f in item_fields.split(",") if f.strip()] if item_fields else None
            features = read_item_features(str(item_features), item_features_format, fields, feature_min_count)
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            patience=patience,
            negatives=negatives,
            threads=threads,
            seed=seed,
            max_minutes=max_minutes,
            progress=progress,
            global_folds=global_folds,
        )
        ckpt, result = train_encoder(
            split, settings.graph_config(), enc, cfg, str(out), log=console.print, features=features
        )
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
        return
    table = Table("epoch", "loss", "val recall@20", "val mrr@20", "samples/s", "seconds", title=f"training {out.name}")
    for row in result.history:
        table.add_row(
            f"{row['epoch']:.0f}",
            f"{row['loss']:.4f}",
            f"{row.get('val_recall@20', 0):.4f}",
            f"{row.get('val_mrr@20', 0):.4f}",
            f"{row['samples_per_second']:,.0f}",
            f"{row['train_seconds']:.0f}",
        )
    Console().print(table)
    console.print(
        f"best epoch {result.best_epoch} ({result.stopped}); {result.samples_per_second:,.0f} samples/s; "
        f"training {result.seconds / 60:.1f} min, total {(time.perf_counter() - started) / 60:.1f} min\n"
        f"model [bold]{out}[/] (version {ckpt.model_version}), curves [bold]{curves_path(str(out))}[/]"
    )


def _parse_ks(ks: list[str]) -> tuple[int, ...]:
    values = sorted({int(part) for k in ks for part in k.replace(",", " ").split()})
    if not values or values[0] < 1:
        raise typer.BadParameter("--k takes positive integers, e.g. --k 10 --k 20 or --k 10,20")
    return tuple(values)


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option(help="The same data the model was trained on.", exists=True)],
    model: Annotated[
        list[Path], typer.Option(help="Checkpoint(s) to evaluate (repeat for GCN and GAT; none: baselines only).")
    ] = [],  # noqa: B006
    format: Annotated[DataFormat, typer.Option("--format", help="Format of --data.")] = DataFormat.jsonl,
    k: Annotated[list[str], typer.Option("--k", help="Cut-offs: --k 10 --k 20 or --k 10,20.")] = ["10", "20"],  # noqa: B006
    baselines: Annotated[
        str, typer.Option(help="Comma-separated: pop, cooc, sknn, vsknn, stan, gru (empty for none).")
    ] = "pop,cooc,gru",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON here.")] = None,
    exclude_seen: Annotated[bool, typer.Option(help="Never rank a case's history items (no re-consumption).")] = False,
    val_share: Annotated[
        float, typer.Option(help="sessions: as in training (the GRU and the kNN tuning use the split).")
    ] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
    max_nodes: Annotated[Optional[int], typer.Option(help="Override the checkpoint's graph window.")] = None,
    gru_epochs: Annotated[int, typer.Option(min=1)] = 10,
    gru_minutes: Annotated[float, typer.Option(help="GRU training budget in minutes (0 = none).")] = 0.0,
    gru_lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    gru_negatives: Annotated[
        int, typer.Option(min=0, help="GRU sampled-softmax negatives per step (0 = full softmax).")
    ] = 0,
    knn_valid: Annotated[
        int, typer.Option(min=1, help="sknn/vsknn/stan: validation cases scored per setting while tuning.")
    ] = 5000,
    batch_size: Annotated[int, typer.Option(min=1)] = 512,
    threads: Annotated[int, typer.Option(help="torch threads (0 = torch's default).")] = 0,
) -> None:
    """Full-ranking next-item metrics of the model(s) and the baselines on the test cases, side by side.

    The kNN baselines (sknn, vsknn, stan) choose their hyper-parameters on the validation
    cases only and print the values they chose.
    """
    import dataclasses

    import torch

    from operators.checkpoint import Checkpoint
    from operators.graph_settings import graph_config_of
    from operators.offline.baselines import ItemTransitions, MostPopular, train_gru
    from operators.offline.evaluation import GraphScorer, Report
    from operators.offline.evaluation import evaluate as run_evaluate
    from operators.offline.knn import KINDS, SessionIndex, describe, tune
    from operators.offline.training import TrainConfig

    if threads > 0:
        torch.set_num_threads(threads)
    ks = _parse_ks(k)
    wanted = [b.strip() for b in baselines.split(",") if b.strip()]
    unknown = set(wanted) - set(BASELINES)
    if unknown:
        fail(f"unknown baseline(s) {sorted(unknown)}; choose from {', '.join(BASELINES)}.")
    if not model and not wanted:
        fail(E_NOTHING)
    reports: list[Report] = []
    try:
        checkpoints = [(path, Checkpoint.load(path)) for path in model]
        settings = _settings(max_nodes)
        split = load_split(data, format, settings, val_share, seed)
        if not split.test:
            raise ValueError(E_NO_TEST.format(path=data))
        console.print(f"{split.protocol}: {len(split.test):,} test cases, {len(split.vocab):,} training items")
        for path, ckpt in checkpoints:
            graph = graph_config_of(ckpt)
            if max_nodes is not None:
                graph = dataclasses.replace(graph, max_nodes=max_nodes)
            name = f"{checkpoint_label(ckpt)} ({path.name})"
            report = run_evaluate(GraphScorer(ckpt, graph, name), split.test, ks, batch_size, exclude_seen)
            report.info.update(
                model_version=ckpt.model_version,
                samples_per_second=float(ckpt.training.get("samples_per_second", 0.0)),
                train_seconds=float(ckpt.training.get("train_seconds", 0.0)),
            )
            reports.append(report)
            console.print(f"{name}: {_brief(report.metrics)} ({report.seconds:.1f}s)")
        if "pop" in wanted:
            reports.append(run_evaluate(MostPopular(split), split.test, ks, batch_size, exclude_seen))
        if "cooc" in wanted:
            reports.append(run_evaluate(ItemTransitions(split), split.test, ks, batch_size, exclude_seen))
        sessions = None
        for kind in (kind for kind in KINDS if kind in wanted):
            sessions = sessions or SessionIndex.from_split(split)
            scorer, tuned = tune(kind, split, knn_valid, seed, batch_size, exclude_seen, sessions=sessions)
            console.print(describe(tuned, sessions.time_unit))
            report = run_evaluate(scorer, split.test, ks, batch_size, exclude_seen)
            report.info["params"] = tuned.config.label(sessions.time_unit)
            report.info.update({f"param_{name}": value for name, value in tuned.config.params().items()})
            report.info.update(
                {f"valid_{name}": round(value, 6) for name, value in tuned.metrics.items()},
                tune_seconds=round(tuned.seconds, 1),
                tune_cases=tuned.cases,
                settings_tried=len(tuned.tried),
            )
            reports.append(report)
            console.print(f"{report.name} ({report.info['params']}): {_brief(report.metrics)} ({report.seconds:.1f}s)")
        if "gru" in wanted:
            dim = checkpoints[0][1].config.dim if checkpoints else 64
            scale = checkpoints[0][1].config.norm_scale if checkpoints else 0.0
            cfg = TrainConfig(
                epochs=gru_epochs,
                lr=gru_lr,
                seed=seed,
                max_minutes=gru_minutes,
                threads=threads,
                negatives=gru_negatives,
                progress=False,
            )
            gru, result = train_gru(split, dim, cfg, max_len=settings.max_nodes, norm_scale=scale, log=console.print)
            report = run_evaluate(gru, split.test, ks, batch_size, exclude_seen)
            report.info.update(
                samples_per_second=round(result.samples_per_second, 1),
                train_seconds=round(result.seconds, 1),
                best_epoch=result.best_epoch,
            )
            reports.append(report)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
        return
    print_reports(reports, ks, f"{data.name}: {split.protocol}, full ranking over {len(split.vocab):,} items")
    if json_out is not None:
        payload = {
            "data": str(data),
            "format": format.value,
            "protocol": split.protocol,
            "fingerprint": split.fingerprint,
            "items": len(split.vocab),
            "test_cases": len(split.test),
            "exclude_seen": exclude_seen,
            "ks": list(ks),
            "results": [r.to_dict() for r in reports],
        }
        os.makedirs(os.path.dirname(os.path.abspath(json_out)) or ".", exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"results: [bold]{json_out}[/]")


def model_label(config) -> str:
    """``GCN``, ``GCN+sim5``, ``GCN+feat``: the conv and the optional parts of a checkpoint."""
    label = config.conv.upper()
    if config.similarity_k:
        label += f"+sim{config.similarity_k}"
    if config.feature_tokens:
        label += "+feat"
    if getattr(config, "global_k", 0):
        label += f"+global{config.global_k}"
    return label


def checkpoint_label(checkpoint) -> str:
    """:func:`model_label`, plus the kNN mix a checkpoint ranks with (``GCN+STAN w=2``)."""
    mix = checkpoint.knn_mix
    return model_label(checkpoint.config) + (f"+{mix.label}" if mix is not None else "")


def _brief(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())


def print_reports(reports: list, ks: tuple[int, ...], title: str) -> None:
    table = Table(title=title)
    table.add_column("model")
    for kk in ks:
        for metric in ("Recall", "MRR", "NDCG"):
            table.add_column(f"{metric}@{kk}", justify="right")
    table.add_column("seconds", justify="right")
    for report in reports:
        cells = [f"{100 * report.metrics[f'{m}@{kk}']:.2f}" for kk in ks for m in ("recall", "mrr", "ndcg")]
        table.add_row(report.name, *cells, f"{report.seconds:.1f}")
    Console().print(table)
    console.print("metrics in %; Recall@K = HR@K (SR-GNN's P@K)")
