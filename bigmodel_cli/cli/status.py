from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.table import Table

from bigmodel_cli.cli._util import (
    WorkspaceOption,
    app,
    console,
    handle_errors,
    open_workspace,
    term_safe,
)


@app.command("status")
@handle_errors
def status_cli(workspace: Optional[Path] = WorkspaceOption) -> None:
    """Show every stage: its last run, key metrics, and whether it is stale.

    A stage is stale when one of its inputs (an upstream output too) or its section of
    bigmodel.toml changed since its last successful run, or an output was changed.

    [b]Examples[/b]:
      bigmodel status                  # the workspace around the current folder
      bigmodel status -w reviews
    """
    from bigmodel_cli.workspace.records import stage_status

    ws = open_workspace(workspace)
    table = Table(title=f"workspace {ws.root}", title_justify="left")
    rows = stage_status(ws)
    lineage = any(row.get("lineage") for row in rows)  # the column only where there is something to show
    table.add_column("stage", no_wrap=True)
    for column in ("last run", "status", *(["data / base"] if lineage else []), "key figures", "state"):
        table.add_column(column, overflow="fold")
    for row in rows:
        state = row["state"]
        style = {"up to date": "green", "stale": "yellow", "never run": "dim", "failed": "red",
                 "running": "cyan", "interrupted": "red"}[state]
        detail = f"[{style}]{state}[/]" + (": " + term_safe("; ".join(row["reasons"])) if row["reasons"] else "")
        cells = [row["stage"], row["when"] or "-", row["status"] or "-"]
        cells += [term_safe(row.get("lineage") or "-")] if lineage else []
        table.add_row(*cells, row["metrics"] or "-", detail)
    console.print(table)
