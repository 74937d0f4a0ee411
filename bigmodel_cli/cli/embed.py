from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
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
)
from bigmodel_cli.workspace.config import EmbedConfig

embed_app = typer.Typer(rich_markup_mode="rich", context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(embed_app, name="embed")


@embed_app.callback(invoke_without_command=True)
@handle_errors
@config_options(EmbedConfig, config_only=("glove_window", "glove_epochs"))  # --window and --epochs set them for glove
def embed_cli(
    ctx: typer.Context,
    name: Optional[str] = typer.Option(None, help="Name of the run: embeddings/NAME/.  \\[default: the method]", show_default=False),
    options: dict = CONFIG_OPTIONS,
    seed: Optional[int] = typer.Option(None, help="Seed.  \\[default: from bigmodel.toml]", show_default=False),
    force: bool = typer.Option(False, "--force", "-f", help="Run even if inputs and options are unchanged."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Train word embeddings on the processed training split; evaluate and export them.

    Writes embeddings/NAME/: vectors.kv (gensim KeyedVectors), vectors.safetensors and
    vectors.json (what bigmodel reads; for fasttext also the n-grams), vectors.txt or
    vectors.bin (word2vec format), config.json, losses.json, evaluation.json, report.json.

    [b]Examples[/b]:
      bigmodel embed                              # word2vec skip-gram, 100 dims
      bigmodel embed --method fasttext --cbow --dim 200 --name ft200
      bigmodel embed --method fasttext --buckets 200000 --min-n 1 --max-n 4
      bigmodel embed --method glove --window 10 --epochs 25 --x-max 100
      bigmodel embed --pairs wordsim353.tsv --probe 手机 --probe 电池
      bigmodel embed evaluate w2v --pairs wordsim353.tsv
      bigmodel embed neighbors 手机 --name w2v
    """
    if ctx.invoked_subcommand is not None:
        return
    from bigmodel_cli.embeddings.embed import resolve_config
    from bigmodel_cli.workspace.config import ProjectConfig, resolve

    ws = open_workspace(workspace)
    config = ws.config()
    project = resolve(ProjectConfig, config.get("project"), {"seed": seed})
    for key in ("analogies", "pairs"):  # files named on the command line are relative to where it runs
        options[key] = str(Path(options[key]).resolve()) if options[key] else None
    options["probes"] = list(options["probes"]) if options["probes"] else None
    cfg = resolve_config(config.get("embed"), options)

    from bigmodel_cli.embeddings.embed import embed

    result = embed(ws, cfg, name=name, seed=project.seed, force=force, show_progress=True, console=err_console)
    if result.skipped:
        console.print(f"[green]✓[/] embed {escape(result.name)} is up to date (inputs and options unchanged since run "
                      f"{result.record['run_id']}); skipped. Use --force to run again.")
        return
    print_report(result.report, result.losses, result.evaluation, ws.relative(result.folder))


@embed_app.command("evaluate")
@handle_errors
def evaluate_cli(
    name: Optional[str] = typer.Argument(None, help="Run name (embeddings/NAME/).  \\[default: the latest run]", show_default=False),
    analogies: Optional[Path] = typer.Option(None, help="Analogy questions (questions-words.txt format).  \\[default: [embed] analogies]", show_default=False),
    pairs: Optional[Path] = typer.Option(None, help="Word pairs (word<TAB>word<TAB>score).  \\[default: [embed] pairs]", show_default=False),
    probe: Optional[List[str]] = typer.Option(None, help="A word whose neighbours to list (repeatable)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Evaluate saved embeddings: neighbours, analogy accuracy, word-pair correlation.

    Writes embeddings/NAME/evaluate.json. Words outside the vocabulary are counted (OOV)
    and left out; the share is reported.

    [b]Examples[/b]:
      bigmodel embed evaluate                          # the latest run, files from bigmodel.toml
      bigmodel embed evaluate w2v --analogies questions-words.txt --pairs wordsim353.tsv
      bigmodel embed evaluate ft200 --probe 手机 --probe 电池
    """
    from bigmodel_cli.embeddings.embed import evaluate_run
    from bigmodel_cli.workspace.config import EmbedConfig, resolve

    ws = open_workspace(workspace)
    cfg = resolve(EmbedConfig, ws.config().get("embed"), {})
    analogies = analogies or (ws.absolute(cfg.analogies) if cfg.analogies else None)
    pairs = pairs or (ws.absolute(cfg.pairs) if cfg.pairs else None)
    name, folder, result = evaluate_run(ws, name, analogies=analogies, pairs=pairs, probes=list(probe or cfg.probes))
    print_evaluation(result, title=f"embed evaluate {name}")
    console.print(f"  written to {escape(ws.relative(folder / 'evaluate.json'))}")


@embed_app.command("neighbors")
@handle_errors
def neighbors_cli(
    word: str = typer.Argument(..., help="The word to look up (as segmented)."),
    name: Optional[str] = typer.Option(None, help="Run name.  \\[default: the latest run]", show_default=False),
    topn: int = typer.Option(10, "--topn", "-n", help="How many neighbours."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """List a word's nearest neighbours by cosine similarity.

    [b]Examples[/b]:
      bigmodel embed neighbors 手机
      bigmodel embed neighbors screen --name ft200 --topn 20
    """
    from bigmodel_cli.embeddings.embed import lookup_neighbors

    ws = open_workspace(workspace)
    name, known, found = lookup_neighbors(ws, word, name, topn)
    table = Table(title=f"neighbours of {escape(word)} ({escape(name)})" + ("" if known else ", from character n-grams"),
                  title_justify="left")
    table.add_column("word")
    table.add_column("cosine", justify="right")
    for other, score in found:
        table.add_row(escape(other), f"{score:.4f}")
    console.print(table)


def print_report(report: dict, losses: dict, evaluation: dict, folder: str) -> None:
    corpus, s = report["corpus"], report["settings"]
    table = Table(title=f"embed {report['name']} ({report['method']})", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("corpus", f"{corpus['documents']:,} documents, {corpus['tokens']:,} tokens "
                  f"({corpus['stopwords_removed']:,} stopwords removed), {corpus['chunks']:,} chunks"
                  + (f", {corpus['documents_split']:,} long documents split" if corpus["documents_split"] else ""))
    table.add_row("vocabulary", f"{report['vocab_size']:,} words (min count {s['min_count']})")
    extra = (f"negative {s['negative']}, {'skip-gram' if s['sg'] else 'CBOW'}" if "negative" in s
             else f"x_max {s['x_max']}, lr {s['lr']}")
    if "buckets" in s:
        extra += f", n-grams {s['min_n']}-{s['max_n']} in {s['buckets']:,} buckets"
    table.add_row("settings", f"dim {s['dim']}, window {s['window']}, epochs {s['epochs']}, {extra}, seed {s['seed']}")
    epochs = [e for e in losses.get("epochs", []) if e.get("loss") is not None]
    if epochs:
        shown = epochs if len(epochs) <= 6 else epochs[:3] + epochs[-3:]
        text = "  ".join(f"{e['epoch']}: {e['loss']:.4f}" for e in shown)
        table.add_row("loss", text + (f"  (initial {losses['initial']:.4f})" if losses.get("initial") else ""))
    elif losses.get("epochs"):
        table.add_row("loss", "n/a (too few word pairs in the loss sample)")
    training, seconds = report["training"], report["seconds"]
    speed = f"{training['words_per_s']:,.0f} words/s, " if "words_per_s" in training else ""
    table.add_row("speed", f"{speed}train {seconds['train']:.1f} s, total {seconds['total']:.1f} s")
    _evaluation_rows(table, evaluation)
    table.add_row("output", escape(folder))
    console.print(table)


def print_evaluation(evaluation: dict, title: str) -> None:
    table = Table(title=escape(title), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    _evaluation_rows(table, evaluation)
    console.print(table)


def _evaluation_rows(table: Table, evaluation: dict) -> None:
    analogies = evaluation.get("analogies")
    if analogies:
        acc = "n/a" if analogies["accuracy"] is None else f"{analogies['accuracy']:.2%}"
        table.add_row("analogies", f"{acc} ({analogies['correct']:,} of {analogies['answered']:,}; "
                      f"OOV {analogies['oov_questions']:,} of {analogies['questions']:,} = {analogies['oov_ratio']:.1%})")
    pairs = evaluation.get("pairs")
    if pairs:
        corr = ("n/a (fewer than 3 pairs in the vocabulary)" if pairs["spearman"] is None
                else f"Spearman {pairs['spearman']:.4f}, Pearson {pairs['pearson']:.4f}")
        table.add_row("word pairs", f"{corr} ({pairs['used']:,} pairs; OOV {pairs['oov_pairs']:,} of {pairs['pairs']:,} "
                      f"= {pairs['oov_ratio']:.1%})")
    for word, found in list(evaluation.get("neighbors", {}).items())[:8]:
        table.add_row(f"≈ {escape(word)}", escape(", ".join(w for w, _ in found[:8])))
    if evaluation.get("probes_oov"):
        table.add_row("not in vocabulary", escape(", ".join(evaluation["probes_oov"])))
