from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bigmodel_cli.cli._util import app, console, handle_errors, term_safe


@app.command("segment")
@handle_errors
def segment_cli(
    text: Optional[str] = typer.Argument(None, help="Text to segment.", show_default=False),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="File of raw lines to segment (one per line)."),
    gold: Optional[Path] = typer.Option(None, help="Gold segmentation, space-separated words per line: prints word precision, recall and F1."),
    lang: Optional[str] = typer.Option(None, "--lang", "-l", help="zh, en or auto.  \\[default: workspace's, else auto]", show_default=False),
    segmenter: Optional[str] = typer.Option(None, help="auto, jieba or jieba_next.  \\[default: workspace's, else auto]", show_default=False),
    user_dict: Optional[Path] = typer.Option(None, help="jieba user dictionary to try."),
    hmm: Optional[bool] = typer.Option(None, "--hmm/--no-hmm", help="jieba's HMM for unknown words.  \\[default: on]", show_default=False),
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

    result = run_segment(text=text, input=input, gold=gold, lang=lang, segmenter=segmenter, user_dict=user_dict,
                         hmm=hmm, workspace=workspace)
    if result["scores"] is None:
        for tokens in result["segmented"]:
            console.print(term_safe(" / ".join(tokens)), soft_wrap=True, highlight=False)
        return
    s = result["scores"]
    console.print(f"[b]{s['sentences']:,}[/] sentences, {s['words_gold']:,} gold words, {s['words_predicted']:,} predicted "
                  f"({result['backend']}{', user dict' if result['user_dict'] else ''})")
    console.print(f"precision {s['precision']:.4f}   recall {s['recall']:.4f}   F1 [b]{s['f1']:.4f}[/]")
