"""``ripple train-head`` and ``ripple evaluate-head``: downstream classifiers on frozen user embeddings.

Events are read and validated by the stream's own reader and decoder (as ``ripple
train`` reads them); labels come from the event log (``purchase``, ``click``) or a
labels file (``custom``); every example's features are the vector the stream would
publish for its prefix. See ``operators/offline/labels.py``, ``operators/offline/head_training.py``
and ``operators/heads.py``.
"""

from __future__ import annotations

import json
import math
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from stream_app.cli.typer_app import EventFormat, app, console, fail
from stream_app.core.settings import Settings

E_NO_MODEL = "the head records no encoder path; pass --model with the checkpoint it was trained on ({version})."
E_NO_LABELS = "task custom needs its labels file; pass --labels (the head was trained on {path!r})."


class Task(StrEnum):
    purchase = "purchase"
    click = "click"
    custom = "custom"


class SplitBy(StrEnum):
    user = "user"
    time = "time"


def _load_data(data: Path, fmt: EventFormat, task: str, labels: Optional[Path]):
    from operators.offline.labels import E_NEEDS_LABELS, read_labels
    from stream_app.files.histories import read_histories

    if task == "custom" and labels is None:
        raise ValueError(E_NEEDS_LABELS)
    histories, rejected = read_histories(str(data), fmt.value, Settings.from_env())
    if rejected:
        console.print(f"skipped {sum(rejected.values()):,} rejected events: {dict(rejected)}")
    return histories, (read_labels(str(labels)) if labels is not None else None)


@app.command("train-head")
def train_head(
    model: Annotated[Path, typer.Option(help="Encoder checkpoint whose (frozen) embeddings the head reads.")],
    data: Annotated[Path, typer.Option(help="Event file the labels and prefixes come from.", exists=True)],
    out: Annotated[Path, typer.Option(help="Head file to write (e.g. head.pt).")],
    task: Annotated[Task, typer.Option(help="purchase/click: is the next action one; custom: --labels.")],
    format: Annotated[EventFormat, typer.Option("--format", help="Format of --data.")] = EventFormat.jsonl,
    labels: Annotated[
        Optional[Path],
        typer.Option(help="custom: CSV of user_id,label or user_id,ts,label (header optional).", exists=True),
    ] = None,
    split: Annotated[SplitBy, typer.Option(help="user: test users never train; time: test after a cut-off.")] = (
        SplitBy.user
    ),
    test_share: Annotated[float, typer.Option(min=0.01, max=0.99, help="Share of users / latest examples.")] = 0.2,
    max_per_user: Annotated[int, typer.Option(min=0, help="Latest examples kept per user (0 = all).")] = 20,
    min_history: Annotated[int, typer.Option(min=1, help="Events a prefix needs to be an example.")] = 1,
    hidden: Annotated[int, typer.Option(min=0, help="Hidden units (0 = logistic regression).")] = 64,
    epochs: Annotated[int, typer.Option(min=1)] = 200,
    lr: Annotated[float, typer.Option(min=0.0)] = 3e-3,
    weight_decay: Annotated[float, typer.Option(min=0.0)] = 1e-4,
    threshold: Annotated[
        Optional[float], typer.Option(min=0.0, max=1.0, help="Decision threshold (default: best validation F1).")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(help="torch threads (0 = torch's default).")] = 1,
) -> None:
    """Train a small classifier on frozen user embeddings to predict a downstream label."""
    import torch

    from operators.checkpoint import Checkpoint
    from operators.heads import HeadConfig, TaskSpec
    from operators.offline.datasets import fingerprint_files
    from operators.offline.head_training import LabelledData, train_label_head

    if threads > 0:
        torch.set_num_threads(threads)
    try:
        checkpoint = Checkpoint.load(model)
        histories, label_file = _load_data(data, format, task.value, labels)
        spec = TaskSpec(
            task=task.value,
            labels_path=os.path.abspath(labels) if labels is not None else "",  # evaluate-head runs from anywhere
            labels_digest=label_file.digest if label_file is not None else "",
            split=split.value,
            test_share=test_share,
            seed=seed,
            max_per_user=max_per_user,
            min_history=min_history,
        )
        labelled = LabelledData.of(histories, spec, label_file)
        console.print(_describe(labelled.describe()))
        config = HeadConfig(
            hidden=hidden, epochs=epochs, lr=lr, weight_decay=weight_decay, threshold=threshold, seed=seed
        )
        head = train_label_head(checkpoint, labelled, spec, config, os.path.abspath(model), log=console.print)
        head.info.update(data=str(data), format=format.value, fingerprint=fingerprint_files([str(data)], format.value))
        version = head.save(out)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
        return
    rows = [("validation", head.metrics["valid"]), ("test", head.metrics["test"])]
    print_metrics(rows, f"head on {task.value} ({split.value} split), threshold {head.threshold:.3f}")
    console.print(
        f"head [bold]{out}[/] (version {version}) on encoder {head.encoder_version}, best epoch "
        f"{head.info['best_epoch']}; compare with the baselines: ripple evaluate-head --head {out} --data {data} "
        f"--format {format.value}"
    )


