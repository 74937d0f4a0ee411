"""Shared pieces of the command-line layer: the app, consoles, options, error handling.

Commands live one per module beside this one; each parses options and calls the plain
function of its stage. No stage logic lives in the CLI layer.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

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
            raise interrupted_exit() from None

    return wrapper


def interrupted_exit() -> typer.Exit:
    """The exit (code 130) of a command that caught Ctrl-C.

    When the KeyboardInterrupt passed through code that CPython ran from a string (the
    `__init__` that dataclasses and namedtuple build with `exec`), CPython marks it as
    unhandled even though it was caught, and `python -m bigmodel_cli` (the way ranks and
    tests start us) then ends by SIGINT instead of exit 130. A new string exec clears that
    mark (CPython resets it at the start of every one)."""
    exec("pass")
    return typer.Exit(130)


def open_workspace(path: Optional[Path]):
    from bigmodel_cli.workspace.layout import Workspace

    return Workspace.find(path)


def isatty() -> bool:
    return sys.stderr.isatty()


def print_skipped(what: str, record: dict, extra: str = "") -> None:
    """The line a stage prints when its inputs and options are unchanged."""
    console.print(f"[green]✓[/] {escape(what)} is up to date (inputs and options unchanged since run "
                  f"{record['run_id']}); skipped. Use --force to run again{extra}.")


# -- options made from a stage's config dataclass ---------------------------------------
def config_options(cls: type, config_only: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field of the config dataclass `cls`: the field's type,
    its help text, its default shown in the help; the fields in `config_only` are set in
    bigmodel.toml only. The command declares `options: dict = CONFIG_OPTIONS` where the
    options go in its --help; it receives {field: value, None when not given}, to pass to
    the stage's resolve_config (defaults < bigmodel.toml < command line)."""
    fields = [f for f in dataclasses.fields(cls) if f.name not in config_only]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()]
        clash = {p.name for p in own} & {f.name for f in fields}
        if clash or "options" not in signature.parameters:
            raise TypeError(f"{func.__name__}: needs an options parameter and no parameter named as a field ({clash})")
        at = [p.name for p in own].index("options")
        generated = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=_option(f), annotation=_annotation(f))
                     for f in fields]

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            options = {f.name: kwargs.pop(f.name) for f in fields}
            return func(**kwargs, options=options)

        command.__signature__ = signature.replace(parameters=[*own[:at], *generated, *own[at + 1:]])
        command.config_class, command.config_only = cls, tuple(config_only)
        return command

    return decorate


CONFIG_OPTIONS: Any = None  # the default of a command's `options` parameter (see config_options)


def _annotation(f: dataclasses.Field) -> Any:
    kind = type(_default(f))
    return Optional[List[str]] if kind is list else Optional[kind]


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _option(f: dataclasses.Field) -> Any:
    """A typer.Option for field `f`. It defaults to None (not given), so bigmodel.toml's value
    stands; the help shows the code's default. Numbers are parsed by `_number`: a bad one is
    reported with the other problems of the command line, not by click alone."""
    from bigmodel_cli.workspace.config import option_name

    default, flag = _default(f), f.metadata.get("flag")
    if isinstance(default, bool) and not flag:
        flag = f"{option_name(f)}/--no-{option_name(f)[2:]}"
    decls = [flag or option_name(f)] + ([f.metadata["short"]] if f.metadata.get("short") else [])
    help_text = escape(f.metadata.get("doc", ""))
    shown = _shown_default(default, flag)
    if shown:
        help_text += f"  \\[default: {escape(shown)}]"
    extra: dict[str, Any] = {}
    if type(default) in (int, float):
        extra = dict(parser=_number(type(default)), metavar="<int>" if type(default) is int else "<float>")
    return typer.Option(None, *decls, help=help_text, show_default=False, **extra)


def _shown_default(default: Any, flag: str | None) -> str:
    """The default as --help shows it: on/off, or the flag that is on for a pair such as
    --sg/--cbow; nothing for an empty text or list."""
    if isinstance(default, bool):
        on, off = flag.split("/")
        if off == "--no-" + on[2:]:
            return "on" if default else "off"
        return (on if default else off)[2:]
    if isinstance(default, list):
        return ", ".join(map(str, default))
    return str(default)


def _number(kind: type) -> Callable[[Any], Any]:
    from bigmodel_cli.workspace.config import NotANumber

    return functools.partial(NotANumber.parse, kind=kind)
