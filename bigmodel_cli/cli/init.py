from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli.cli._util import app, console, handle_errors


@app.command("init")
@handle_errors
def init_cli(
    path: Path = typer.Argument(Path("."), help="Folder for the workspace (created if missing)."),
    lang: str = typer.Option("auto", "--lang", "-l", help="Corpus language: zh, en, or auto (per document)."),
) -> None:
    """Create a workspace: bigmodel.toml (every option, commented) and the folder layout.

    [b]Examples[/b]:
      bigmodel init reviews --lang zh
      bigmodel init .            # make the current folder a workspace
    """
    from bigmodel_cli.workspace.layout import Workspace

    ws, created = Workspace.init(path, lang=lang)
    if created:
        console.print(f"[green]✓[/] created workspace [b]{ws.root}[/] (lang={lang})")
        console.print(f"  config: {ws.config_path}")
        console.print(f"  next:   cd {path} && bigmodel preprocess YOUR_CORPUS  (txt, jsonl, csv or tsv)")
    else:
        console.print(f"[yellow]![/] {ws.root} is already a workspace; config left as it was, missing folders created")
