"""Launching several processes (on one machine or many) through PyTorch's own launcher.

`bigmodel pretrain --nproc 4` re-runs the same command under `torch.distributed.run`
(torchrun); each process then finds its rank in the environment that torchrun sets, and
the training loop uses DistributedDataParallel (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import os
import subprocess
import sys

# Options that configure the launch itself and are not passed on to the processes.
LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port")


def inside_launch() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def strip_launch_options(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def launch_command(argv: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
                   master_addr: str | None = None, master_port: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--nnodes={nnodes}"]
    if nnodes == 1 and master_addr is None and master_port is None:
        cmd.append("--standalone")  # a free local port, no rendezvous server to set up
    else:
        cmd += [f"--node-rank={node_rank}", f"--master-addr={master_addr or '127.0.0.1'}",
                f"--master-port={master_port or 29500}"]
    return cmd + ["-m", "bigmodel_cli", *strip_launch_options(argv)]


def launch(argv: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
           master_addr: str | None = None, master_port: int | None = None) -> int:
    """Run the command in `argv` as nproc x nnodes processes; returns the exit code."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc))))
    return subprocess.call(launch_command(argv, nproc, nnodes, node_rank, master_addr, master_port), env=env)
