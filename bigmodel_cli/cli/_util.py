"""Shared pieces of the command-line layer: the app, consoles, options, error handling.

Commands live one per module beside this one; each parses options and calls the plain
function of its stage. No stage logic lives in the CLI layer.
"""

from __future__ import annotations

import errno
import functools
import os
import re
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

# Several processes through torchrun (bigmodel_cli/training/distributed.py): the same options on every
# training command.
NprocOption = typer.Option(1, "--nproc", help="Processes on this machine (torchrun; gloo on CPU, NCCL on GPU).")
NnodesOption = typer.Option(1, "--nnodes", help="Machines taking part (run the same command on each).")
NodeRankOption = typer.Option(0, "--node-rank", help="This machine's rank, 0 to nnodes-1.")
MasterAddrOption = typer.Option(None, "--master-addr", help="Address of the rank-0 machine.", show_default=False)
MasterPortOption = typer.Option(None, "--master-port", help="Port on the rank-0 machine.  \\[default: 29500]", show_default=False)


def launch_if_asked(nproc: int, nnodes: int, node_rank: int, master_addr: str | None, master_port: int | None) -> None:
    """With --nproc or --nnodes above 1, run this same command as that many ranks and exit
    with their code; in a rank (or with one process) return and train here."""
    from bigmodel_cli.training.distributed import (
        check_launch_options,
        inside_launch,
        join_launcher,
        launch,
    )

    if inside_launch():
        join_launcher()  # a rank dies with the launcher that started it
        return
    check_launch_options(nproc, nnodes, node_rank, master_addr, master_port)
    if nproc > 1 or nnodes > 1:
        raise typer.Exit(launch(sys.argv[1:], nproc, nnodes, node_rank, master_addr, master_port))


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that prints."""
    from bigmodel_cli.training.loop import Dist

    return Dist.from_env().main


# C0 controls but tab and newline, DEL and the C1 controls: a terminal acts on them (ESC starts
# a sequence that can recolour, move the cursor or reset the screen), so text that came from a
# user's files is shown with them spelled out, never sent raw.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def term_safe(text: object) -> str:
    """`text` fit to echo to a terminal: control characters shown as \\xNN, rich markup escaped."""
    return escape(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text)))


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {term_safe(message)}", soft_wrap=True)
    raise typer.Exit(code)


_OS_ADVICE = {
    errno.ENOSPC: "free some space (or point the workspace at a larger disk) and run the command again",
    errno.EDQUOT: "free some space within your quota and run the command again",
    errno.EROFS: "the file system is read-only; copy the workspace somewhere writable or remount it",
    errno.EACCES: "check the permissions of that path (ls -l) or run as a user who may use it",
    errno.EPERM: "check the permissions of that path (ls -l) or run as a user who may use it",
    errno.EIO: "the disk or network file system reported a read/write error; check it (dmesg) and retry",
    errno.ENOENT: "check the path",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOTDIR: "a part of that path is a file, not a folder",
}


def os_error_line(exc: OSError) -> str | None:
    """One line for an operating-system error the user can act on, or None for the others
    (those are bugs and keep their traceback)."""
    advice = _OS_ADVICE.get(exc.errno)
    if advice is None:
        return None
    where = exc.filename if exc.filename is not None else "a file"
    return f"{where}: {exc.strerror or os.strerror(exc.errno)}; {advice}"


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """User mistakes print one line and exit 2; Ctrl-C exits 130. Bugs keep their traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            fail(exc.one_line(), exc.exit_code)
        except OSError as exc:
            line = os_error_line(exc)
            if line is None:
                raise
            fail(line)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: outputs of this run were not written; earlier outputs are intact")
            raise typer.Exit(130)

    return wrapper


def open_workspace(path: Optional[Path]):
    from bigmodel_cli.workspace.layout import Workspace

    return Workspace.find(path)


def isatty() -> bool:
    return sys.stderr.isatty()


def print_skipped(what: str, record: dict, extra: str = "") -> None:
    """The line a stage prints when its inputs and options are unchanged."""
    console.print(f"[green]✓[/] {escape(what)} is up to date (inputs and options unchanged since run "
                  f"{record['run_id']}); skipped. Use --force to run again{extra}.")
