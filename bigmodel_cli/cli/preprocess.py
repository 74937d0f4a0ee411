from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import List, Optional

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
    term_safe,
)
from bigmodel_cli.errors import UserError
from bigmodel_cli.workspace.config import PreprocessConfig


@app.command("preprocess")
@handle_errors
@config_options(PreprocessConfig)
def preprocess_cli(
    inputs: Optional[List[Path]] = typer.Argument(None, help="Files or folders (.txt .jsonl .csv .tsv, also .gz/.bz2/.xz; .parquet .arrow; a folder saved by Hugging Face datasets, a DatasetDict giving train/dev/test). Default: the workspace's data/raw/.", show_default=False),
    train: Optional[Path] = typer.Option(None, help="Training file, kept as given (instead of splitting INPUTS)."),
    dev: Optional[Path] = typer.Option(None, help="Development file, kept as given."),
    test: Optional[Path] = typer.Option(None, help="Test file, kept as given."),
    lang: Optional[str] = typer.Option(None, "--lang", "-l", help="zh, en or auto (per document).  \\[default: from bigmodel.toml]", show_default=False),
    fmt: Optional[str] = typer.Option(None, "--format", help="Read every input as txt, jsonl, csv, tsv, parquet or arrow whatever its extension."),
    dataset: Optional[str] = typer.Option(None, "--as", help="Write the dataset data/NAME/ (e.g. an unlabelled pretraining corpus beside a labelled task) instead of data/processed/; other commands take it with --data NAME.", show_default=False),
    options: dict = CONFIG_OPTIONS,
    strict: bool = typer.Option(False, "--strict", help="Fail on the first bad record (same as --on-error fail)."),
    seed: Optional[int] = typer.Option(None, help="Seed for the split.  \\[default: from bigmodel.toml]", show_default=False),
    force: bool = typer.Option(False, "--force", "-f", help="Run even if inputs and options are unchanged."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: clean and segment only the K-th of N parts of the documents, into .bigmodel/shards/ (any scheduler can run the N parts, on any machines); then --merge N. See docs/preprocess.md.", show_default=False),
    merge: Optional[int] = typer.Option(None, "--merge", help="N: make the dataset from the N shards (--shard 1/N ... N/N, same inputs and options), byte for byte what one run without shards writes.", show_default=False),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Read, clean, de-duplicate, segment and split a corpus; build the vocabulary.

    Writes data/processed/ in the workspace (data/NAME/ with --as NAME):
    train/dev/test.parquet (text, tokens, label), vocab.txt, stopwords.txt, report.json, and
    rejects.jsonl for bad records.

    [b]Examples[/b]:
      bigmodel preprocess reviews.txt                       # one document per line
      bigmodel preprocess reviews.csv --text-field review --label-field stars
      bigmodel preprocess --train train.jsonl --dev dev.jsonl --test test.jsonl
      bigmodel preprocess news/ --lang zh --user-dict terms.txt --workers 4
      bigmodel preprocess wiki/ --as corpus --tokenizer char   # then: pretrain --data corpus
      bigmodel preprocess wiki/ --as corpus --shard 2/4      # one of 4 parts; then --merge 4
    """
    from bigmodel_cli.data.preprocess import prepare, resolve_config, run_prepared
    from bigmodel_cli.workspace.config import ProjectConfig, resolve

    part = _check_shard_options(shard, merge)
    ws = open_workspace(workspace)
    config = ws.config()
    project = resolve(ProjectConfig, config.get("project"), {"lang": lang, "seed": seed})
    if strict:
        options["on_error"] = "fail"
    cfg = resolve_config(config.get("preprocess"), options, project.lang, inputs or [], {"train": train, "dev": dev, "test": test})
    job = prepare(ws, inputs or [], train=train, dev=dev, test=test, config=cfg, lang=project.lang, seed=project.seed,
                  fmt=fmt, label_required=options["label_field"] is not None, dataset=dataset)
    if part is not None:
        _run_shard(ws, job, *part, force=force, dataset=dataset)
        return
    if merge is not None:
        from bigmodel_cli.data.shards import merge_shards

        result = merge_shards(ws, job, merge, force=force, show_progress=True, console=err_console,
                              command=_shard_command(merge, inputs or [], dataset))
    else:
        result = run_prepared(ws, job, force=force, show_progress=True, console=err_console)
    if result.skipped:
        console.print(f"[green]✓[/] preprocess{' --as ' + dataset if dataset else ''} is up to date (inputs and options unchanged since run "
                      f"{result.record['run_id']}); skipped. Use --force to run again.", soft_wrap=True)
        return
    print_report(result.report, ws.relative(result.out_dir))


def _check_shard_options(shard: str | None, merge: int | None) -> tuple[int, int] | None:
    """(K, N) of --shard; a mistake in --shard or --merge before anything is read."""
    if shard is not None and merge is not None:
        raise UserError("--shard and --merge are two steps: run each --shard K/N first, then --merge N alone")
    if merge is not None and merge < 1:
        raise UserError(f"--merge takes the number of shards, 1 or more, got {merge}")
    if shard is None:
        return None
    from bigmodel_cli.data.shards import parse_shard

    return parse_shard(shard)


def _run_shard(ws, job, k: int, n: int, *, force: bool, dataset: str | None) -> None:
    from bigmodel_cli.data.shards import run_shard

    result = run_shard(ws, job, k, n, force=force)
    where = term_safe(ws.relative(result.folder))
    if result.skipped:
        console.print(f"[green]✓[/] shard {k}/{n} is up to date in {where} (inputs and options unchanged); skipped. "
                      "Use --force to run again.", soft_wrap=True)
    else:
        console.print(f"[green]✓[/] shard {k}/{n}: {result.mine:,} of {result.documents:,} documents cleaned and "
                      f"segmented into {where}", soft_wrap=True)
    console.print(f"when all {n} shards are done: bigmodel preprocess ...the same inputs and options... --merge {n}",
                  soft_wrap=True)


def _shard_command(n: int, inputs: list[Path], dataset: str | None) -> str:
    """The command that makes shard {k}: this one with --shard {k}/N for --merge N (from the
    command line as typed, when this process was started by it)."""
    argv = sys.argv[1:]
    if argv[:1] == ["preprocess"] and ("--merge" in argv or any(a.startswith("--merge=") for a in argv)):
        out, skip = ["bigmodel"], False
        for arg in argv:
            if skip:
                skip = False
            elif arg == "--merge":
                skip = True
            elif not arg.startswith("--merge="):
                out.append(arg)
        return shlex.join(out).replace("{", "{{").replace("}", "}}") + f" --shard {{k}}/{n}"
    named = shlex.join(["bigmodel", "preprocess", *map(str, inputs), *(["--as", dataset] if dataset else [])])
    return named.replace("{", "{{").replace("}", "}}") + f" [this merge's options] --shard {{k}}/{n}"


def print_report(report: dict, out_dir: str) -> None:
    docs = report["documents"]
    table = Table(title="preprocess", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("documents", f"{docs['read']:,} read, {docs['kept']:,} kept, {docs['rejected']:,} rejected")
    if docs["dropped"]:
        table.add_row("dropped", term_safe(", ".join(f"{n:,} {r}" for r, n in docs["dropped"].items())))
    table.add_row("duplicates", f"{report['duplicates']:,} (label conflicts: {report['label_conflicts']['count']:,})")
    near = report.get("near_duplicates", {})
    if near.get("threshold"):
        table.add_row("near duplicates", f"{near['count']:,} (similarity {near['threshold']:g} or more to an earlier kept document)")
    languages = report.get("language_filter", {})
    if languages.get("langs"):
        dropped = ", ".join(f"{lang} {n:,}" for lang, n in languages["dropped"].items()) or "none"
        table.add_row("languages", f"kept {', '.join(languages['langs'])}; dropped {dropped}")
    table.add_row("splits", "  ".join(f"{s} {n:,}" for s, n in report["splits"].items())
                  + ("  (as given)" if report["splits_given"] else ""))
    table.add_row("tokens", "  ".join(f"{s} {n:,}" for s, n in report["tokens"].items()))
    oov = report["oov_dev"]["token_rate"]
    unk = report["oov_dev"].get("unk_rate")
    pieces = f", {report['vocab_pieces']:,} of them character pieces" if report.get("vocab_pieces") else ""
    if report.get("tokenizer"):  # the tokens counted above are the segmenter's words
        table.add_row("vocabulary", f"{report['vocab_size']:,} {report['tokenizer']['kind']} tokens, tokenizer.json "
                      f"(dev [UNK] {'n/a' if unk is None else f'{unk:.2%}'})")
    else:
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
                  f"{report['workers']} worker(s)" + (f", merged from {report['shards']} shards" if report.get("shards") else ""))
    table.add_row("output", term_safe(out_dir))
    console.print(table)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {term_safe(warning)}", soft_wrap=True)
    if report["rejects"]["count"]:
        for where in report["rejects"]["first"][:3]:
            console.print(f"  rejected {term_safe(where)}", soft_wrap=True)
