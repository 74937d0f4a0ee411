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

_INT = "<int>"  # whole numbers read as text: '--dim 1.5' gets a one-line error, not click's box


@app.command("pretrain")
@handle_errors
def pretrain_cli(
    objective: Optional[str] = typer.Option(None, help="mlm (masked, BERT) or clm (causal, next word).  \\[default: mlm]", show_default=False),
    name: Optional[str] = typer.Option(None, help="Run name: runs/NAME/.  \\[default: the objective]", show_default=False),
    size: Optional[str] = typer.Option(None, help="tiny (2x128), small (4x256) or base (12x768).  \\[default: small]", show_default=False),
    layers: Optional[str] = typer.Option(None, metavar=_INT, help="Layers (overrides --size).", show_default=False),
    dim: Optional[str] = typer.Option(None, metavar=_INT, help="Hidden width (overrides --size).", show_default=False),
    heads: Optional[str] = typer.Option(None, metavar=_INT, help="Attention heads, dividing --dim (overrides --size).", show_default=False),
    ffn: Optional[str] = typer.Option(None, metavar=_INT, help="Feed-forward width (overrides --size).", show_default=False),
    seq_len: Optional[str] = typer.Option(None, metavar=_INT, help="Tokens per block.  \\[default: 128]", show_default=False),
    max_positions: Optional[str] = typer.Option(None, metavar=_INT, help="Position table size (>= --seq-len).  \\[default: 512]", show_default=False),
    dropout: Optional[float] = typer.Option(None, help="Dropout.  \\[default: 0.1]", show_default=False),
    mask_prob: Optional[float] = typer.Option(None, help="mlm: share of tokens predicted.  \\[default: 0.15]", show_default=False),
    init_embeddings: Optional[str] = typer.Option(None, help="Start the token embeddings from this embed run (embeddings/NAME/).", show_default=False),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", "-b", metavar=_INT, help="Sequences per step, all processes together.  \\[default: 32]", show_default=False),
    accumulate: Optional[str] = typer.Option(None, metavar=_INT, help="Split each step's batch into this many parts.  \\[default: 1]", show_default=False),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate.  \\[default: 5e-4]", show_default=False),
    warmup: Optional[float] = typer.Option(None, help="Warm-up: fraction of steps (<1) or steps.  \\[default: 0.06]", show_default=False),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay.  \\[default: 0.01]", show_default=False),
    clip: Optional[float] = typer.Option(None, help="Gradient-norm clipping (0: off).  \\[default: 1.0]", show_default=False),
    epochs: Optional[str] = typer.Option(None, metavar=_INT, help="Passes over the data.  \\[default: 3]", show_default=False),
    max_steps: Optional[str] = typer.Option(None, metavar=_INT, help="Stop after this many steps (0: by epochs).", show_default=False),
    max_time: Optional[str] = typer.Option(None, help="Stop after this long, with a checkpoint: 90s, 10m, 2h.", show_default=False),
    precision: Optional[str] = typer.Option(None, help="32 or bf16-mixed.  \\[default: 32]", show_default=False),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model.  \\[default: off]", show_default=False),
    eval_every: Optional[str] = typer.Option(None, metavar=_INT, help="Evaluate on dev every N steps.  \\[default: 200]", show_default=False),
    eval_batches: Optional[str] = typer.Option(None, metavar=_INT, help="Dev batches per evaluation (0: all).  \\[default: 20]", show_default=False),
    log_every: Optional[str] = typer.Option(None, metavar=_INT, help="Log metrics every N steps.  \\[default: 10]", show_default=False),
    checkpoint_every: Optional[str] = typer.Option(None, metavar=_INT, help="Checkpoint every N steps.  \\[default: 500]", show_default=False),
    keep: Optional[str] = typer.Option(None, metavar=_INT, help="Step checkpoints to keep (best always kept).  \\[default: 3]", show_default=False),
    early_stopping: Optional[str] = typer.Option(None, metavar=_INT, help="Stop after N evaluations without a better dev loss (0: never).", show_default=False),
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
    """Pretrain a Transformer from scratch on the processed corpus (masked or causal LM).

    Writes runs/NAME/: checkpoints/step-N, last and best (safetensors), metrics.jsonl,
    loss.png, config.json, report.json. A killed run continues exactly with --resume auto.

    [b]Examples[/b]:
      bigmodel pretrain                                  # small BERT, masked LM
      bigmodel pretrain --size tiny --max-time 5m        # a quick one
      bigmodel pretrain --objective clm --name gpt       # then: bigmodel generate 这家店 --run gpt
      bigmodel pretrain --dim 100 --heads 4 --init-embeddings word2vec
      bigmodel pretrain --resume auto                    # continue after a crash or --max-time
      bigmodel pretrain --nproc 2                        # two processes (DDP) on this machine
      bigmodel pretrain --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --nproc 8
    """
    from bigmodel_cli.training.pretrain import resolve_config
    from bigmodel_cli.workspace.config import ProjectConfig, resolve

    ws = open_workspace(workspace)
    config = ws.config()
    project = resolve(ProjectConfig, config.get("project"), {"seed": seed})
    overrides = dict(objective=objective, size=size, layers=layers, dim=dim, heads=heads, ffn=ffn, seq_len=seq_len,
                     max_positions=max_positions, dropout=dropout, mask_prob=mask_prob, weight_decay=weight_decay,
                     clip=clip, eval_batches=eval_batches, log_every=log_every,
                     init_embeddings=init_embeddings, batch_size=batch_size, accumulate=accumulate, lr=lr, warmup=warmup,
                     epochs=epochs, max_steps=max_steps, max_time=max_time, precision=precision, compile=compile,
                     eval_every=eval_every, checkpoint_every=checkpoint_every, keep=keep, early_stopping=early_stopping,
                     device=device)
    cfg = resolve_config(config.get("pretrain"), overrides)  # problems are reported before any launch
    launch_if_asked(nproc, nnodes, node_rank, master_addr, master_port)

    from bigmodel_cli.training.pretrain import pretrain
    from bigmodel_cli.training.run_setup import given_options

    main = is_main_process()
    result = pretrain(ws, cfg, name=name, seed=project.seed, resume=resume, force=force,
                      show_progress=main and err_console.is_terminal, console=err_console,
                      log_lines=main and not err_console.is_terminal, given=given_options(overrides, seed))
    if not main:
        return
    if result.skipped:
        print_skipped(f"pretrain {result.name}", result.record, " or --resume auto to continue")
        return
    print_report(result.report, ws.relative(result.folder))


def print_report(report: dict, folder: str) -> None:
    m = report["model"]
    table = Table(title=f"pretrain {escape(report['name'])} ({report['objective']})", show_header=False)
    table.add_row("model", f"{m['layers']} layers x {m['dim']}, {m['heads']} heads, ffn {m['ffn']}, "
                           f"vocab {m['vocab_size']:,}; {report['parameters']:,} parameters")
    table.add_row("data", f"{report['data']['train_blocks']:,} train blocks of {report['data']['seq_len']}, "
                          f"{report['data']['dev_blocks']:,} dev blocks")
    if report.get("init_embeddings"):
        e = report["init_embeddings"]
        table.add_row("embeddings", f"from {escape(e['name'])}: {e['covered']:,} of {e['words']:,} words ({e['coverage']:.1%})")
    table.add_row("trained", f"{report['steps']:,} steps ({report['epochs']:.2f} epochs), {report['tokens']:,} tokens, "
                             f"{report['seconds']:.1f} s, {report['tokens_per_s']:,.0f} tokens/s; stopped: {report['stop_reason']}")
    if report.get("train_loss") is not None:
        table.add_row("train loss", f"{report['train_loss']:.4f}")
    if report.get("dev"):
        d = report["dev"]
        table.add_row("dev", f"loss {d['loss']:.4f}, perplexity {d['perplexity']:.1f}, "
                             f"{'masked' if report['objective'] == 'mlm' else 'next'}-token accuracy {d['accuracy']:.1%}")
    table.add_row("checkpoint", escape(str(report.get("checkpoint"))))
    console.print(table)
    console.print(f"  written to {escape(folder)}/ (metrics.jsonl, loss.png, checkpoints/)")
