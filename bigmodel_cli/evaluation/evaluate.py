"""`bigmodel evaluate`: measure a run on the test (or dev) split, honestly.

Classifiers get accuracy; macro, micro and weighted precision, recall and F1; a per-class
table; the confusion matrix; the expected calibration error (ECE) with a reliability
plot; and examples per second. Beside every figure stands the TF-IDF + LogisticRegression
baseline (bigmodel_cli.evaluation.baseline), trained on the same training split and scored on the same
documents, with the difference, so that the report says at a glance whether the
Transformer earns its cost. Whether a difference is more than noise is settled by paired
statistics on the same documents (bigmodel_cli.evaluation.significance): 95% bootstrap
intervals of macro-F1 and accuracy for both models and for their difference, and McNemar's
test; the verdict is "better", "worse" or "no measurable difference" by the interval of the
macro-F1 difference. Documents whose label the model never saw in training are
counted and reported, and left out of the metrics of both.

Pretrain runs get the loss, perplexity and masked (or next) token accuracy on the split.

Writes reports/NAME/SPLIT/: report.json, report.md (the readable page), confusion.png and
calibration.png; the record's headline numbers show in `bigmodel status`.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.errors import UserError
from bigmodel_cli.evaluation import significance
from bigmodel_cli.evaluation.plots import CJK_HINT, plot_text, text_font
from bigmodel_cli.fileio import atomic_write, read_json, write_json
from bigmodel_cli.training.classify_data import classifier_max_len
from bigmodel_cli.workspace.config import EvaluateConfig, resolve_checked

SPLITS = ("test", "dev")
AVERAGES = ("macro", "micro", "weighted")
SCALARS = ["accuracy"] + [f"{a}_{m}" for a in AVERAGES for m in ("precision", "recall", "f1")] + ["ece"]
LOWER_IS_BETTER = {"ece"}


# -- options ------------------------------------------------------------------------------
def resolve_config(section: dict[str, Any] | None, overrides: dict[str, Any]) -> EvaluateConfig:
    """Defaults < [evaluate] in bigmodel.toml < options; every problem reported at once."""
    return resolve_checked(EvaluateConfig, section, overrides, validate)


def validate(cfg: EvaluateConfig) -> list[str]:
    problems = []
    if cfg.batch_size < 1:
        problems.append(f"--batch-size must be a positive integer, got {cfg.batch_size}")
    if cfg.bins < 1:
        problems.append(f"bins must be a positive integer, got {cfg.bins}")
    if not cfg.baseline_c or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0 for c in cfg.baseline_c):
        problems.append(f"baseline_c must be a list of positive numbers, got {cfg.baseline_c!r}")
    if cfg.baseline_char_ngrams < 0:
        problems.append(f"baseline_char_ngrams must be 0 or more, got {cfg.baseline_char_ngrams}")
    if cfg.baseline_char_wb < 0 or cfg.baseline_char_wb == 1:
        problems.append(f"baseline_char_wb must be 0 (off) or 2 or more, got {cfg.baseline_char_wb}")
    if cfg.bootstrap_resamples < 100:
        problems.append(f"bootstrap_resamples must be at least 100 for a 95% interval, got {cfg.bootstrap_resamples}")
    return problems


# -- metrics ------------------------------------------------------------------------------
def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int) -> tuple[float, list[dict[str, Any]]]:
    """Expected calibration error over equal-width confidence bins, and the bins."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table, ece, n = [], 0.0, max(len(confidence), 1)
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        acc = float(correct[inside].mean()) if count else None
        conf = float(confidence[inside].mean()) if count else None
        if count:
            ece += abs(acc - conf) * count / n
        table.append({"low": round(float(edges[b]), 4), "high": round(float(edges[b + 1]), 4), "count": count,
                      "accuracy": acc, "confidence": conf})
    return ece, table


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str], bins: int) -> dict[str, Any]:
    """Every figure of the report for one model, from gold indices and class probabilities."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    k = len(labels)
    y_pred = probs.argmax(-1)
    out: dict[str, Any] = {"accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0}
    for average in AVERAGES:
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=list(range(k)), average=average, zero_division=0)
        out.update({f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)})
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(range(k)), average=None, zero_division=0)
    out["per_class"] = [{"label": labels[i], "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                         "support": int(s[i])} for i in range(k)]
    out["confusion"] = confusion_matrix(y_true, y_pred, labels=list(range(k))).tolist()
    out["ece"], out["reliability"] = calibration(probs.max(-1), y_pred == y_true, bins)
    return out


# -- plots --------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png")
    _pyplot().close(fig)


def plot_confusion(matrices: dict[str, list[list[int]]], labels: list[str], path: Path) -> bool:
    """Confusion matrices side by side (rows: gold, columns: predicted), counts in the cells.
    Returns False when the labels need a CJK font and none is installed."""
    plt = _pyplot()
    k = len(labels)
    side = min(2 + 0.5 * k, 10)
    shown = [plot_text(label) for label in labels]
    with text_font([*labels, *matrices]) as drawable:
        fig, axes = plt.subplots(1, len(matrices), figsize=(side * len(matrices), side), dpi=100, squeeze=False)
        for ax, (title, matrix) in zip(axes[0], matrices.items()):
            m = np.asarray(matrix)
            ax.imshow(m, cmap="Blues")
            ax.set_title(plot_text(title))
            ax.set_xticks(range(k), shown, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
            ax.set_yticks(range(k), shown)
            ax.set_xlabel("predicted")
            ax.set_ylabel("gold")
            if k <= 20:
                for i in range(k):
                    for j in range(k):
                        ax.text(j, i, str(m[i, j]), ha="center", va="center",
                                color="white" if m[i, j] > m.max() / 2 else "black", fontsize=9)
        fig.tight_layout()
        _save(fig, path)
    return drawable


def plot_reliability(tables: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    plt = _pyplot()
    with text_font(tables):
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect")
        for name, table in tables.items():
            points = [(b["confidence"], b["accuracy"]) for b in table if b["count"]]
            if points:
                ax.plot(*zip(*points), marker="o", label=plot_text(name))
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        _save(fig, path)


# -- the stage --------------------------------------------------------------------------------
@dataclass
class EvaluateResult:
    skipped: bool
    name: str
    split: str
    folder: Path
    record: dict[str, Any] | None
    report: dict[str, Any]


def pick_run(ws, run: str | None) -> Path:
    """runs/RUN, or the newest finetune run (the newest pretrain run when there is none)."""
    from bigmodel_cli.model.runs import find_run, run_folders, run_kind

    if run in (None, "latest"):
        kinds = {run_kind(p) for p in run_folders(ws)}
        return find_run(ws, None, kind="finetune" if "finetune" in kinds else ("pretrain" if kinds else None))
    return find_run(ws, run)


def evaluate(ws, run: str | None = None, *, split: str = "test", cfg: EvaluateConfig | None = None, force: bool = False,
             show_progress: bool = False, console=None) -> EvaluateResult:
    from bigmodel_cli.data.store import has_records, split_file
    from bigmodel_cli.model.runs import model_checkpoint, run_kind, train_options
    from bigmodel_cli.workspace.records import Done, run_stage

    cfg = cfg or EvaluateConfig()
    problems = validate(cfg) + ([] if split in SPLITS else [f"--split must be test or dev, got '{split}'"])
    if problems:
        raise UserError("; ".join(problems))
    folder = pick_run(ws, run)
    kind = run_kind(folder)
    data = ws.find_dataset(cfg.data or train_options(folder).get("data") or None)
    split_path = split_file(data, split)
    if not has_records(split_path):
        raise UserError(f"no {split} split in {ws.relative(data)}/ ({split}.parquet is missing or empty)",
                        hint="preprocess with a share for it (--split 0.8,0.1,0.1) or give --test FILE, "
                             + ("or evaluate on --split dev" if split == "test" else "or evaluate on --split test"))
    checkpoint = model_checkpoint(folder)
    stage = f"evaluate:{folder.name}"
    out = ws.root / "reports" / folder.name / split
    params = {"run": folder.name, "split": split, "checkpoint": checkpoint.name, **dataclasses.asdict(cfg)}
    input_paths = [split_path, checkpoint / "model.safetensors", folder / "vocab.txt"]
    if kind == "finetune":
        input_paths += [p for p in (split_file(data, "train"), split_file(data, "dev")) if p is not None]
    inputs = ws.hash_paths(list(dict.fromkeys(input_paths)))
    last = next((r for r in reversed(ws.records(stage)) if r.get("status") == "ok" and r["params"].get("split") == split), None)

    def work() -> Done:
        if kind == "finetune":
            report = _classifier(ws, folder, checkpoint, split, split_path, cfg, out, show_progress, console)
        else:
            report = _language_model(ws, folder, checkpoint, split, split_path, cfg)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "report.json", report)
        with atomic_write(out / "report.md") as handle:
            handle.write(render_markdown(report))
        return Done(report, sorted(p for p in out.iterdir() if p.is_file()), headline(report))

    outcome = run_stage(ws, stage, params, inputs, work, lock=f"evaluate {folder.name} --split {split}",
                        sections=("project", "evaluate"), may_skip=not force and (out / "report.json").exists(), last=last)
    if outcome.skipped:
        return EvaluateResult(True, folder.name, split, out, outcome.record, read_json(out / "report.json"))
    return EvaluateResult(False, folder.name, split, out, outcome.record, outcome.value)


def _classifier(ws, folder: Path, checkpoint: Path, split: str, split_path: Path, cfg: EvaluateConfig, out: Path,
                show_progress: bool, console) -> dict[str, Any]:
    from bigmodel_cli.data.tokenizer import Encoder
    from bigmodel_cli.data.vocab import PAD
    from bigmodel_cli.evaluation import baseline as bl
    from bigmodel_cli.model.runs import load_model
    from bigmodel_cli.training.classify_data import (
        classify_probs,
        encode_records,
        read_split,
    )

    model, checkpoint = load_model(folder, checkpoint)
    labels = list(model.cfg.labels)
    max_len = classifier_max_len(folder, model)
    encoder = Encoder.from_folder(folder)
    vocab = encoder.vocab
    records = read_split(split_path)
    unlabelled = sum(1 for r in records if r["label"] is None)
    if unlabelled == len(records):
        raise UserError(f"{ws.relative(split_path)} has no labels, so there is nothing to score",
                        hint="preprocess a labelled corpus (bigmodel preprocess FILE --label-field NAME --force)")
    unseen = Counter(r["label"] for r in records if r["label"] is not None and r["label"] not in labels)
    scored = [r for r in records if r["label"] in labels]
    if not scored:
        raise UserError(f"none of the labels in {ws.relative(split_path)} ({', '.join(sorted(unseen))}) were seen in training "
                        f"(the model knows {', '.join(labels)})", hint="preprocess again so that train and test share labels, then finetune again")
    y = np.array([labels.index(r["label"]) for r in scored])

    started = time.perf_counter()
    data = encode_records(scored, encoder, labels, max_len)
    probs = classify_probs(model, data, cfg.batch_size, vocab.id(PAD))
    seconds = time.perf_counter() - started
    ours = {**classification_metrics(y, probs, labels, cfg.bins), "seconds": round(seconds, 3),
            "examples_per_s": round(len(scored) / max(seconds, 1e-9), 1)}

    base, cached = bl.load_or_train(ws, cfg, split_path.parent)
    started = time.perf_counter()
    base_probs = base.predict_proba(bl.docs(scored))
    seconds = time.perf_counter() - started
    # the baseline's columns in the model's label order (a class it never saw scores 0)
    aligned = np.zeros((len(scored), len(labels)))
    for j, label in enumerate(base.classes):
        if label in labels:
            aligned[:, labels.index(label)] = base_probs[:, j]
    theirs = {**classification_metrics(y, aligned, labels, cfg.bins), "seconds": round(seconds, 3),
              "examples_per_s": round(len(scored) / max(seconds, 1e-9), 1),
              "C": base.info.get("C"), "features": base.info.get("features"), "cached": cached,
              "dev_macro_f1_by_C": base.info.get("dev_macro_f1_by_C")}

    out.mkdir(parents=True, exist_ok=True)
    drawable = plot_confusion({f"{folder.name}": ours["confusion"], "TF-IDF + LR": theirs["confusion"]}, labels, out / "confusion.png")
    plot_reliability({folder.name: ours["reliability"], "TF-IDF + LR": theirs["reliability"]}, out / "calibration.png")
    difference = {k: round(ours[k] - theirs[k], 6) for k in SCALARS}
    paired = significance.compare(y, probs.argmax(-1), aligned.argmax(-1), len(labels),
                                  resamples=cfg.bootstrap_resamples, seed=cfg.bootstrap_seed)
    report = {
        "run": folder.name, "kind": "classifier", "split": split, "checkpoint": ws.relative(checkpoint),
        "labels": labels, "documents": len(records), "scored": len(scored),
        "unseen_labels": dict(sorted(unseen.items())), "unlabelled": unlabelled,
        "model": ours, "baseline": theirs, "difference": difference, "significance": paired,
        "speed_ratio": round(theirs["examples_per_s"] / max(ours["examples_per_s"], 1e-9), 2),
        "files": {"markdown": "report.md", "confusion": "confusion.png", "calibration": "calibration.png"},
        "warnings": [],
    }
    if unseen:
        listed = ", ".join(f"{k} ({v})" for k, v in sorted(unseen.items()))
        report["warnings"].append(f"{sum(unseen.values())} {split} document(s) carry labels unseen in training: {listed}; "
                                  "they are left out of every metric (model and baseline)")
    if unlabelled:
        report["warnings"].append(f"{unlabelled} {split} document(s) have no label and were not scored")
    if not drawable:
        report["warnings"].append(f"confusion.png: {CJK_HINT}")
    report["verdict"] = verdict(report)
    return report


def p_value(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def interval(ci: list[float], signed: bool = True) -> str:
    return f"{ci[0]:+.4f} to {ci[1]:+.4f}" if signed else f"{ci[0]:.4f} to {ci[1]:.4f}"


def verdict(report: dict[str, Any]) -> str:
    """One line, three ways: better / worse / no measurable difference, by whether the 95%
    interval of the macro-F1 difference lies above 0, below 0 or across it."""
    d = report["difference"]["macro_f1"]
    sig = report["significance"]
    evidence = (f"model - baseline {d:+.4f} macro-F1, 95% CI {interval(sig['ci']['difference']['macro_f1'])}, "
                f"McNemar {p_value(sig['mcnemar']['p_value'])}")
    ratio = report["speed_ratio"]
    speed = f"{ratio:.1f}x as fast" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
    if sig["outcome"] == "better":
        return f"better: the Transformer beats the TF-IDF + LR baseline ({evidence}); the baseline is {speed}"
    if sig["outcome"] == "worse":
        return f"worse: the Transformer does not earn its cost, the TF-IDF + LR baseline is better ({evidence}) and {speed}"
    return f"no measurable difference between the Transformer and the TF-IDF + LR baseline ({evidence}); the baseline is {speed}"


def _language_model(ws, folder: Path, checkpoint: Path, split: str, split_path: Path, cfg: EvaluateConfig) -> dict[str, Any]:
    import contextlib

    from bigmodel_cli.data.tokenizer import Encoder
    from bigmodel_cli.model.runs import load_model
    from bigmodel_cli.training.lm_data import CLMTask, MLMTask, encode_blocks

    model, checkpoint = load_model(folder, checkpoint)
    train_cfg = read_json(folder / "train.json") if (folder / "train.json").exists() else {}
    seq_len = int(train_cfg.get("seq_len", 128))
    encoder = Encoder.from_folder(folder)
    vocab = encoder.vocab
    blocks = encode_blocks(split_path, encoder, seq_len)
    if not len(blocks):
        raise UserError(f"{ws.relative(split_path)} holds no tokens to evaluate on", hint="preprocess a corpus with text in it")
    objective = "clm" if model.cfg.causal else "mlm"
    task_cls = CLMTask if model.cfg.causal else MLMTask
    whole_word = not model.cfg.causal and bool(train_cfg.get("whole_word", False))  # as the run was trained
    task = task_cls(blocks, blocks, cfg.batch_size, int(train_cfg.get("seed", 42)), vocab,
                    float(train_cfg.get("mask_prob", 0.15)), eval_batches=0, starts=(blocks.starts, blocks.starts) if whole_word else None)
    started = time.perf_counter()
    import torch

    with torch.no_grad():
        metrics = task.evaluate(model, contextlib.nullcontext)
    seconds = time.perf_counter() - started
    tokens = blocks.tokens + len(blocks)  # the stream and each block's [CLS]: every position but padding
    return {
        "run": folder.name, "kind": "language model", "objective": objective, "split": split,
        "checkpoint": ws.relative(checkpoint), "blocks": int(len(blocks)), "seq_len": seq_len, "tokens": tokens,
        "loss": metrics["loss"], "perplexity": metrics["perplexity"],
        ("masked_token_accuracy" if objective == "mlm" else "next_token_accuracy"): metrics["accuracy"],
        "seconds": round(seconds, 3), "examples_per_s": round(len(blocks) / max(seconds, 1e-9), 1),
        "tokens_per_s": round(tokens / max(seconds, 1e-9), 1), "warnings": [],
    }


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The figures `bigmodel status` shows (the first four)."""
    split = report["split"]
    if report["kind"] != "classifier":
        acc = "masked_token_accuracy" if "masked_token_accuracy" in report else "next_token_accuracy"
        return {f"{split}_ppl": round(report["perplexity"], 2), f"{split}_{acc.split('_')[0]}_acc": round(report[acc], 4),
                f"{split}_loss": round(report["loss"], 4), "examples_per_s": report["examples_per_s"]}
    m, b = report["model"], report["baseline"]
    return {f"{split}_macro_f1": round(m["macro_f1"], 4), "baseline_macro_f1": round(b["macro_f1"], 4),
            "vs_baseline": round(report["difference"]["macro_f1"], 4), f"{split}_acc": round(m["accuracy"], 4),
            "ece": round(m["ece"], 4), "examples_per_s": m["examples_per_s"]}


