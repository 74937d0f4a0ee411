"""Data-parallel training reads each row once (issue #20): under --nproc N, rank r takes its
own slice of every global batch, the ranks' slices are disjoint and together make the whole
batch, so N processes train the same model as one; and a run resumed under --nproc 2 goes on
from the exact batch where its checkpoint left it.

The slicing is checked in-process on pretrain's real task; the consequences with real ranks
(gloo on CPU) in subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import metrics
from safetensors.torch import load_file

from bigmodel_cli.training import loop
from bigmodel_cli.training.loop import Dist, LoopState
from bigmodel_cli.training.pretrain import pretrain
from bigmodel_cli.workspace.config import PretrainConfig
from bigmodel_cli.workspace.layout import Workspace

# Every option that could vary between runs is pinned: no clock in the schedule (--budget
# none), no timed choice of size or precision, no dropout (its draws differ per rank).
PRETRAIN_ARGS = ["--size", "tiny", "--layers", "1", "--dim", "32", "--heads", "2", "--ffn", "64", "--seq-len", "32",
                 "--batch-size", "8", "--budget", "none", "--max-steps", "4", "--lr", "1e-3", "--warmup", "0",
                 "--dropout", "0", "--precision", "32", "--eval-every", "0", "--eval-batches", "1", "--log-every", "1",
                 "--checkpoint-every", "2", "--keep", "5", "--device", "cpu"]
FINETUNE_ARGS = ["--from", "scratch", "--layers", "1", "--dim", "16", "--heads", "2", "--ffn", "32", "--max-len", "32",
                 "--batch-size", "8", "--max-steps", "4", "--lr", "1e-3", "--dropout", "0", "--eval-every", "0",
                 "--log-every", "1", "--device", "cpu"]
TIMINGS = ("tokens_per_s", "elapsed_s")


# -- the slicing, in-process ------------------------------------------------------------------------
class _Reads:
    """The task's training blocks, noting which block numbers each read takes."""

    def __init__(self, blocks):
        self.blocks, self.read = blocks, []

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, picked):
        self.read += np.asarray(picked).tolist()
        return self.blocks[picked]


class _Runner:
    """Stands in for the DDP-wrapped model: keeps the parts a step feeds it."""

    def __init__(self):
        self.weight = torch.zeros((), requires_grad=True)
        self.parts = []

    def __call__(self, part):
        self.parts.append(part)
        return self.weight * 1.0, torch.tensor(1), torch.tensor(0)

    def no_sync(self):
        return contextlib.nullcontext()


@pytest.fixture
def pretrain_task(lm_ws, monkeypatch):
    """The task a real (one-step) pretrain run hands the training loop, with its reads noted."""
    seen = []
    real_fit = loop.fit

    def fit(model, task, *args, **kwargs):
        seen.append(task)
        return real_fit(model, task, *args, **kwargs)

    monkeypatch.setattr(loop, "fit", fit)
    cfg = PretrainConfig(size="tiny", layers=1, dim=32, heads=2, ffn=64, seq_len=32, batch_size=8, budget="none",
                         max_steps=1, dropout=0.0, precision="32", eval_every=0, eval_batches=1, device="cpu")
    pretrain(lm_ws, cfg, name="probe", seed=3)
    (task,) = seen
    task.train = _Reads(task.train)
    # The steps below run as ranks of a process group that is not there: summing over it is a no-op.
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor, *args, **kwargs: None)
    return task


