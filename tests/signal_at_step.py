"""Run `bigmodel ARGS...` and send the process SIGNAL right after training step STEP:

    python tests/signal_at_step.py STEP SIGNAL ARGS...      (SIGNAL: SIGKILL, SIGTERM, ...)

The crash-recovery tests stop a run at a known point this way, through the loop's
`train.AFTER_STEP` callbacks, so that production code holds no test switch."""

from __future__ import annotations

import os
import signal
import sys

from bigmodel_cli.cli import main
from bigmodel_cli.training import loop as train


def signal_after(step: int, signum: int):
    def hook(done: int) -> None:
        if done == step:
            os.kill(os.getpid(), signum)
    return hook


if __name__ == "__main__":
    train.AFTER_STEP.append(signal_after(int(sys.argv[1]), getattr(signal, sys.argv[2])))
    sys.argv = ["bigmodel", *sys.argv[3:]]
    main()