# -- the readable page ---------------------------------------------------------------------
def significance_markdown(sig: dict[str, Any]) -> list[str]:
    ci, test = sig["ci"], sig["mcnemar"]
    lines = ["", f"## Is the difference real? ({sig['level']:.0%} confidence intervals)", "",
             f"Paired bootstrap over the {sig['documents']:,} documents ({sig['resamples']:,} resamples, seed {sig['seed']}): "
             "the same documents are drawn for the model and the baseline.", "",
             "| figure | model | baseline | difference |", "| --- | ---: | ---: | ---: |"]
    for key, name in (("macro_f1", "macro f1"), ("accuracy", "accuracy")):
        lines.append(f"| {name} | {interval(ci['model'][key], False)} | {interval(ci['baseline'][key], False)} | "
                     f"{interval(ci['difference'][key])} |")
    lines += ["", f"McNemar's test ({test['method']}): {test['only_model_right']:,} documents only the model gets right, "
                  f"{test['only_baseline_right']:,} only the baseline; {p_value(test['p_value'])}. "
                  f"Outcome: **{sig['outcome']}**."]
    return lines



def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]|#"} | {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\n": " ", "\r": " "})


def md(text: object) -> str:
    """User data (a label, a warning naming labels) as literal Markdown text, fit for a table
    cell: a `|` would end the cell, HTML would be rendered, `*` or `_` would emphasise."""
    return str(text).translate(_MD_SPECIAL)


