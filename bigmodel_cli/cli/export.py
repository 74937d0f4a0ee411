from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from bigmodel_cli.cli._util import (
    CONFIG_OPTIONS,
    WorkspaceOption,
    app,
    config_options,
    console,
    handle_errors,
    open_workspace,
)
from bigmodel_cli.workspace.config import ExportConfig, resolve_checked


@app.command("export")
@handle_errors
@config_options(ExportConfig)
def export_cli(
    run: Optional[str] = typer.Argument(None, help="Run name (runs/NAME/).  \\[default: the latest run]", show_default=False),
    options: dict = CONFIG_OPTIONS,
    out: Optional[Path] = typer.Option(None, help="Output folder.  \\[default: exports/RUN-FORMAT/]", show_default=False),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Export a run for the rest of the ecosystem.

    --format hf writes config.json, model.safetensors, vocab.txt and tokenizer files that
    transformers loads as BertForMaskedLM, BertLMHeadModel or BertForSequenceClassification
    (with the label names), plus a README with the word-segmentation recipe: the vocabulary
    holds jieba words, which Hugging Face's BERT tokenizer does not produce by itself.
    --format onnx writes model.onnx (logits), checked against PyTorch with onnxruntime.

    [b]Examples[/b]:
      bigmodel export                                  # the latest run, Hugging Face format
      bigmodel export classifier --out ~/models/reviews-bert
      bigmodel export mlm --format onnx
    """
    from bigmodel_cli.inference.export import export

    fmt = resolve_checked(ExportConfig, None, options).fmt
    ws = open_workspace(workspace)
    result = export(ws, run, fmt, out)
    where = ws.relative(result.get("folder") or result["file"])
    if fmt == "hf":
        console.print(f"[green]✓[/] exported {escape(ws.relative(result['checkpoint']))} as {result['architecture']} to {escape(where)}/")
        console.print(f"  load: transformers.{result['architecture']}.from_pretrained({escape(repr(str(result['folder'])))})")
        if result.get("tokenizer"):
            console.print(f"  tokenise: transformers.AutoTokenizer.from_pretrained(...) on raw text ({result['tokenizer']} tokenizer.json)")
        else:
            console.print("  tokenise: words segmented as in training, joined by spaces (see README.md there)")
    else:
        check = {True: f"verified with onnxruntime (max |diff| {result.get('max_abs_diff', 0):.1e})",
                 None: "not verified: onnxruntime is not installed"}[result["verified"]]
        console.print(f"[green]✓[/] exported {escape(ws.relative(result['checkpoint']))} to {escape(where)}; {check}")
