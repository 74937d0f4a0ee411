"""Shared pieces of the command-line layer: the app, consoles, options, error handling.

Commands live one per module beside this one; each parses options and calls the plain
function of its stage. No stage logic lives in the CLI layer.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from bigmodel_cli.errors import UserError

app = typer.Typer(
    name="bigmodel",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)

console = Console()
err_console = Console(stderr=True)

WorkspaceOption = typer.Option(
    None, "--workspace", "-w", help="Workspace folder (default: the nearest folder upward holding bigmodel.toml).",
    show_default=False,
)


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """User mistakes print one line and exit 2; Ctrl-C exits 130. Bugs keep their traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            fail(exc.one_line(), exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: outputs of this run were not written; earlier outputs are intact")
            raise typer.Exit(130)

    return wrapper


def open_workspace(path: Optional[Path]):
    from bigmodel_cli.workspace import Workspace

    return Workspace.find(path)


def isatty() -> bool:
    return sys.stderr.isatty()


def print_skipped(what: str, record: dict, extra: str = "") -> None:
    """The line a stage prints when its inputs and options are unchanged."""
    console.print(f"[green]✓[/] {escape(what)} is up to date (inputs and options unchanged since run "
                  f"{record['run_id']}); skipped. Use --force to run again{extra}.")
