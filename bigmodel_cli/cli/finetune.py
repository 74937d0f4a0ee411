from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from bigmodel_cli.cli._util import (
    MasterAddrOption,
    MasterPortOption,
    NnodesOption,
    NodeRankOption,
    NprocOption,
    WorkspaceOption,
    app,
    console,
    err_console,
    handle_errors,
    is_main_process,
    launch_if_asked,
    open_workspace,
    print_skipped,
)

_INT = "<int>"  # whole numbers read as text: '--epochs 1.5' gets a one-line error, not click's box


@app.command("finetune")
@handle_errors
def finetune_cli(
    from_run: Optional[str] = typer.Option(None, "--from", help="A pretrain run (runs/NAME/), latest, or scratch (no pretraining).  \\[default: latest]", show_default=False),
    name: Optional[str] = typer.Option(None, help="Run name: runs/NAME/.  \\[default: classifier, or classifier-scratch]", show_default=False),
    pooling: Optional[str] = typer.Option(None, help="cls (BERT's pooler over [CLS]) or mean (average of the tokens).  \\[default: cls]", show_default=False),
    dropout: Optional[float] = typer.Option(None, help="Dropout in the encoder and before the classifier.  \\[default: 0.1]", show_default=False),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate.  \\[default: 1e-4]", show_default=False),
    epochs: Optional[str] = typer.Option(None, metavar=_INT, help="Passes over the training split.  \\[default: 3]", show_default=False),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", "-b", metavar=_INT, help="Documents per step.  \\[default: 32]", show_default=False),
    balance: Optional[bool] = typer.Option(None, "--balance/--no-balance", help="Class weights (inverse frequency) for skewed labels.  \\[default: off]", show_default=False),
    warmup: Optional[float] = typer.Option(None, help="Warm-up: fraction of steps (<1) or steps.  \\[default: 0.06]", show_default=False),
    max_time: Optional[str] = typer.Option(None, help="Stop after this long, with a checkpoint: 90s, 10m, 2h.", show_default=False),
    freeze_embeddings: Optional[bool] = typer.Option(None, "--freeze-embeddings/--no-freeze-embeddings", help="Keep the embedding layer as pretrained.  \\[default: off]", show_default=False),
    rdrop: Optional[float] = typer.Option(None, help="R-Drop weight: each batch twice under different dropout, their predictions pulled together (KL). Steadier on small data; steps cost 2x.  \\[default: 0, off]", show_default=False),
    max_len: Optional[str] = typer.Option(None, metavar=_INT, help="Tokens per document with [CLS] and [SEP]; longer ones are cut.  \\[default: 128]", show_default=False),
    early_stopping: Optional[str] = typer.Option(None, metavar=_INT, help="Stop after N evaluations without a better dev macro-F1 (0: never).  \\[default: 2]", show_default=False),
    eval_every: Optional[str] = typer.Option(None, metavar=_INT, help="Evaluate on dev every N steps (0: each epoch's end).  \\[default: 0]", show_default=False),
    size: Optional[str] = typer.Option(None, help="--from scratch: tiny, small or base.  \\[default: small]", show_default=False),
    layers: Optional[str] = typer.Option(None, metavar=_INT, help="--from scratch: layers (overrides --size).", show_default=False),
    dim: Optional[str] = typer.Option(None, metavar=_INT, help="--from scratch: hidden width (overrides --size).", show_default=False),
    heads: Optional[str] = typer.Option(None, metavar=_INT, help="--from scratch: attention heads (overrides --size).", show_default=False),
    ffn: Optional[str] = typer.Option(None, metavar=_INT, help="--from scratch: feed-forward width (overrides --size).", show_default=False),
    accumulate: Optional[str] = typer.Option(None, metavar=_INT, help="Split each step's batch into this many parts.  \\[default: 1]", show_default=False),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay.  \\[default: 0.01]", show_default=False),
    clip: Optional[float] = typer.Option(None, help="Gradient-norm clipping (0: off).  \\[default: 1.0]", show_default=False),
    max_steps: Optional[str] = typer.Option(None, metavar=_INT, help="Stop after this many steps (0: by epochs).", show_default=False),
    precision: Optional[str] = typer.Option(None, help="32 or bf16-mixed.  \\[default: 32]", show_default=False),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model.  \\[default: off]", show_default=False),
    log_every: Optional[str] = typer.Option(None, metavar=_INT, help="Log metrics every N steps.  \\[default: 10]", show_default=False),
    checkpoint_every: Optional[str] = typer.Option(None, metavar=_INT, help="Checkpoint every N steps.  \\[default: 500]", show_default=False),
    keep: Optional[str] = typer.Option(None, metavar=_INT, help="Step checkpoints to keep (best always kept).  \\[default: 3]", show_default=False),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N or mps.  \\[default: auto]", show_default=False),
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
    """Train a text classifier on the labelled splits, from a pretrain run or from scratch.

    Labels are the ones preprocess recorded (binary or multi-class). The best checkpoint
    and early stopping follow dev macro-F1. Writes runs/NAME/ like pretrain: checkpoints/,
    metrics.jsonl, loss.png, config.json (with the labels), report.json.

    [b]Examples[/b]:
      bigmodel finetune                                   # from the latest pretrain run
      bigmodel finetune --from mlm --pooling mean --epochs 4
      bigmodel finetune --from scratch --size tiny        # the no-pretraining comparison
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
    overrides = dict(from_run=from_run, pooling=pooling, dropout=dropout, lr=lr, epochs=epochs, batch_size=batch_size,
                     balance=balance, warmup=warmup, max_time=max_time, freeze_embeddings=freeze_embeddings, rdrop=rdrop,
                     max_len=max_len, early_stopping=early_stopping, eval_every=eval_every, size=size, layers=layers,
                     dim=dim, heads=heads, ffn=ffn, accumulate=accumulate, weight_decay=weight_decay, clip=clip,
                     max_steps=max_steps, precision=precision, compile=compile, log_every=log_every,
                     checkpoint_every=checkpoint_every, keep=keep, device=device)
    cfg = resolve_config(config.get("finetune"), overrides)  # problems are reported before any launch
    launch_if_asked(nproc, nnodes, node_rank, master_addr, master_port)
    main = is_main_process()
    result = finetune(ws, cfg, name=name, seed=project.seed, resume=resume, force=force,
                      show_progress=main and err_console.is_terminal, console=err_console,
                      log_lines=main and not err_console.is_terminal, given=given_options(overrides, seed))
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
    if report.get("best"):
        b = report["best"]
        acc = f", accuracy {b['accuracy']:.1%}" if b.get("accuracy") is not None else ""
        table.add_row("best on dev", f"macro-F1 {b['macro_f1']:.4f}{acc} at step {b['step']:,}")
    table.add_row("checkpoint", escape(str(report.get("checkpoint"))))
    console.print(table)
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    console.print(f"  written to {escape(folder)}/; next: bigmodel evaluate {escape(report['name'])}")