def render_markdown(report: dict[str, Any]) -> str:
    title = f"# Evaluation of `{report['run']}` on the {report['split']} split"
    if report["kind"] != "classifier":
        acc = "masked_token_accuracy" if "masked_token_accuracy" in report else "next_token_accuracy"
        lines = [title, "", f"A {report['objective']} language model; checkpoint `{report['checkpoint']}`.", "",
                 "| figure | value |", "| --- | ---: |",
                 f"| loss | {report['loss']:.4f} |", f"| perplexity | {report['perplexity']:.2f} |",
                 f"| {acc.replace('_', ' ')} | {report[acc]:.4f} |",
                 f"| blocks of {report['seq_len']} tokens | {report['blocks']:,} |",
                 f"| blocks per second | {report['examples_per_s']:,.1f} |", ""]
        return "\n".join(lines)
    m, b, d = report["model"], report["baseline"], report["difference"]
    lines = [title, "", f"**Verdict:** {report['verdict']}.", "",
             f"Checkpoint `{report['checkpoint']}`; {report['scored']:,} of {report['documents']:,} documents scored. "
             f"The baseline is TF-IDF (word 1-2 grams, plus character n-grams: 1-n for Chinese, char_wb 2-n inside words "
             f"elsewhere) + LogisticRegression with C = {b['C']} chosen on dev, trained on the same training split.", ""]
    for warning in report["warnings"]:
        lines += [f"> **Warning:** {md(warning)}", ""]
    lines += ["| metric | model | baseline | difference |", "| --- | ---: | ---: | ---: |"]
    for key in SCALARS:
        better = "lower is better" if key in LOWER_IS_BETTER else ""
        lines.append(f"| {key.replace('_', ' ')}{' (' + better + ')' if better else ''} | {_f(m[key])} | {_f(b[key])} | {d[key]:+.4f} |")
    lines.append(f"| examples per second | {m['examples_per_s']:,.1f} | {b['examples_per_s']:,.1f} | baseline {report['speed_ratio']:.2f}x |")
    if report.get("significance"):
        lines += significance_markdown(report["significance"])
    lines += ["", "## Per class", "", "| label | precision | recall | F1 | baseline F1 | support |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for ours, theirs in zip(m["per_class"], b["per_class"]):
        lines.append(f"| {md(ours['label'])} | {_f(ours['precision'])} | {_f(ours['recall'])} | {_f(ours['f1'])} | {_f(theirs['f1'])} | {ours['support']:,} |")
    labels = report["labels"]
    lines += ["", "## Confusion matrix (rows: gold, columns: predicted)", "",
              "| gold \\ predicted | " + " | ".join(md(label) for label in labels) + " |", "| --- |" + " ---: |" * len(labels)]
    for label, row in zip(labels, m["confusion"]):
        lines.append(f"| {md(label)} | " + " | ".join(f"{v:,}" for v in row) + " |")
    lines += ["", "![confusion matrices](confusion.png)", "", "## Calibration", "",
              f"Expected calibration error: model {m['ece']:.4f}, baseline {b['ece']:.4f} ({len(m['reliability'])} bins).", "",
              "![reliability diagram](calibration.png)", ""]
    return "\n".join(lines)
