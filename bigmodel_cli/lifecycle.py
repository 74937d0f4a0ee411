"""Child processes die with their parent and leave Ctrl-C to it.

A worker whose parent was killed (SIGKILL, OOM killer, a closed terminal) would otherwise
wait on its pipe forever, or go on writing files and holding a lock. Each child calls
`die_with_parent` first thing. On Linux the kernel then sends it SIGKILL when the parent
dies (`PR_SET_PDEATHSIG`); elsewhere a thread watches the parent's pid.

Ctrl-C reaches the whole foreground process group. Children ignore it
(`ignore_interrupts`): the parent alone decides what an interrupt ends, and ends them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_SECONDS = 0.2  # how often the portable fallback looks at the parent


def die_with_parent(parent: int) -> None:
    """End this process when the process `parent` ends (at once if it already has)."""
    if not _kernel_death_signal():
        threading.Thread(target=_watch, args=(parent,), name="die-with-parent", daemon=True).start()
    # The parent may have died before the signal was asked for: then it never comes.
    if os.getppid() != parent:
        os._exit(1)


def ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def interrupts_kept() -> Iterator[None]:
    """Around code that can swallow a KeyboardInterrupt: a Ctrl-C is not lost, nor turned
    into another error.

    CPython runs fork hooks (logging's lock release among them) whose exceptions it prints
    and drops, so a KeyboardInterrupt raised inside one is gone and the command would run
    on to the end. And C extensions that call back into Python (numpy building an array
    while safetensors reads a file) turn it into a ValueError, which a loader would report
    as a corrupt file. Here the interrupt is noted as it is raised, and raised again after
    the block, in place of whatever the block raised or swallowed."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # someone else decides what Ctrl-C does here
        return
    noted: list[int] = []

    def note(signum, frame):
        noted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, note)
    try:
        yield
    except BaseException:
        if noted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if noted:
        raise KeyboardInterrupt


forking = interrupts_kept  # around the start of child processes


def python_module(module: str) -> list[str]:
    """The command that runs `python -m MODULE` (append its arguments), except that the
    current folder is not put first on the child's sys.path: `-m` would, and a user's
    `json.py` or `datasets.py` there would then shadow the module of that name. The folder
    this package was imported from goes last instead, so that a child finds it wherever
    the parent did (an installed package, or a source checkout run as `python -m`)."""
    root = str(Path(__file__).resolve().parents[1])
    code = ("import runpy, sys\n"
            "if sys.path and sys.path[0] == '': sys.path.pop(0)\n"
            f"if {root!r} not in sys.path: sys.path.append({root!r})\n"
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code]


def _kernel_death_signal() -> bool:
    """Ask Linux for SIGKILL when the parent dies; False where that cannot be had."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:  # an orphan is adopted by init or a subreaper
        time.sleep(WATCH_SECONDS)
    os._exit(1)
