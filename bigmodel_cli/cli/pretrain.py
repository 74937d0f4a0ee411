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
from bigmodel_cli.workspace.config import PretrainConfig


@app.command("pretrain")
@handle_errors
@config_options(PretrainConfig, config_only=("min_lr",))
def pretrain_cli(
    name: Optional[str] = typer.Option(None, help="Run name: runs/NAME/.  \\[default: the objective]", show_default=False),
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
    """Pretrain a Transformer from scratch on the processed corpus (masked or causal LM),
    or continue pretraining a run or a local Hugging Face BERT folder on it (--from).

    A run spends a compute budget (--budget, 10 minutes by default): the clock ends it and
    the learning rate decays to zero at the deadline, on a fast machine or a slow one. The
    options left at auto (--size, --dropout, --precision) are chosen from the budget, this
    machine's speed (a few timed steps at the start) and the corpus size; the choice and
    what it rests on are in runs/NAME/train.json. Any option you give wins.

    Writes runs/NAME/: checkpoints/step-N, last and best (safetensors), metrics.jsonl,
    loss.png, config.json, report.json. A killed run continues exactly with --resume auto.
    With --from the model's shape and tokenizer are the source's (the text is encoded with
    its vocabulary), while the optimizer and the learning-rate schedule start fresh.

    [b]Examples[/b]:
      bigmodel pretrain                                  # masked LM, 10 minutes, sized for them
      bigmodel pretrain --budget 2h                      # longer: more tokens, maybe a bigger model
      bigmodel pretrain --size tiny --budget 3m          # a quick one
      bigmodel pretrain --budget none --epochs 3         # counted in epochs instead of time
      bigmodel pretrain --objective clm --name gpt       # then: bigmodel generate 这家店 --run gpt
      bigmodel pretrain --dim 100 --heads 4 --init-embeddings word2vec
      bigmodel pretrain --resume auto                    # continue after a crash (the same clock)
      bigmodel pretrain --from mlm --name mlm-reviews    # continue run mlm on this workspace's text
      bigmodel pretrain --from ~/models/bert-base-chinese --seq-len 128   # domain-adaptive pretraining
      bigmodel pretrain --nproc 2                        # two processes (DDP) on this machine
      bigmodel pretrain --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --nproc 8
    """
    from bigmodel_cli.training.pretrain import resolve_config
    from bigmodel_cli.workspace.config import ProjectConfig, resolve

    ws = open_workspace(workspace)
    config = ws.config()
    project = resolve(ProjectConfig, config.get("project"), {"seed": seed})
    cfg = resolve_config(config.get("pretrain"), options)  # problems are reported before any launch
    launch_if_asked(nproc, nnodes, node_rank, master_addr, master_port)

    from bigmodel_cli.training.pretrain import pretrain
    from bigmodel_cli.training.run_setup import given_options

    main = is_main_process()
    result = pretrain(ws, cfg, name=name, seed=project.seed, resume=resume, force=force,
                      show_progress=main and err_console.is_terminal, console=err_console,
                      log_lines=main and not err_console.is_terminal, given=given_options(options, seed))
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
    if report.get("from"):
        f = report["from"]
        head = "its masked-LM head" if f.get("lm_head") != "new" else "a new masked-LM head"
        table.add_row("from", f"{escape(f['source'])} ({'run' if f['kind'] == 'run' else 'Hugging Face folder'}), "
                              f"with {head}; optimizer and schedule new")
    if report.get("auto"):
        a = report["auto"]
        chosen = ", ".join(f"{k} {v}" for k, v in a["chosen"].items()) or "nothing"
        speed = "; ".join(f"{size} {m['tokens_per_s']:,} tokens/s" for size, m in a.get("measured", {}).items())
        seen = f", {a['expected_passes']:g} passes over the corpus expected" if a.get("expected_passes") is not None else ""
        table.add_row("auto", f"{chosen}" + (f" (measured: {speed}{seen})" if speed else ""))
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
