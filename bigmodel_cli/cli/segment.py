from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bigmodel_cli.cli._util import CONFIG_OPTIONS, app, config_options, console, handle_errors, term_safe
from bigmodel_cli.workspace.config import SegmentConfig


@app.command("segment")
@handle_errors
@config_options(SegmentConfig)
def segment_cli(
    text: Optional[str] = typer.Argument(None, help="Text to segment.", show_default=False),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="File of raw lines to segment (one per line)."),
    gold: Optional[Path] = typer.Option(None, help="Gold segmentation, space-separated words per line: prints word precision, recall and F1."),
    options: dict = CONFIG_OPTIONS,
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="Use this workspace's segmentation settings."),
) -> None:
    """Show how a text is segmented, or score segmentation against a gold file.

    Inside a workspace the workspace's settings (language, segmenter, user dictionary) are
    used, so you can tune a user dictionary before running preprocess.

    [b]Examples[/b]:
      bigmodel segment "我爱自然语言处理"
      bigmodel segment --gold gold.txt --user-dict terms.txt   # raw text from the gold words
      bigmodel segment --input raw.txt --gold gold.txt
    """
    from bigmodel_cli.data.segment import run_segment

    # options not given are None: run_segment takes them from the workspace, else the defaults
    result = run_segment(text=text, input=input, gold=gold, workspace=workspace, **options)
    if result["scores"] is None:
        for tokens in result["segmented"]:
            console.print(term_safe(" / ".join(tokens)), soft_wrap=True, highlight=False)
        return
    s = result["scores"]
    console.print(f"[b]{s['sentences']:,}[/] sentences, {s['words_gold']:,} gold words, {s['words_predicted']:,} predicted "
                  f"({result['backend']}{', user dict' if result['user_dict'] else ''})")
    console.print(f"precision {s['precision']:.4f}   recall {s['recall']:.4f}   F1 [b]{s['f1']:.4f}[/]")
