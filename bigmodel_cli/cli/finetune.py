from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from bigmodel_cli.cli._util import (
    CONFIG_OPTIONS,
    MasterAddrOption,
    MasterPortOption,
    NnodesOption,
    NodeRankOption,
    NprocOption,
    WorkspaceOption,
    app,
    config_options,
    console,
    err_console,
    handle_errors,
    is_main_process,
    launch_if_asked,
    open_workspace,
    print_skipped,
)
from bigmodel_cli.workspace.config import FinetuneConfig


@app.command("finetune")
@handle_errors
@config_options(FinetuneConfig, config_only=("min_lr", "eval_batches"))
def finetune_cli(
    name: Optional[str] = typer.Option(None, help="Run name: runs/NAME/.  \\[default: classifier, or classifier-scratch]", show_default=False),
    options: dict = CONFIG_OPTIONS,
    resume: Optional[str] = typer.Option(None, help="auto (the run's last checkpoint) or a checkpoint folder.", show_default=False),
    nproc: int = NprocOption,
    nnodes: int = NnodesOption,
    node_rank: int = NodeRankOption,
    master_addr: Optional[str] = MasterAddrOption,
    master_port: Optional[int] = MasterPortOption,
    seed: Optional[int] = typer.Option(None, help="Seed.  \\[default: from bigmodel.toml]", show_default=False),
    force: bool = typer.Option(False, "--force", "-f", help="Start over even if the run exists or is up to date."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Train a text classifier on the labelled splits, from a pretrain run, a local Hugging Face BERT folder or from scratch.

    Labels are the ones preprocess recorded (binary or multi-class). Unless --lr is given,
    each rate of --lr-grid trains --grid-steps (one epoch) and the best on dev macro-F1
    trains the run. The best checkpoint and early stopping follow dev macro-F1. Writes
    runs/NAME/ like pretrain: checkpoints/, metrics.jsonl, loss.png, config.json (with the
    labels), report.json, and grid.json (the rates tried and the one chosen).

    [b]Examples[/b]:
      bigmodel finetune                                   # from the latest pretrain run
      bigmodel finetune --from mlm --pooling mean --epochs 4
      bigmodel finetune --from scratch --size tiny        # the no-pretraining comparison
      bigmodel finetune --from ~/models/bert-base-chinese # a local Hugging Face BERT folder
      bigmodel finetune --lr-grid 1e-3,3e-4,1e-4         # the rates tried on dev (--lr 0, the default)
      bigmodel finetune --balance --lr 5e-5 --max-time 10m
      bigmodel finetune --resume auto                     # continue after a crash or --max-time
      bigmodel finetune --nproc 2                         # two processes (DDP), same global batch
    """
    from bigmodel_cli.training.finetune import finetune, resolve_config
    from bigmodel_cli.training.run_setup import given_options
    from bigmodel_cli.workspace.config import ProjectConfig, resolve

    ws = open_workspace(workspace)
    config = ws.config()
    project = resolve(ProjectConfig, config.get("project"), {"seed": seed})
    cfg = resolve_config(config.get("finetune"), options)  # problems are reported before any launch
    launch_if_asked(nproc, nnodes, node_rank, master_addr, master_port)
    main = is_main_process()
    result = finetune(ws, cfg, name=name, seed=project.seed, resume=resume, force=force,
                      show_progress=main and err_console.is_terminal, console=err_console,
                      log_lines=main and not err_console.is_terminal, given=given_options(options, seed))
    if not main:
        return
    if result.skipped:
        print_skipped(f"finetune {result.name}", result.record, " or --resume auto to continue")
        return
    print_report(result.report, ws.relative(result.folder))


def print_report(report: dict, folder: str) -> None:
    m = report["model"]
    table = Table(title=f"finetune {escape(report['name'])} (from {escape(report['base'])})", show_header=False)
    table.add_row("model", f"{m['layers']} layers x {m['dim']}, {m['pooling']} pooling, {m['num_labels']} classes; "
                           f"{report['trainable_parameters']:,} of {report['parameters']:,} parameters trained")
    if report.get("init"):
        table.add_row("new weights", escape(", ".join(report["init"]["new"]) or "none"))
    classes = ", ".join(f"{escape(k)} {v:,}" for k, v in report["data"]["train_classes"].items())
    table.add_row("data", f"{report['data']['train']:,} train ({classes}), {report['data']['dev']:,} dev; "
                          f"{report['data']['truncated']:,} cut at {report['data']['max_len']} tokens")
    if report.get("class_weights"):
        table.add_row("class weights", ", ".join(f"{escape(k)} {v:g}" for k, v in report["class_weights"].items()))
    table.add_row("trained", f"{report['steps']:,} steps ({report['epochs']:.2f} epochs), {report['seconds']:.1f} s, "
                             f"{report['tokens_per_s']:,.0f} tokens/s; stopped: {report['stop_reason']}")
    search = report.get("lr_search") or {}
    if search:
        table.add_row("learning rate", escape(lr_line(report["lr"], search)))
    if report.get("best"):
        b = report["best"]
        acc = f", accuracy {b['accuracy']:.1%}" if b.get("accuracy") is not None else ""
        table.add_row("best on dev", f"macro-F1 {b['macro_f1']:.4f}{acc} at step {b['step']:,}")
    table.add_row("checkpoint", escape(str(report.get("checkpoint"))))
    console.print(table)
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    console.print(f"  written to {escape(folder)}/; next: bigmodel evaluate {escape(report['name'])}")


def lr_line(lr: float, search: dict) -> str:
    """The rate and how it was chosen: given, on dev (each candidate's score) or the fallback."""
    if search.get("chosen") == "dev":
        tried = ", ".join(f"{t['lr']:g} {t['dev_macro_f1']:.4f}" for t in search["trials"])
        return f"{lr:g}, chosen on dev (macro-F1 after {search['steps']:,} steps: {tried})"
    if search.get("chosen") == "given":
        return f"{lr:g} (--lr)"
    return f"{lr:g}, {search.get('chosen')}"
