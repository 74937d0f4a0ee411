from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from bigmodel_cli.cli._util import (
    CONFIG_OPTIONS,
    WorkspaceOption,
    app,
    config_options,
    console,
    err_console,
    handle_errors,
    open_workspace,
    term_safe,
)
from bigmodel_cli.workspace.config import EvaluateConfig


@app.command("evaluate")
@handle_errors
@config_options(EvaluateConfig, config_only=("bins", "baseline_c", "baseline_char_ngrams", "baseline_char_wb", "baseline_stopwords",
                                               "bootstrap_resamples", "bootstrap_seed"))
def evaluate_cli(
    run: Optional[str] = typer.Argument(None, help="A run in runs/.  \\[default: the newest finetune run, else the newest pretrain run]", show_default=False),
    split: str = typer.Option("test", help="test or dev."),
    options: dict = CONFIG_OPTIONS,
    force: bool = typer.Option(False, "--force", "-f", help="Evaluate again even if nothing changed."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Score a run on the test (or dev) split, beside a TF-IDF + LogisticRegression baseline.

    Classifiers: accuracy, macro/micro/weighted precision, recall and F1, a per-class table,
    the confusion matrix, expected calibration error and examples per second, each next to
    the baseline's (trained on the same split, C chosen on dev, cached in reports/_baseline/);
    95% paired-bootstrap intervals of macro-F1 and accuracy for both and for the difference,
    McNemar's test, and a verdict: better, worse or no measurable difference.
    Pretrain runs: loss, perplexity and masked-token accuracy. Writes reports/RUN/SPLIT/:
    report.json, report.md, confusion.png, calibration.png.

    [b]Examples[/b]:
      bigmodel evaluate                          # the newest classifier on test
      bigmodel evaluate classifier --split dev
      bigmodel evaluate mlm                      # a pretrain run: perplexity, masked-token accuracy
    """
    from bigmodel_cli.evaluation.evaluate import evaluate, resolve_config

    ws = open_workspace(workspace)
    cfg = resolve_config(ws.config().get("evaluate"), options)
    result = evaluate(ws, run, split=split, cfg=cfg, force=force, show_progress=err_console.is_terminal, console=err_console)
    if result.skipped:
        console.print(f"[green]✓[/] evaluate {term_safe(result.name)} --split {result.split} is up to date "
                      f"(run {result.record['run_id']}); showing the saved report. Use --force to evaluate again.")
    print_report(result.report)
    console.print(f"  written to {term_safe(ws.relative(result.folder))}/ (report.json, report.md"
                  + (", confusion.png, calibration.png)" if result.report["kind"] == "classifier" else ")"))


def print_report(report: dict) -> None:
    if report["kind"] != "classifier":
        acc = "masked_token_accuracy" if "masked_token_accuracy" in report else "next_token_accuracy"
        table = Table(title=f"evaluate {term_safe(report['run'])} on {report['split']} ({report['objective']} language model)", show_header=False)
        table.add_row("perplexity", f"{report['perplexity']:.2f} (loss {report['loss']:.4f})")
        table.add_row(acc.replace("_", " "), f"{report[acc]:.2%}")
        table.add_row("speed", f"{report['examples_per_s']:,.1f} blocks/s, {report['tokens_per_s']:,.0f} tokens/s")
        console.print(table)
        return
    from bigmodel_cli.evaluation.evaluate import LOWER_IS_BETTER, SCALARS

    m, b, d = report["model"], report["baseline"], report["difference"]
    table = Table(title=f"evaluate {term_safe(report['run'])} on {report['split']} ({report['scored']:,} documents)")
    for column in ("metric", "model", "TF-IDF + LR", "difference"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key in SCALARS:
        good = d[key] < 0 if key in LOWER_IS_BETTER else d[key] > 0
        style = "green" if good else ("red" if d[key] != 0 else "")
        table.add_row(key.replace("_", " "), f"{m[key]:.4f}", f"{b[key]:.4f}", f"[{style}]{d[key]:+.4f}[/]" if style else f"{d[key]:+.4f}")
    table.add_row("examples/s", f"{m['examples_per_s']:,.1f}", f"{b['examples_per_s']:,.1f}", f"baseline {report['speed_ratio']:.2f}x")
    console.print(table)
    if report.get("significance"):
        print_significance(report["significance"])

    classes = Table(title="per class")
    for column in ("label", "precision", "recall", "F1", "baseline F1", "support"):
        classes.add_column(column, justify="left" if column == "label" else "right")
    for ours, theirs in zip(m["per_class"], b["per_class"]):
        classes.add_row(term_safe(ours["label"]), f"{ours['precision']:.4f}", f"{ours['recall']:.4f}", f"{ours['f1']:.4f}",
                        f"{theirs['f1']:.4f}", f"{ours['support']:,}")
    console.print(classes)

    confusion = Table(title="confusion matrix (rows: gold, columns: predicted)")
    confusion.add_column("gold \\ predicted")
    for label in report["labels"]:
        confusion.add_column(term_safe(label), justify="right")
    for label, row in zip(report["labels"], m["confusion"]):
        confusion.add_row(term_safe(label), *(f"{v:,}" for v in row))
    console.print(confusion)
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {term_safe(warning)}")
    outcome = report.get("significance", {}).get("outcome")
    colour = {"better": "green", "worse": "red"}.get(outcome, "yellow")
    console.print(f"[bold {colour}]verdict:[/] {term_safe(report['verdict'])}")


def print_significance(sig: dict) -> None:
    from bigmodel_cli.evaluation.evaluate import interval, p_value

    ci, test = sig["ci"], sig["mcnemar"]
    table = Table(title=f"{sig['level']:.0%} confidence intervals (paired bootstrap, {sig['resamples']:,} resamples, seed {sig['seed']})")
    for column in ("metric", "model", "TF-IDF + LR", "difference"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key in ("macro_f1", "accuracy"):
        table.add_row(key.replace("_", " "), interval(ci["model"][key], False), interval(ci["baseline"][key], False),
                      interval(ci["difference"][key]))
    console.print(table)
    console.print(f"  McNemar's test ({test['method']}): {test['only_model_right']:,} documents only the model gets right, "
                  f"{test['only_baseline_right']:,} only the baseline; {p_value(test['p_value'])}")