@app.command("evaluate-head")
def evaluate_head(
    head: Annotated[Path, typer.Option(help="Head file written by ripple train-head.", exists=True)],
    data: Annotated[Path, typer.Option(help="Event file (the one the head was trained on: same split).", exists=True)],
    format: Annotated[EventFormat, typer.Option("--format", help="Format of --data.")] = EventFormat.jsonl,
    labels: Annotated[
        Optional[Path], typer.Option(help="custom: labels file (default: the one the head was trained on).")
    ] = None,
    model: Annotated[
        Optional[Path], typer.Option(help="Encoder checkpoint (default: the one the head was trained with).")
    ] = None,
    baselines: Annotated[str, typer.Option(help="Comma-separated: majority, counts, counts-weights.")] = (
        "majority,counts,counts-weights"
    ),
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="Write the results here (default: <head>.eval.json).")
    ] = None,
    threads: Annotated[int, typer.Option(help="torch threads (0 = torch's default).")] = 1,
) -> None:
    """Test metrics of a head next to majority-class and logistic-regression-on-counts baselines."""
    import torch

    from operators.checkpoint import Checkpoint
    from operators.heads import LabelHead
    from operators.offline.datasets import fingerprint_files
    from operators.offline.head_training import LabelledData, evaluate_label_head

    if threads > 0:
        torch.set_num_threads(threads)
    wanted = [b.strip() for b in baselines.split(",") if b.strip()]
    try:
        trained = LabelHead.load(head)
        spec = trained.spec
        model_path = model or (Path(trained.encoder_path) if trained.encoder_path else None)
        if model_path is None:
            raise ValueError(E_NO_MODEL.format(version=trained.encoder_version))
        checkpoint = Checkpoint.load(model_path)
        trained.check_encoder(checkpoint, str(model_path), str(head))
        labels_path = labels or (Path(spec.labels_path) if spec.labels_path else None)
        if spec.task == "custom" and labels_path is None:
            raise ValueError(E_NO_LABELS.format(path=spec.labels_path))
        histories, label_file = _load_data(data, format, spec.task, labels_path if spec.task == "custom" else None)
        fingerprint = fingerprint_files([str(data)], format.value)
        if fingerprint != trained.info.get("fingerprint"):
            console.print(
                "note: --data is not the file the head was trained on; its examples are split again "
                + ("(by user: a user keeps its side)" if spec.split == "user" else "(by time: a new cut-off)")
            )
        if label_file is not None and label_file.digest != spec.labels_digest:
            console.print("note: the labels differ from those the head was trained on")
        labelled = LabelledData.of(histories, spec, label_file)
        reports = evaluate_label_head(trained, checkpoint, labelled, wanted)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
        return
    described = labelled.describe()
    print_metrics(
        [(r.name, r.metrics) for r in reports],
        f"{spec.task} on {data.name}: {described['test_examples']:,} test examples of "
        f"{described['test_users']:,} users ({spec.split} split), positive rate "
        f"{100 * described['test_positive_rate']:.1f}%",
    )
    payload: dict[str, Any] = {
        "data": str(data),
        "format": format.value,
        "fingerprint": fingerprint,
        "head": str(head),
        "head_version": trained.head_version,
        "encoder_version": trained.encoder_version,
        "model": str(model_path),
        "spec": spec.to_dict(),
        "head_config": dict(trained.config.__dict__),
        **described,
        "results": [r.to_dict() for r in reports],
    }
    target = json_out or head.with_suffix(".eval.json")
    os.makedirs(os.path.dirname(os.path.abspath(target)) or ".", exist_ok=True)
    target.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"results: [bold]{target}[/]")


def _describe(info: dict[str, Any]) -> str:
    dropped = ", ".join(f"{n:,} {why}" for why, n in sorted(info["dropped"].items()) if n)
    return (
        f"{info['examples']:,} examples: {info['train_examples']:,} training ({info['train_users']:,} users, "
        f"{100 * info['train_positive_rate']:.1f}% positive), {info['test_examples']:,} test "
        f"({info['test_users']:,} users, {100 * info['test_positive_rate']:.1f}% positive)"
        + (f"; dropped {dropped}" if dropped else "")
    )


def print_metrics(rows: list[tuple[str, dict[str, float]]], title: str) -> None:
    table = Table(title=title)
    table.add_column("predictor", no_wrap=True)
    for name in ("acc", "prec", "recall", "F1", "ROC-AUC", "pred+"):
        table.add_column(name, justify="right")
    for name, m in rows:
        auc = m["roc_auc"]
        table.add_row(
            name,
            f"{100 * m['accuracy']:.2f}",
            f"{100 * m['precision']:.2f}",
            f"{100 * m['recall']:.2f}",
            f"{100 * m['f1']:.2f}",
            "n/a" if math.isnan(auc) else f"{auc:.4f}",
            f"{100 * m['predicted_positive_rate']:.1f}",
        )
    Console().print(table)
    console.print(
        "accuracy, precision, recall, F1 in %; ROC-AUC as a probability; pred+ = % of examples predicted positive"
    )
