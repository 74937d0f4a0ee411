"""Launching several processes (ranks), on one machine or many.

`bigmodel pretrain --nproc 4` runs the same command as four ranks, each finding its place in
the environment torchrun would give it (RANK, WORLD_SIZE, MASTER_ADDR, ...); the training
loop then uses DistributedDataParallel (gloo on CPU, NCCL on GPU).

The `bigmodel` process that was asked for `--nproc` is the launcher, and it owns its ranks:

* It hosts the rendezvous (a TCPStore that every rank joins as a client, as under torchrun
  with its agent's store). On one machine it listens on the loopback only; with
  `--nnodes` above 1, node 0's launcher listens on `--master-addr`.
* Each rank dies with it (`join_launcher`: PR_SET_PDEATHSIG), so however the launcher
  ends, no rank goes on training, writing checkpoints or holding the workspace lock.
* The ranks run in a session of their own, so a terminal's Ctrl-C reaches the launcher
  alone, which passes it on once; SIGTERM is passed on too (the loop checkpoints, stops).
* When a rank fails, the others are stopped at once, the failing rank's error is shown
  once, and its exit code (2 for a user's mistake) is the launcher's.

Rank 0 writes to the terminal; the other ranks' stderr goes to a file that is shown only
when that rank is the one that failed.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bigmodel_cli.errors import UserError
from bigmodel_cli.lifecycle import die_with_parent, python_module

# Options that configure the launch itself and are not passed on to the processes.
LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port")
LAUNCHER_ENV = "BIGMODEL_LAUNCHER_PID"  # tells a rank which process to die with
DEFAULT_PORT = 29500  # torchrun's, for several machines
POLL_SECONDS = 0.05
STOP_GRACE_S = 30  # for ranks to end by themselves after Ctrl-C or SIGTERM (torchrun's too)
FOLLOW_S = 3  # for rank 0 to end by itself after another rank failed
RENDEZVOUS_TIMEOUT_S = 900  # how long ranks on other machines may take to join


def inside_launch() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_launcher() -> None:
    """In a rank, first thing: die with the launcher. A rank started by the user's own
    torchrun has no launcher of ours and is left alone."""
    launcher = os.environ.get(LAUNCHER_ENV, "")
    if launcher.isdigit():
        die_with_parent(int(launcher))


def check_launch_options(nproc: int, nnodes: int, node_rank: int, master_addr: str | None,
                         master_port: int | None) -> None:
    problems = []
    if nproc < 1:
        problems.append(f"--nproc must be at least 1, got {nproc}")
    if nnodes < 1:
        problems.append(f"--nnodes must be at least 1, got {nnodes}")
    elif not 0 <= node_rank < nnodes:
        problems.append(f"--node-rank must be in 0..{nnodes - 1} (--nnodes {nnodes}), got {node_rank}")
    if nnodes > 1 and not master_addr:
        problems.append("--nnodes above 1 needs --master-addr (the address of the node-rank 0 machine)")
    if master_port is not None and not 0 < master_port < 65536:
        problems.append(f"--master-port must be in 1..65535, got {master_port}")
    if problems:
        raise UserError("; ".join(problems), hint="see --help for the launch options")


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


def launch(argv: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
           master_addr: str | None = None, master_port: int | None = None) -> int:
    """Run the command in `argv` as nproc ranks here (of nproc x nnodes); returns the exit code."""
    local = nnodes == 1
    host = "127.0.0.1" if local else master_addr
    port = master_port or (0 if local else DEFAULT_PORT)
    server = None
    if node_rank == 0:
        server = _serve_rendezvous(host, port, loopback=local)
        port = server.port
    env = _rank_env(nproc, nnodes, node_rank, host, port, local)
    with tempfile.TemporaryDirectory(prefix="bigmodel-ranks-") as logs:
        ranks = [_Rank.start(strip_launch_options(argv), env, nproc * node_rank + i, i, Path(logs))
                 for i in range(nproc)]
        try:
            return _supervise(ranks)
        finally:
            for rank in ranks:
                rank.end()
            server = None  # closes the rendezvous


# -- the rendezvous -------------------------------------------------------------------------------
def _serve_rendezvous(host: str, port: int, loopback: bool):
    """A TCPStore server on `host`: on the loopback for one machine. TCPStore itself would
    listen on every interface, so it is handed a socket bound here."""
    import datetime

    from torch.distributed import TCPStore

    try:
        sock = socket.create_server((host, port), family=_family(host), backlog=128)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use", hint="pass another --master-port") from None
        if loopback or exc.errno != errno.EADDRNOTAVAIL:
            raise
        # --master-addr is how the other machines reach this one, not an address of its
        # own (NAT, a load balancer): listen on every interface, as torchrun does.
        sock = socket.create_server(("", port), backlog=128)
    bound = sock.getsockname()[1]
    return TCPStore(host, bound, is_master=True, wait_for_workers=False, master_listen_fd=sock.detach(),
                    timeout=datetime.timedelta(seconds=RENDEZVOUS_TIMEOUT_S))


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror:
        raise UserError(f"--master-addr {host}: no such host", hint="give an address or a name this machine can resolve") from None


def _rank_env(nproc: int, nnodes: int, node_rank: int, host: str, port: int, local: bool) -> dict[str, str]:
    """What torchrun sets for a rank, less the rank numbers."""
    env = dict(os.environ)
    env.update({
        LAUNCHER_ENV: str(os.getpid()),
        "MASTER_ADDR": host, "MASTER_PORT": str(port),
        "WORLD_SIZE": str(nproc * nnodes), "ROLE_WORLD_SIZE": str(nproc * nnodes), "LOCAL_WORLD_SIZE": str(nproc),
        "GROUP_RANK": str(node_rank), "GROUP_WORLD_SIZE": str(nnodes),
        "TORCHELASTIC_RUN_ID": f"bigmodel-{os.getpid()}", "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
        "TORCHELASTIC_USE_AGENT_STORE": "True",  # every rank joins our store as a client
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc))),
    })
    loopback = _loopback_interface()
    if local and loopback and "GLOO_SOCKET_IFNAME" not in os.environ:
        env["GLOO_SOCKET_IFNAME"] = loopback  # gloo's own connections, on the loopback too
    return env


def _loopback_interface() -> str | None:
    try:
        return next((name for _, name in socket.if_nameindex() if name in ("lo", "lo0")), None)
    except OSError:
        return None


# -- the ranks ------------------------------------------------------------------------------------
@dataclass
class _Rank:
    number: int  # the global rank
    local: int
    process: subprocess.Popen
    log: Path | None  # where its stderr goes, unless it writes to the terminal
    handle: IO | None = field(default=None, repr=False)

    @classmethod
    def start(cls, argv: list[str], env: dict[str, str], number: int, local: int, logs: Path) -> "_Rank":
        env = {**env, "RANK": str(number), "ROLE_RANK": str(number), "LOCAL_RANK": str(local)}
        log = None if local == 0 else logs / f"rank-{number}.log"
        handle = open(log, "wb") if log else None
        # A session of its own: the terminal's Ctrl-C goes to the launcher only, which
        # passes it on once (two would interrupt a rank's own handling of the first).
        process = subprocess.Popen([*python_module("bigmodel_cli"), *argv], env=env, stderr=handle,
                                   start_new_session=True)
        return cls(number, local, process, log, handle)

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            try:
                self.process.send_signal(signum)
            except OSError:
                pass

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.kill()
            except OSError:
                pass

    def end(self) -> None:
        self.kill()
        self.process.wait()
        if self.handle is not None:
            self.handle.close()

    def stderr(self) -> str:
        if self.log is None:
            return ""
        return self.log.read_text(encoding="utf-8", errors="replace")


def _supervise(ranks: list[_Rank]) -> int:
    """Wait for the ranks; returns the exit code.

    A signal passed on (Ctrl-C, SIGTERM) gives the ranks STOP_GRACE_S to end by themselves
    (rank 0 writes its record, or a checkpoint); a second Ctrl-C does not wait. A rank that
    fails by itself ends the launch: rank 0 gets FOLLOW_S to end too (it usually meets the
    same error and says so itself), then the others are killed; they cannot go on without it."""
    signalled: list[int] = []

    def pass_on(signum, frame):
        again = signum == signal.SIGINT and signal.SIGINT in signalled
        signalled.append(signum)
        for rank in ranks:
            rank.kill() if again else rank.signal(signum)

    previous = {signum: signal.signal(signum, pass_on) for signum in (signal.SIGINT, signal.SIGTERM)}
    failed = since = None
    try:
        while None in [rank.process.poll() for rank in ranks]:
            failed = failed or next((rank for rank in ranks if rank.process.returncode not in (None, 0)), None)
            if signalled or failed is not None:
                since = since or time.monotonic()
                grace = STOP_GRACE_S if signalled else FOLLOW_S
                if time.monotonic() - since > grace or (not signalled and ranks[0].process.returncode is not None):
                    break
            time.sleep(POLL_SECONDS)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    failed = failed or next((rank for rank in ranks if rank.process.returncode not in (None, 0)), None)
    for rank in ranks:  # what they wrote was written atomically
        rank.end()
    return _outcome(ranks[0], failed, signalled)


def _outcome(zero: _Rank, failed: _Rank | None, signalled: list[int]) -> int:
    """The exit code; and the failed rank's error, shown once (rank 0 shows its own)."""
    if signal.SIGINT in signalled:
        if zero.process.returncode != 130:  # rank 0 did not get to say so itself
            sys.stderr.write("interrupted: the ranks were stopped; checkpoints already written are intact\n")
        return 130
    if failed is None:
        return 0
    own = zero.process.returncode
    if own > 0 and (failed is zero or own == failed.process.returncode):
        return own  # rank 0 ended by itself with the same outcome, and has said so
    sys.stderr.write(failed.stderr())
    code = failed.process.returncode
    if code >= 0:
        return code
    if -code in signalled:  # ended by the signal passed on, before it could act on it
        return 128 - code
    name = signal.Signals(-code).name
    hint = ("; if that was the kernel's out-of-memory killer (dmesg), use a smaller --batch-size or fewer processes"
            if name == "SIGKILL" else "")
    sys.stderr.write(f"error: rank {failed.number} was killed by {name}{hint}\n")
    return 1