def _step_as_rank(task, rank: int, world: int, epoch: int, index: int, accumulate: int):
    """What the loop's step hands the model on `rank` of `world` processes for one global batch:
    (the block numbers read, the parts)."""
    per_rank = task.batch_size // world
    runner, before = _Runner(), len(task.train.read)
    loop._train_step(runner, None, task, LoopState(epoch=epoch, index=index), Dist(rank, world), per_rank,
                     per_rank // accumulate, SimpleNamespace(accumulate=accumulate), contextlib.nullcontext)
    return task.train.read[before:], runner.parts


@pytest.mark.parametrize(("world", "accumulate"), [(2, 1), (2, 2), (4, 1), (4, 2)])
def test_ranks_read_disjoint_rows_that_make_up_the_global_batch(pretrain_task, world, accumulate):
    task = pretrain_task
    size = task.batch_size
    assert task.steps_per_epoch >= 20  # enough batches for an epoch to say something
    for epoch in (0, 1):
        read_in_epoch = []
        for index in range(task.steps_per_epoch):
            ranks = [_step_as_rank(task, r, world, epoch, index, accumulate) for r in range(world)]
            rows = [set(read) for read, _ in ranks]
            global_batch = task.order(epoch)[index * size:(index + 1) * size].tolist()
            assert sum(len(read) for read, _ in ranks) == size  # each rank read its share once
            assert all(not (rows[a] & rows[b]) for a in range(world) for b in range(a + 1, world)), (epoch, index)
            assert set().union(*rows) == set(global_batch), (epoch, index)
            read_in_epoch += [row for read, _ in ranks for row in read]
        assert len(read_in_epoch) == len(set(read_in_epoch)) == task.steps_per_epoch * size  # no block twice an epoch


def test_ranks_parts_put_together_are_the_one_process_batch(pretrain_task):
    """Masks included: the ranks compute the very loss terms of one process."""
    task = pretrain_task
    for epoch, index in [(0, 0), (0, 7), (1, 3), (2, task.steps_per_epoch - 1)]:
        whole = task.batch(epoch, index, slice(None))
        parts = [part for r in range(2) for part in _step_as_rank(task, r, 2, epoch, index, 2)[1]]
        assert len(parts) == 4 and whole.keys() == parts[0].keys()
        for key in whole:
            assert torch.equal(torch.cat([p[key] for p in parts]), whole[key]), (epoch, index, key)
        assert (whole["labels"] != -100).any()  # the comparison covers masked positions


# -- real ranks ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddp_ws(reviews_ws, tmp_path_factory) -> Workspace:
    """One copy of the reviews workspace for this module's subprocess runs."""
    root = tmp_path_factory.mktemp("ddp") / "ws"
    shutil.copytree(reviews_ws.root, root, symlinks=True)
    return Workspace(root)


def _bigmodel(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "bigmodel_cli", *args, "-w", str(ws.root)], check=False,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors")


def _train_lines(run: Path) -> list[dict]:
    """metrics.jsonl's training lines without the timings."""
    return [{k: v for k, v in m.items() if k not in TIMINGS} for m in metrics(run) if "split" not in m]


@pytest.fixture(scope="module")
def one_and_two(ddp_ws):
    """The same 4-step pretraining with one process and with two: each run's folder, step-4
    weights and training lines, read before any later test writes into the folders."""
    runs = {}
    for name, nproc in (("one", "1"), ("two", "2")):
        _bigmodel(ddp_ws, "pretrain", *PRETRAIN_ARGS, "--name", name, "--nproc", nproc)
        run = ddp_ws.root / "runs" / name
        runs[name] = SimpleNamespace(folder=run, weights=_weights(run, 4), lines=_train_lines(run))
    return runs


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.allclose(value, b[key], rtol=0, atol=1e-5), (key, float((value - b[key]).abs().max()))


@pytest.mark.slow
def test_two_ranks_train_the_same_weights_as_one_process(one_and_two):
    one, two = one_and_two["one"], one_and_two["two"]
    assert [m["step"] for m in two.lines] == [1, 2, 3, 4]
    for x, y in zip(one.lines, two.lines, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5), (x, y)
    _assert_close(one.weights, two.weights)
    step_2 = _weights(one.folder, 2)
    assert all(not torch.equal(one.weights[k], step_2[k]) for k in step_2)  # the last steps moved every tensor


@pytest.mark.slow
def test_a_run_resumed_under_two_ranks_ends_like_the_uninterrupted_one(ddp_ws, one_and_two):
    """The run 'two' goes on from its step-2 checkpoint with two fresh ranks: steps 3 and 4
    must read the same batches (the cursor: epoch and index) with the same generators."""
    two = one_and_two["two"]
    _bigmodel(ddp_ws, "pretrain", *PRETRAIN_ARGS, "--name", "two", "--nproc", "2",
              "--resume", "checkpoints/step-00000002")
    resumed = _weights(two.folder, 4)
    assert resumed.keys() == two.weights.keys()
    assert all(torch.equal(resumed[k], two.weights[k]) for k in resumed)
    assert _train_lines(two.folder) == two.lines


def _constant_learning_rate(ws: Workspace) -> None:
    """min_lr 1 in bigmodel.toml (it has no option): with --warmup 0 the rate is --lr at every
    step, so a run stopped by --max-steps 2 and resumed to 4 follows the 4-step run's schedule."""
    path = ws.config_path
    head, mark, rest = path.read_text(encoding="utf-8").partition("\n[pretrain]\n")
    end = rest.find("\n[") if "\n[" in rest else len(rest)
    section = re.sub(r"^min_lr = .*$", "min_lr = 1.0", rest[:end], flags=re.MULTILINE)
    path.write_text(head + mark + section + rest[end:], encoding="utf-8")
    assert ws.config()["pretrain"]["min_lr"] == 1.0


@pytest.mark.slow
def test_a_run_stopped_by_max_steps_and_resumed_auto_equals_the_whole_run(reviews_ws, copy_ws):
    """Two ranks with dropout (each rank's generators must come back too) and the options a
    stopped run is resumed with: --max-steps 2, then --resume auto --max-steps 4."""
    ws = copy_ws(reviews_ws)
    _constant_learning_rate(ws)
    args = [*PRETRAIN_ARGS, "--dropout", "0.1", "--nproc", "2"]
    _bigmodel(ws, "pretrain", *args, "--name", "whole")
    _bigmodel(ws, "pretrain", *args, "--name", "stopped", "--max-steps", "2")
    stopped = ws.root / "runs" / "stopped"
    assert os.readlink(stopped / "checkpoints" / "last") == "step-00000002"
    _bigmodel(ws, "pretrain", *args, "--name", "stopped", "--max-steps", "4", "--resume", "auto")
    report = json.loads((stopped / "report.json").read_text(encoding="utf-8"))
    assert report["steps"] == 4 and report["resumed_from"].endswith("step-00000002") and report["world_size"] == 2
    whole, resumed = _weights(ws.root / "runs" / "whole", 4), _weights(stopped, 4)
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert _train_lines(stopped) == _train_lines(ws.root / "runs" / "whole")


@pytest.mark.slow
def test_finetune_with_two_ranks_trains_the_same_classifier_as_one_process(ddp_ws):
    runs = {}
    for name, nproc in (("ft-one", "1"), ("ft-two", "2")):
        _bigmodel(ddp_ws, "finetune", *FINETUNE_ARGS, "--name", name, "--nproc", nproc)
        run = ddp_ws.root / "runs" / name
        runs[name] = (load_file(run / "checkpoints" / "last" / "model.safetensors"), _train_lines(run))
    (a, a_lines), (b, b_lines) = runs["ft-one"], runs["ft-two"]
    assert [m["step"] for m in b_lines] == [1, 2, 3, 4]
    for x, y in zip(a_lines, b_lines, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5), (x, y)
    _assert_close(a, b)
