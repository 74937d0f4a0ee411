from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from bigmodel_cli.cli._util import (
    CONFIG_OPTIONS,
    WorkspaceOption,
    app,
    config_options,
    console,
    err_console,
    handle_errors,
    open_workspace,
    print_skipped,
    term_safe,
)
from bigmodel_cli.workspace.config import ExplainConfig, resolve_checked


@app.command("explain")
@handle_errors
@config_options(ExplainConfig)
def explain_cli(
    text: Optional[str] = typer.Argument(None, help="Raw text to explain (cleaned and segmented as in training).", show_default=False),
    run: Optional[str] = typer.Option(None, help="A finetuned classifier or a causal pretrain run.  \\[default: the latest run]", show_default=False),
    target: Optional[str] = typer.Option(None, help="Label (classifier) or next word (causal) to explain.  \\[default: the prediction]", show_default=False),
    layer: Optional[int] = typer.Option(None, help="attention: only this layer (from 0).  \\[default: mean over layers]", show_default=False),
    head: Optional[int] = typer.Option(None, help="attention: only this head (from 0).  \\[default: mean over heads]", show_default=False),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Explain every text of this file (txt/jsonl/csv/tsv).", show_default=False),
    split: Optional[str] = typer.Option(None, help="Explain texts of a processed split (test, dev, train).", show_default=False),
    options: dict = CONFIG_OPTIONS,
    html: Optional[Path] = typer.Option(None, help="Write the HTML page to this file, or into this folder when it is one (as NAME.html).  \\[default: explanations/RUN/NAME.html]", show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print the scores as JSON lines, one object per text, on stdout (messages go to stderr)."),
    force: bool = typer.Option(False, "--force", "-f", help="Explain again even if the texts, options and checkpoint are unchanged."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Explain a prediction per word: attention, rollout, saliency, gradient x input and
    integrated gradients, with faithfulness scores against a random ranking.

    Texts are read as predict and evaluate read them (the run's max_len). Writes
    explanations/RUN/: an HTML page (self-contained: word heatmaps, and attention maps per
    layer over the 20 tokens that receive the most attention, per head too for one text),
    the scores as JSON lines, PNGs with --png, and with --faithfulness a table of
    comprehensiveness and sufficiency against 10 seeded random rankings (named by --removal).
    The same texts with the same options and checkpoint are not explained again (--force does).

    [b]Examples[/b]:
      bigmodel explain "房间很干净，服务也好"                 # the latest classifier, every method
      bigmodel explain "太吵了" --method ig --steps 100 --target neg
      bigmodel explain "房间不错" --method attention --layer 1 --head 0 --png
      bigmodel explain --split test --limit 200 --faithfulness
      bigmodel explain "这家酒店" --run gpt               # a causal run: why this next word
    """
    from bigmodel_cli.errors import UserError
    from bigmodel_cli.explain.explain import (
        explain,
        html_target,
        parse_methods,
        read_split_texts,
        split_path,
    )

    cfg = resolve_checked(ExplainConfig, None, options)
    limit, seed, faithfulness, removal = cfg.limit, cfg.seed, cfg.faithfulness, cfg.removal
    ws = open_workspace(workspace)
    methods = parse_methods(cfg.method)
    sources = [s for s in (text is not None, input is not None, split is not None) if s]
    if len(sources) != 1:
        raise UserError("give one of: TEXT, --input FILE or --split NAME", hint='e.g. bigmodel explain "房间很干净"')
    if text is not None:
        texts, note, stem = [text], "text", "text-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    elif split is not None:
        texts = read_split_texts(ws, split, limit or None, seed)
        note, stem = (f"split {split}, {len(texts)} drawn with seed {seed}", f"{split}-{limit}-seed{seed}") if limit \
            else (f"split {split}", f"{split}-all")
    else:
        texts, note, stem = _read_input(input, limit or None), str(input), f"{input.stem}-{limit or 'all'}"
    if faithfulness:
        stem += f"-faith-{removal}"
    if html is not None:
        html = html_target(html, stem)
    from rich.progress import Progress

    # the file the texts came from is hashed into the record: an edited file is explained again
    source_file = input if input is not None else (split_path(ws, split) if split is not None else None)
    warnings: list[str] = []
    with Progress(console=err_console, transient=True, disable=len(texts) < 2 or not err_console.is_terminal) as bar:
        task = bar.add_task("explaining", total=len(texts))
        result = explain(
            ws, texts, stem=stem, source=note, run=run, methods=methods, target=target, layer=layer, head=head,
            steps=cfg.steps, internal_batch_size=cfg.internal_batch_size, baseline=cfg.baseline, faithfulness=faithfulness,
            removal=removal, html_path=html, png=cfg.png,
            input_paths=(source_file,) if source_file is not None and source_file.is_file() else (),
            params={"seed": seed} if split is not None and limit else None, force=force,
            progress=lambda: bar.advance(task), warnings=warnings)
    # with --json, stdout holds the JSON lines alone (pipe it to jq); the rest goes to stderr
    out = err_console if json_out else console
    if result.skipped:
        _show_saved(ws, result, note, json_out, out)
        return
    results, faith, files = result.explanations, result.faithfulness, result.files
    if json_out:
        import sys

        from bigmodel_cli.fileio import json_line

        for exp in results:
            sys.stdout.write(json_line(exp.to_json()))
        sys.stdout.flush()
    else:
        for exp in results[:5]:
            print_explanation(exp)
        if len(results) > 5:
            console.print(f"  ... and {len(results) - 5} more in the files below")
    if faith:
        print_faithfulness(faith, removal, out)
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {term_safe(warning)}", soft_wrap=True)
    out.print("  written: " + ", ".join(f"{k} {term_safe(v)}" for k, v in files.items()), soft_wrap=True)


def _show_saved(ws, result, note: str, json_out: bool, out) -> None:
    """A skipped explain: the up-to-date line, and what the last run wrote (its JSON lines
    on stdout with --json, its faithfulness table)."""
    import json
    import sys

    files = result.files
    what = f"explain {result.folder.name} ({note})"
    if json_out:
        err_console.print(f"[green]✓[/] {term_safe(what)} is up to date (inputs and options unchanged since run "
                          f"{result.record['run_id']}); skipped. Use --force to run again.", soft_wrap=True)
        sys.stdout.write((ws.root / files["json"]).read_text(encoding="utf-8"))
        sys.stdout.flush()
    else:
        print_skipped(what, result.record)
    if files.get("faithfulness"):
        saved = json.loads((ws.root / files["faithfulness"]).read_text(encoding="utf-8"))
        print_faithfulness(saved["methods"], saved["removal"], out)
    out.print("  files: " + ", ".join(f"{k} {term_safe(v)}" for k, v in files.items()), soft_wrap=True)


def _read_input(path: Path, limit: int | None) -> list[str]:
    from bigmodel_cli.data.readers import read_texts

    return read_texts(path, limit)


def print_explanation(exp) -> None:
    from bigmodel_cli.explain.explanation import SIGNED
    from bigmodel_cli.explain.render import _scale

    main = "ig" if "ig" in exp.scores else next(iter(exp.scores))
    scale = _scale(exp.scores[main])
    shaded = []
    for word, score in zip(exp.words, exp.scores[main]):
        a = min(1.0, abs(score) / scale) if scale else 0.0
        positive = score >= 0 or main not in SIGNED
        r, g, b = (220, 38, 38) if positive else (37, 99, 235)
        mix = lambda c: int(255 - (255 - c) * a)  # noqa: E731
        space = "" if "\u4e00" <= word[:1] <= "\u9fff" else " "
        shaded.append(f"[black on rgb({mix(r)},{mix(g)},{mix(b)})]{term_safe(word)}[/]{space}")
    what = "label" if exp.kind == "classifier" else "next word"
    console.print(f"[bold]{what}[/]: {term_safe(exp.predicted)} (p={exp.probabilities[exp.predicted]:.3f}); "
                  f"explaining [bold]{term_safe(exp.target)}[/] (p={exp.probability:.3f}) by {main}")
    console.print("".join(shaded))
    pro, con = exp.top(main)
    console.print("  for:     " + ", ".join(f"{term_safe(w)} {s:+.3f}" for w, s in pro) if pro else "  for:     -")
    if main in SIGNED:
        console.print("  against: " + ", ".join(f"{term_safe(w)} {s:+.3f}" for w, s in con) if con else "  against: -")
    if exp.ig_delta is not None:
        console.print(f"  integrated gradients: {exp.ig_steps} steps, completeness gap {exp.ig_delta:.2e}")
    if any(exp.unknown):
        console.print(f"  [yellow]note[/]: {sum(exp.unknown)} word(s) outside the vocabulary were seen as \\[UNK]")
    for method, scores in exp.scores.items():
        top = sorted(zip(exp.words, scores), key=lambda p: -p[1])[:5]
        console.print(f"  {method:<10} top: " + ", ".join(f"{term_safe(w)} {s:.3f}" for w, s in top))


def print_faithfulness(table: dict, removal: str = "mask", out=console) -> None:
    draws = table.get("random", {}).get("draws", 1)
    t = Table(title=f"faithfulness (AOPC, top 10%..50% of words removed by --removal {removal}; "
                    f"random: mean of {draws} draws, 95% CI)")
    for col in ("method", "comprehensiveness ↑", "sufficiency ↓", "vs random"):
        t.add_column(col, justify="right" if col != "method" else "left")
    for method, e in table.items():
        verdict = "" if method == "random" else ("better" if e.get("beats_random") else "[bold red]NOT better than random[/]")
        comp, suff = f"{e['comprehensiveness']:.4f}", f"{e['sufficiency']:.4f}"
        if "comprehensiveness_ci95" in e:
            comp += " ({:.4f} to {:.4f})".format(*e["comprehensiveness_ci95"])
            suff += " ({:.4f} to {:.4f})".format(*e["sufficiency_ci95"])
        t.add_row(method, comp, suff, verdict)
    out.print(t)
