from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from bigmodel_cli.cli._util import (
    WorkspaceOption,
    app,
    err_console,
    handle_errors,
    open_workspace,
)


@app.command("generate")
@handle_errors
def generate_cli(
    prompt: str = typer.Argument(..., help="The text to continue (raw: it is cleaned and segmented as in training)."),
    run: Optional[str] = typer.Option(None, help="A causal pretrain run (runs/NAME/).  \\[default: the latest pretrain run]", show_default=False),
    temperature: float = typer.Option(0.8, help="Sampling temperature; 0 is greedy."),
    top_k: int = typer.Option(50, help="Sample among the k most likely words (0: all)."),
    top_p: float = typer.Option(0.95, help="Sample among the most likely words covering this probability."),
    max_tokens: int = typer.Option(50, help="Words to add at most (stops earlier at the end of a document)."),
    seed: int = typer.Option(42, help="Seed: the same seed gives the same text."),
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

    ws = open_workspace(workspace)
    result = generate(ws, prompt, run=run, temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=max_tokens, seed=seed)
    # the text is machine output: written as is, never wrapped (rich wraps at 80 columns in a pipe)
    sys.stdout.write(result.text + "\n")
    sys.stdout.flush()
    if not result.tokens:
        advice = "try a higher --temperature or another --seed" if temperature > 0 else "try --temperature 0.8"
        err_console.print(f"[yellow]note:[/] the model ended the text at once (its first word was the end of a document), "
                          f"so nothing was added to the prompt; {advice}, or pretrain longer", soft_wrap=True)
