from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from bigmodel_cli.cli._util import (
    WorkspaceOption,
    app,
    console,
    err_console,
    handle_errors,
    open_workspace,
    term_safe,
)


@app.command("preprocess")
@handle_errors
def preprocess_cli(
    inputs: Optional[List[Path]] = typer.Argument(None, help="Files or folders (.txt .jsonl .csv .tsv, also .gz/.bz2/.xz). Default: the workspace's data/raw/.", show_default=False),
    train: Optional[Path] = typer.Option(None, help="Training file, kept as given (instead of splitting INPUTS)."),
    dev: Optional[Path] = typer.Option(None, help="Development file, kept as given."),
    test: Optional[Path] = typer.Option(None, help="Test file, kept as given."),
    text_field: Optional[str] = typer.Option(None, help="JSONL field / CSV column with the text.  \\[default: text]", show_default=False),
    label_field: Optional[str] = typer.Option(None, help="JSONL field / CSV column with the label (required when given).  \\[default: label, used if present]", show_default=False),
    split: Optional[str] = typer.Option(None, help="train,dev,test fractions; seeded, stratified by label.  \\[default: 0.8,0.1,0.1]", show_default=False),
    lang: Optional[str] = typer.Option(None, "--lang", "-l", help="zh, en or auto (per document).  \\[default: from bigmodel.toml]", show_default=False),
    fmt: Optional[str] = typer.Option(None, "--format", help="Read every input as txt, jsonl, csv or tsv whatever its extension."),
    encoding: Optional[str] = typer.Option(None, help="Input encoding.  \\[default: auto: UTF-8/UTF-16 BOM, else GB18030/Big5 detected]", show_default=False),
    nfkc: Optional[bool] = typer.Option(None, "--nfkc/--no-nfkc", help="Unicode NFKC (full-width to half-width).  \\[default: on]", show_default=False),
    strip_html: Optional[bool] = typer.Option(None, "--strip-html/--keep-html", help="Remove HTML tags and entities.  \\[default: on]", show_default=False),
    urls: Optional[str] = typer.Option(None, help="URLs: replace (by [URL]), remove or keep.  \\[default: replace]", show_default=False),
    emails: Optional[str] = typer.Option(None, help="E-mail addresses: replace (by [EMAIL]), remove or keep.  \\[default: replace]", show_default=False),
    lowercase: Optional[bool] = typer.Option(None, "--lowercase/--no-lowercase", help="Lower-case English words.  \\[default: off]", show_default=False),
    stem: Optional[bool] = typer.Option(None, "--stem/--no-stem", help="Porter-stem English words.  \\[default: off]", show_default=False),
    min_chars: Optional[int] = typer.Option(None, help="Drop documents shorter than this after cleaning.  \\[default: 1]", show_default=False),
    max_chars: Optional[int] = typer.Option(None, help="Drop documents longer than this many characters after cleaning (counted in the report as dropped; 0: no limit).  \\[default: 100000]", show_default=False),
    dedupe: Optional[bool] = typer.Option(None, "--dedupe/--no-dedupe", help="Drop exact duplicates after normalisation.  \\[default: on]", show_default=False),
    segmenter: Optional[str] = typer.Option(None, help="auto, jieba or jieba_next (same words as jieba, faster).  \\[default: auto]", show_default=False),
    hmm: Optional[bool] = typer.Option(None, "--hmm/--no-hmm", help="jieba's HMM for unknown words.  \\[default: on]", show_default=False),
    user_dict: Optional[Path] = typer.Option(None, help="jieba user dictionary (word [freq] [tag] per line)."),
    stopwords: Optional[str] = typer.Option(None, help="builtin, none, or a file; used by embeddings and the TF-IDF baseline, never by the Transformer.  \\[default: builtin]", show_default=False),
    min_count: Optional[int] = typer.Option(None, help="Vocabulary: minimum count in train.  \\[default: 2]", show_default=False),
    max_vocab: Optional[int] = typer.Option(None, help="Vocabulary: maximum size with special tokens (0: no limit).  \\[default: 30000]", show_default=False),
    pieces: Optional[bool] = typer.Option(None, "--pieces/--no-pieces", help="Vocabulary: add characters (c, ##c) so that rare words split into pieces instead of [UNK].  \\[default: off]", show_default=False),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Worker processes (0: one per core; at most twice the cores, and no more than the input's chunks of 256 documents).  \\[default: 0]", show_default=False),
    on_error: Optional[str] = typer.Option(None, help="Bad records: skip (into rejects.jsonl) or fail.  \\[default: skip]", show_default=False),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first bad record (same as --on-error fail)."),
    seed: Optional[int] = typer.Option(None, help="Seed for the split.  \\[default: from bigmodel.toml]", show_default=False),
    force: bool = typer.Option(False, "--force", "-f", help="Run even if inputs and options are unchanged."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Read, clean, de-duplicate, segment and split a corpus; build the vocabulary.

    Writes data/processed/ in the workspace: train/dev/test.jsonl (text, tokens, label),
    vocab.txt, stopwords.txt, report.json, and rejects.jsonl for bad records.

    [b]Examples[/b]:
      bigmodel preprocess reviews.txt                       # one document per line
      bigmodel preprocess reviews.csv --text-field review --label-field stars
      bigmodel preprocess --train train.jsonl --dev dev.jsonl --test test.jsonl
      bigmodel preprocess news/ --lang zh --user-dict terms.txt --workers 4
    """
    from bigmodel_cli.data.preprocess import preprocess
    from bigmodel_cli.workspace.config import PreprocessConfig, ProjectConfig, resolve

    ws = open_workspace(workspace)
    config = ws.config()
    project = resolve(ProjectConfig, config.get("project"), {"lang": lang, "seed": seed})
    overrides = dict(text_field=text_field, label_field=label_field, split=split, encoding=encoding, nfkc=nfkc,
                     strip_html=strip_html, urls=urls, emails=emails, lowercase=lowercase, stem=stem,
                     min_chars=min_chars, max_chars=max_chars, dedupe=dedupe, segmenter=segmenter, hmm=hmm,
                     user_dict=str(user_dict) if user_dict else None, stopwords=stopwords, min_count=min_count,
                     max_vocab=max_vocab, pieces=pieces, workers=workers, on_error="fail" if strict else on_error)
    cfg = resolve(PreprocessConfig, config.get("preprocess"), overrides)
    result = preprocess(ws, inputs or [], train=train, dev=dev, test=test, config=cfg, lang=project.lang,
                        seed=project.seed, fmt=fmt, label_required=label_field is not None, force=force,
                        show_progress=True, console=err_console)
    if result.skipped:
        console.print(f"[green]✓[/] preprocess is up to date (inputs and options unchanged since run "
                      f"{result.record['run_id']}); skipped. Use --force to run again.", soft_wrap=True)
        return
    print_report(result.report, ws.relative(result.out_dir))


def print_report(report: dict, out_dir: str) -> None:
    docs = report["documents"]
    table = Table(title="preprocess", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("documents", f"{docs['read']:,} read, {docs['kept']:,} kept, {docs['rejected']:,} rejected")
    if docs["dropped"]:
        table.add_row("dropped", term_safe(", ".join(f"{n:,} {r}" for r, n in docs["dropped"].items())))
    table.add_row("duplicates", f"{report['duplicates']:,} (label conflicts: {report['label_conflicts']['count']:,})")
    table.add_row("splits", "  ".join(f"{s} {n:,}" for s, n in report["splits"].items())
                  + ("  (as given)" if report["splits_given"] else ""))
    table.add_row("tokens", "  ".join(f"{s} {n:,}" for s, n in report["tokens"].items()))
    oov = report["oov_dev"]["token_rate"]
    unk = report["oov_dev"].get("unk_rate")
    pieces = f", {report['vocab_pieces']:,} of them character pieces" if report.get("vocab_pieces") else ""
    table.add_row("vocabulary", f"{report['vocab_size']:,}{pieces} (types in train {report['types_train']:,}; "
                  f"dev OOV {'n/a' if oov is None else f'{oov:.2%}'}"
                  + (f", [UNK] after pieces {unk:.2%}" if pieces and unk is not None else "") + ")")
    for kind in ("chars", "tokens"):
        p = report["lengths"][kind]
        if p:
            table.add_row(f"length ({kind})", f"median {p['p50']:,}  p90 {p['p90']:,}  p99 {p['p99']:,}  max {p['max']:,}")
    for split, counts in report["labels"].items():
        table.add_row(f"labels ({split})", term_safe("  ".join(f"{k} {v:,}" for k, v in counts.items())))
    table.add_row("top tokens", term_safe(" ".join(t for t, _ in report["top_tokens"][:12])))
    seg = report["segmenter"]
    table.add_row("segmenter", ", ".join(f"{k}={v}" for k, v in seg.items()))
    table.add_row("speed", f"{report['throughput']['docs_per_s']:,.0f} docs/s, {report['seconds']:.1f} s, "
                  f"{report['workers']} worker(s)")
    table.add_row("output", term_safe(out_dir))
    console.print(table)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {term_safe(warning)}", soft_wrap=True)
    if report["rejects"]["count"]:
        for where in report["rejects"]["first"][:3]:
            console.print(f"  rejected {term_safe(where)}", soft_wrap=True)
