from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bigmodel_cli.cli._util import (
    CONFIG_OPTIONS,
    WorkspaceOption,
    app,
    config_options,
    err_console,
    handle_errors,
    open_workspace,
    term_safe,
)
from bigmodel_cli.workspace.config import PredictConfig, resolve_checked


@app.command("predict")
@handle_errors
@config_options(PredictConfig)
def predict_cli(
    texts: Optional[List[str]] = typer.Argument(None, help="Raw texts to classify; - alone reads standard input.", show_default=False),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="A file (txt, jsonl, csv, tsv, also compressed; parquet, arrow) read as preprocess reads it; - for standard input.", show_default=False),
    run: Optional[str] = typer.Option(None, help="A finetune run (runs/NAME/).  \\[default: the newest finetune run]", show_default=False),
    options: dict = CONFIG_OPTIONS,
    fmt: Optional[str] = typer.Option(None, "--format", help="Read the input as txt, jsonl, csv, tsv, parquet or arrow whatever its name (standard input: txt).", show_default=False),
    text_field: Optional[str] = typer.Option(None, help="JSONL field / CSV column with the text.  \\[default: preprocess's text_field]", show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the JSONL here instead of standard output.", show_default=False),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Classify raw text with a finetuned run: JSONL with the label and class probabilities.

    Text is cleaned and segmented as the run's training data was (read from the run
    folder, never given by hand). One line out per document: text, label, score, probs
    (the --top-k most probable classes), and source (file:line) for files.

    [b]Examples[/b]:
      bigmodel predict 房间很干净，服务也好 "质量太差了"
      bigmodel predict --input reviews.csv --text-field review -o predictions.jsonl
      cat reviews.txt | bigmodel predict - --top-k 1
      bigmodel predict --input new.jsonl --run classifier-scratch
    """
    import contextlib
    import sys

    from bigmodel_cli.inference.predict import predict

    cfg = resolve_checked(PredictConfig, None, options)
    ws = open_workspace(workspace)
    texts = list(texts or [])
    if texts == ["-"] and input is None:
        texts, input = [], Path("-")
    from bigmodel_cli.fileio import atomic_write

    # --output appears whole or not at all (a failed run leaves an older file as it was)
    with (atomic_write(output) if output else contextlib.nullcontext(sys.stdout)) as handle:
        summary = predict(ws, texts, input_path=input, run=run, top_k=cfg.top_k, batch_size=cfg.batch_size, fmt=fmt,
                          text_field=text_field, out=handle, show_progress=input is not None and err_console.is_terminal,
                          console=err_console)
    if output or err_console.is_terminal:
        err_console.print(f"[green]✓[/] {summary.documents:,} document(s) classified by {term_safe(summary.run)} in "
                          f"{summary.seconds:.2f} s ({summary.docs_per_s:,.1f} docs/s)"
                          + (f"; written to {term_safe(str(output))}" if output else ""))
