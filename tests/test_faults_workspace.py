"""Faults at the workspace's edges: exports that must never replace what bigmodel did not
make, a lock that is a link or whose holder died, leftovers of killed runs, status while a
stage runs, and operating-system errors (disk full, read-only) as one line."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import assert_fails, dead_pid, lock_held_elsewhere

from bigmodel_cli.cli import _util
from bigmodel_cli.data.vocab import SPECIAL_TOKENS
from bigmodel_cli.fileio import atomic_write, write_json
from bigmodel_cli.model.transformer import ModelConfig, Transformer
from bigmodel_cli.workspace.records import stage_status

WORDS = list(SPECIAL_TOKENS) + ["房间", "很", "干净", "好"]
CORPUS = "".join(f"第{i}句话很好\n" for i in range(40))


pytestmark = pytest.mark.usefixtures("wide_console")


@pytest.fixture
def run_ws(ws, save_run):
    """A workspace with one tiny run, `mlm`."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=len(WORDS), layers=1, dim=8, heads=2, ffn=16, max_positions=16,
                                    dropout=0.0, attention_dropout=0.0))
    save_run(ws, "mlm", model, WORDS)
    return ws


# -- export never replaces what it did not make ------------------------------------------
def test_export_refuses_the_workspace_root_and_the_folder_above(run_ws, run_cli, helpers, tmp_path):
    before = helpers.snapshot(tmp_path)
    for out in (".", str(run_ws.root), str(run_ws.root.parent)):
        line = assert_fails(run_cli(["export", "mlm", "--out", out], run_ws.root))
        assert "workspace or a folder above it" in line
    assert helpers.snapshot(tmp_path) == before


@pytest.mark.parametrize("inside", ["runs", "runs/mlm", "data/processed", ".bigmodel", "embeddings/new", "reports"])
def test_export_refuses_folders_the_workspace_keeps(run_ws, run_cli, helpers, inside):
    before = helpers.snapshot(run_ws.root)
    line = assert_fails(run_cli(["export", "mlm", "--out", run_ws.root / inside], run_ws.root))
    assert f"inside the workspace's {inside.split('/')[0]}/" in line
    assert helpers.snapshot(run_ws.root) == before


def test_export_refuses_a_folder_with_other_files_and_keeps_a_sibling_old(run_ws, run_cli, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious", encoding="utf-8")
    sibling = tmp_path / "mine.old"
    sibling.mkdir()
    (sibling / "keep.txt").write_text("also precious", encoding="utf-8")
    line = assert_fails(run_cli(["export", "mlm", "--out", out], run_ws.root))
    assert "not empty and holds no earlier bigmodel hf export" in line
    assert (out / "notes.txt").read_text(encoding="utf-8") == "precious"
    # an export into a new folder beside them leaves the user's `.old` folder alone
    assert run_cli(["export", "mlm", "--out", tmp_path / "new"], run_ws.root).exit_code == 0
    assert run_cli(["export", "mlm", "--out", tmp_path / "new"], run_ws.root).exit_code == 0  # replaces its own
    assert (sibling / "keep.txt").read_text(encoding="utf-8") == "also precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mine", "mine.old", "new", "ws"])


def test_export_replaces_its_own_earlier_export_but_not_another_format(run_ws, run_cli, tmp_path):
    out = tmp_path / "exported"
    assert run_cli(["export", "mlm", "--out", out], run_ws.root).exit_code == 0
    marker = json.loads((out / "bigmodel_export.json").read_text(encoding="utf-8"))
    assert (marker["format"], marker["run"]) == ("hf", "mlm")
    (out / "model.safetensors").write_bytes(b"stale")
    assert run_cli(["export", "mlm", "--out", out], run_ws.root).exit_code == 0
    assert (out / "model.safetensors").read_bytes() != b"stale"
    line = assert_fails(run_cli(["export", "mlm", "--format", "onnx", "--out", out], run_ws.root))
    assert "no earlier bigmodel onnx export" in line
    assert (out / "config.json").is_file()


