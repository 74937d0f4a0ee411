from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from bigmodel_cli.cli._util import (
    CONFIG_OPTIONS,
    WorkspaceOption,
    app,
    config_options,
    err_console,
    handle_errors,
    open_workspace,
)
from bigmodel_cli.workspace.config import GenerateConfig, resolve_checked


@app.command("generate")
@handle_errors
@config_options(GenerateConfig)
def generate_cli(
    prompt: str = typer.Argument(..., help="The text to continue (raw: it is cleaned and segmented as in training)."),
    run: Optional[str] = typer.Option(None, help="A causal pretrain run (runs/NAME/).  \\[default: the latest pretrain run]", show_default=False),
    options: dict = CONFIG_OPTIONS,
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Continue a prompt with a causal language model (pretrain --objective clm).

    Prints the prompt and its continuation as one plain line on stdout (fit to pipe to a
    file); notes go to stderr.

    [b]Examples[/b]:
      bigmodel generate 这家酒店                        # the latest pretrain run
      bigmodel generate "The film" --run gpt --temperature 0 --max-tokens 20
      bigmodel generate 房间 --top-k 10 --top-p 0.9 --seed 7
    """
    from bigmodel_cli.inference.generate import generate

    cfg = resolve_checked(GenerateConfig, None, options)
    ws = open_workspace(workspace)
    result = generate(ws, prompt, run=run, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                      max_tokens=cfg.max_tokens, seed=cfg.seed)
    # the text is machine output: written as is, never wrapped (rich wraps at 80 columns in a pipe)
    sys.stdout.write(result.text + "\n")
    sys.stdout.flush()
    if not result.tokens:
        advice = "try a higher --temperature or another --seed" if cfg.temperature > 0 else "try --temperature 0.8"
        err_console.print(f"[yellow]note:[/] the model ended the text at once (its first word was the end of a document), "
                          f"so nothing was added to the prompt; {advice}, or pretrain longer", soft_wrap=True)