def test_export_refuses_a_file_and_a_link(run_ws, run_cli, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "x").write_text("x", encoding="utf-8")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert "symbolic link" in assert_fails(run_cli(["export", "mlm", "--out", link], run_ws.root))
    afile = tmp_path / "afile"
    afile.write_text("data", encoding="utf-8")
    assert "is a file" in assert_fails(run_cli(["export", "mlm", "--out", afile], run_ws.root))
    assert afile.read_text(encoding="utf-8") == "data" and (target / "x").exists()


def test_export_into_an_empty_folder_and_leaves_no_staging(run_ws, run_cli, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert run_cli(["export", "mlm", "--out", out], run_ws.root).exit_code == 0
    assert (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "ws"]


# -- the lock ----------------------------------------------------------------------------------
def test_lock_that_is_a_link_is_refused_and_its_target_untouched(ws, run_cli, tmp_path):
    outside = tmp_path / "important.txt"
    outside.write_text("do not truncate me", encoding="utf-8")
    (ws.meta / "lock").symlink_to(outside)
    (ws.raw / "a.txt").write_text(CORPUS, encoding="utf-8")
    line = assert_fails(run_cli(["preprocess", "-w", ws.root], ws.root))
    assert "is a symbolic link" in line and "rm " in line
    assert outside.read_text(encoding="utf-8") == "do not truncate me"


def test_lock_that_is_a_hard_link_is_refused(ws, tmp_path):
    outside = tmp_path / "important.txt"
    outside.write_text("keep", encoding="utf-8")
    os.link(outside, ws.meta / "lock")
    from bigmodel_cli.errors import UserError

    with pytest.raises(UserError, match="not a plain file of its own"):
        with ws.lock("preprocess"):
            pass
    assert outside.read_text(encoding="utf-8") == "keep"


HOLD_FLOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def test_lock_held_by_the_orphan_of_a_dead_holder_is_taken_over(ws, capsys):
    """A worker that outlived its killed parent still holds the flock it inherited; the
    holder named in running.json is gone, so the next stage takes the lock over."""
    with ws.lock("preprocess"):
        pass
    orphan = subprocess.Popen([sys.executable, "-c", HOLD_FLOCK, str(ws.meta / "lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert orphan.stdout.readline().strip() == "held"
        gone = dead_pid()
        write_json(ws.running_path, {"pid": gone, "command": "preprocess", "since": "2026-01-01T00:00:00"})
        assert stage_status(ws)[0]["state"] == "interrupted"
        with ws.lock("embed --name w2v"):
            assert "took over the workspace lock from pid" in capsys.readouterr().err
            assert ws.holder()["pid"] == os.getpid()
        assert sorted(p.name for p in ws.meta.iterdir()) == ["lock", "records"]
    finally:
        orphan.stdin.close()
        orphan.wait(timeout=30)


def test_lock_of_a_live_holder_is_not_taken_over(ws):
    from bigmodel_cli.errors import WorkspaceBusy

    orphan = subprocess.Popen([sys.executable, "-c", HOLD_FLOCK, str(ws.meta / "lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        (ws.meta / "lock").touch()
        assert orphan.stdout.readline().strip() == "held"
        write_json(ws.running_path, {"pid": orphan.pid, "command": "pretrain --name mlm", "since": "2026-01-01T00:00:00"})
        with pytest.raises(WorkspaceBusy, match=f"pid {orphan.pid} is running `bigmodel pretrain --name mlm`"):
            with ws.lock("preprocess"):
                pass
    finally:
        orphan.stdin.close()
        orphan.wait(timeout=30)


def test_status_shows_the_running_stage_then_an_interrupted_one(ws, run_cli):
    with lock_held_elsewhere(ws, "pretrain --name mlm") as holder:
        rows = {r["stage"]: r for r in stage_status(ws)}
        assert rows["pretrain:mlm"]["state"] == "running"
        assert f"pid {holder.pid}" in rows["pretrain:mlm"]["reasons"][0]
        result = run_cli(["status", "-w", ws.root], ws.root)
        assert result.exit_code == 0 and "running" in result.output
        holder.kill()  # killed mid-stage: no record, the holder's note stays behind
        holder.wait(timeout=30)
    rows = {r["stage"]: r for r in stage_status(ws)}
    assert rows["pretrain:mlm"]["state"] == "interrupted"
    assert "run it again" in rows["pretrain:mlm"]["reasons"][0]
    with ws.lock("pretrain --name mlm"):  # the next run takes the lock without a fuss
        pass
    assert "pretrain:mlm" not in {r["stage"] for r in stage_status(ws)}


# -- leftovers of killed runs --------------------------------------------------------------------
def test_stale_staging_and_temporary_files_of_dead_processes_are_removed(ws):
    gone = dead_pid()
    stale = ws.processed.with_name(f".processed.staging-{gone}")
    live = ws.processed.with_name(f".processed.staging-{os.getppid()}")
    mine = ws.processed.with_name("processed.staging-keep")  # not a name bigmodel gives
    for folder in (stale, live, mine):
        folder.mkdir()
        (folder / "train.parquet").write_text("{}\n", encoding="utf-8")
    with ws.lock("preprocess"):
        pass
    assert not stale.exists() and live.exists() and mine.exists()

    target = ws.root / "out.jsonl"
    stale_tmp = ws.root / f".out.jsonl.{gone}-abc123.tmp"
    live_tmp = ws.root / f".out.jsonl.{os.getppid()}-abc123.tmp"
    other = ws.root / ".out.jsonl.notes.tmp"
    for path in (stale_tmp, live_tmp, other):
        path.write_text("partial", encoding="utf-8")
    with atomic_write(target) as handle:
        handle.write("new")
    assert not stale_tmp.exists() and live_tmp.exists() and other.exists()
    assert target.read_text(encoding="utf-8") == "new"


def test_an_interrupted_swap_is_recovered_from_its_parked_name(ws, run_pre):
    (ws.raw / "a.txt").write_text(CORPUS, encoding="utf-8")
    run_pre(min_count=1)
    before = {p.name: p.read_bytes() for p in ws.processed.iterdir()}
    ws.processed.rename(ws.processed.with_name(f".processed.replaced-{dead_pid()}"))
    with ws.lock("preprocess"):
        assert {p.name: p.read_bytes() for p in ws.processed.iterdir()} == before
    assert sorted(p.name for p in ws.processed.parent.iterdir()) == ["processed", "raw"]


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        with atomic_write(tmp_path / "a.txt") as handle:
            handle.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask


# -- the operating system says no -------------------------------------------------------------
@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left on device; free some space"),
                                         (errno.EROFS, "read-only")])
def test_disk_full_or_read_only_is_one_line_and_nothing_half_written(ws, run_cli, run_pre, helpers, monkeypatch,
                                                                      code, words):
    (ws.raw / "a.txt").write_text(CORPUS, encoding="utf-8")
    run_pre(min_count=1)
    (ws.raw / "b.txt").write_text(CORPUS.replace("很好", "不好"), encoding="utf-8")
    before = helpers.snapshot(ws.root / "data")
    records = sorted((ws.meta / "records").rglob("*.json"))

    def no_room(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", no_room)
    line = assert_fails(run_cli(["preprocess", "-w", ws.root, "--force"], ws.root))
    assert words in line and str(ws.root) in line
    monkeypatch.undo()
    assert helpers.snapshot(ws.root / "data") == before
    assert sorted(p.name for p in ws.processed.parent.iterdir()) == ["processed", "raw"]
    assert [p for p in ws.root.rglob("*.tmp")] == []
    new_records = sorted((ws.meta / "records").rglob("*.json"))
    assert all(json.loads(p.read_text())["status"] != "ok" for p in new_records if p not in records)


def test_an_unexpected_os_error_keeps_its_traceback():
    assert _util.os_error_line(OSError(errno.EBADF, "Bad file descriptor")) is None
    assert _util.os_error_line(OSError(errno.EIO, "Input/output error", "/x")).startswith("/x: Input/output error")


def test_term_safe_spells_out_escape_sequences():
    assert _util.term_safe("a\x1bc\x07b[red]") == "a\\x1bc\\x07b\\[red]"
    assert _util.term_safe("tab\tand\nnewline") == "tab\tand\nnewline"


def test_fail_never_sends_escape_sequences(run_cli, tmp_path):
    name = tmp_path / "bad\x1bcname"
    result = run_cli(["status", "-w", name], tmp_path)
    assert result.exit_code == 2
    assert "\x1b" not in result.stderr and "\\x1bc" in result.stderr
