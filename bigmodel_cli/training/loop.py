"""The one training loop, shared by pretrain and finetune.

A stage hands `fit` a model and a `Task` (its data, its loss and its dev evaluation); the
loop owns everything else: AdamW, warm-up and cosine decay, clipping, accumulation,
bf16 autocast, torch.compile, DistributedDataParallel, evaluation, early stopping,
checkpoints with exact resume, metrics (JSONL, TensorBoard when installed), the loss plot
and the progress bar.

Exact resume rests on three rules:
- every batch is a pure function of (seed, epoch, position): the data order is a seeded
  permutation per epoch, and random choices inside a batch (the MLM masks) come from a
  generator seeded by the step;
- checkpoints hold every generator that the loop touches (dropout draws from torch's);
- the metrics window being averaged at a checkpoint is saved with it.

SIGTERM (a cluster preempting the job) ends the step in progress, saves a checkpoint and
raises `Stopped` (exit code 143); `--resume auto` continues from it exactly.

A time limit (pretrain's --budget, or --max-time) keys the learning-rate schedule to the
clock: the schedule's progress is the larger of the share of steps done and the share of
time spent, so the rate reaches its floor at the deadline on any machine, fast or slow,
instead of at a step count the time never reaches. A resumed run continues the same clock
(its training seconds are in the checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from bigmodel_cli.errors import UserError
from bigmodel_cli.model import checkpoint as ckpt
from bigmodel_cli.workspace.config import TrainConfig

PRECISIONS = ("32", "bf16-mixed", "auto")
Batch = dict[str, torch.Tensor]
# Options a resumed run may change: how long it trains, where and how it reports. The
# others (learning rate, batch, seed, the data and the model) define the run.
RESUMABLE = ("max_steps", "max_time", "budget", "epochs", "early_stopping", "device", "compile", "accumulate", "log_every",
             "eval_every", "eval_batches", "checkpoint_every", "keep")


class Stopped(UserError):
    """SIGTERM (a cluster's preemption, `kill`): the loop saved a checkpoint and stops."""

    exit_code = 143  # 128 + SIGTERM, what a scheduler expects of a job it terminated


# Called with the step number after every optimizer step (tests use it to kill a run at a
# known step; empty otherwise).
AFTER_STEP: list[Callable[[int], None]] = []


class Task(Protocol):
    """What a stage gives the loop."""

    steps_per_epoch: int
    monitor: str  # the dev metric that picks `best` and drives early stopping
    higher_is_better: bool

    def batch(self, epoch: int, index: int, rows: slice) -> Batch:
        """Rows `rows` of global batch `index` of `epoch` (a pure function of its arguments)."""

    def count(self, batch: Batch) -> int:
        """How many loss terms the batch holds (masked tokens, sequences): the denominator."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed loss, number of terms, number correct) for the batch. It may read the
        task's settings (finetune's R-Drop weight) but must not keep state between calls."""

    def tokens(self, batch: Batch) -> int:
        """Real (non-padding) tokens in the batch, for tokens/s."""

    def evaluate(self, model: nn.Module, autocast: Callable[[], Any]) -> dict[str, float]:
        """Metrics on the dev split (empty when there is none)."""


# -- options ----------------------------------------------------------------------------
def parse_duration(text: str) -> float | None:
    """'90s', '10m', '1.5h', '1h30m' or plain seconds to seconds; '' to None."""
    text = (text or "").strip().lower()
    if not text:
        return None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smhd])", "", text).strip():
        raise ValueError(text)
    return sum(float(n) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[u] for n, u in parts)


def duration_problems(option: str, text: str) -> list[str]:
    """A duration option that does not parse, or is not above zero ('' is no limit)."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        return [f"{option} must be a duration such as 90s, 10m or 2h, got '{text}'"]
    if seconds is not None and not (0 < seconds < math.inf):
        return [f"{option} must be a duration above zero, such as 90s, 10m or 2h, got '{text}'"]
    return []


def validate(cfg: TrainConfig, budget: str = "") -> list[str]:
    """Every problem with the loop's options, so the user fixes them all at once. `budget`:
    pretrain's --budget, which lets --epochs be 0 (no limit but the clock)."""
    problems = []
    for key in ("batch_size", "accumulate", "log_every", "keep"):
        if getattr(cfg, key) < 1:
            problems.append(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(cfg, key)}")
    if cfg.epochs < 0:
        problems.append(f"--epochs must be a positive integer (or 0 with a time limit), got {cfg.epochs}")
    elif cfg.epochs == 0 and not cfg.max_steps and not (budget or cfg.max_time).strip():
        problems.append("--epochs 0 means no limit on the passes over the data: it needs a time limit (--budget or --max-time) or --max-steps")
    for key in ("max_steps", "eval_every", "eval_batches", "checkpoint_every", "early_stopping"):
        if getattr(cfg, key) < 0:
            problems.append(f"--{key.replace('_', '-')} must be 0 or more, got {getattr(cfg, key)}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        problems.append(f"--lr must be a positive number, got {cfg.lr}")
    for key in ("weight_decay", "warmup", "clip"):
        if not (getattr(cfg, key) >= 0 and math.isfinite(getattr(cfg, key))):
            problems.append(f"--{key.replace('_', '-')} must be 0 or more, got {getattr(cfg, key)}")
    if not 0 <= cfg.min_lr <= 1:
        problems.append(f"min_lr must be a fraction between 0 and 1, got {cfg.min_lr}")
    if cfg.precision not in PRECISIONS:
        problems.append(f"--precision must be one of {', '.join(PRECISIONS)}, got '{cfg.precision}'")
    problems += duration_problems("--max-time", cfg.max_time)
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device):
        problems.append(f"--device must be auto, cpu, cuda, cuda:N or mps, got '{cfg.device}'")
    if cfg.batch_size >= 1 and cfg.accumulate >= 1 and cfg.batch_size % cfg.accumulate:
        problems.append(f"--batch-size ({cfg.batch_size}) must be a multiple of --accumulate ({cfg.accumulate})")
    return problems


# -- distributed and devices ----------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Dist":
        """The process's place in a torchrun launch (WORLD_SIZE, RANK, LOCAL_RANK)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, dist: Dist) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available to this process (torch.cuda.is_available() is false)",
                            hint="use --device cpu, or check CUDA_VISIBLE_DEVICES and the driver")
        index = int(name.split(":")[1]) if ":" in name else dist.local_rank
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible", hint="pick another index")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: Apple's Metal backend is not available here", hint="use --device cpu")
    return torch.device(name)


def tune_cpu_allocator() -> None:
    """Keep freed buffers in the process. glibc returns large blocks to the OS on every free
    and maps them again on the next step, which slows small models most; mallopt
    is glibc's public switch for it (a no-op elsewhere)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)


# -- the learning-rate schedule ----------------------------------------------------------------
def schedule_progress(step: int, total: int | None, elapsed: float = 0.0, limit: float | None = None) -> float:
    """How far through its schedule a run is, from 0 to 1, at the start of step `step`
    (counted from 0): the larger of the steps done, counting this one, over the step total
    and the seconds spent over the time limit. Either may be absent (None)."""
    steps = (step + 1) / total if total else 0.0
    clock = elapsed / limit if limit else 0.0
    return min(1.0, max(steps, clock))


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up to --lr, then cosine decay to min_lr x --lr at the end of the schedule.
    A --warmup below 1 is a share of the schedule (of its steps or of its time), else a
    number of steps."""
    if cfg.warmup >= 1:
        warm, done = cfg.warmup, step + 1
        if done <= warm:
            return cfg.lr * done / warm
        start = 0.0  # the decay spans the whole schedule, as it always has for a step count
    else:
        if progress < cfg.warmup:
            return cfg.lr * progress / cfg.warmup
        start = cfg.warmup
    decay = min(1.0, (progress - start) / max(1e-12, 1.0 - start))
    return cfg.lr * (cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * decay)))


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = model.optimizer_groups(cfg.weight_decay)
    # The fused kernel updates all parameters in one pass (CPU since torch 2.4).
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch or an unsupported device
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


class Objective(nn.Module):
    """The model and a task's loss as one module, so that DDP and torch.compile wrap the
    whole step while checkpoints keep saving the plain model's names."""

    def __init__(self, model: nn.Module, loss: Callable):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: Batch):
        return self.loss(self.model, batch)


# -- the loop ---------------------------------------------------------------------------------
class StepStats(NamedTuple):
    """One optimizer step, summed over its parts and processes."""

    loss_sum: float
    terms: float
    correct: float
    tokens: float


class Window(NamedTuple):
    """Sums since the last logged step. A tuple, so that checkpoints keep it as a JSON list."""

    loss_sum: float = 0.0
    terms: int = 0
    correct: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, step: StepStats, seconds: float) -> "Window":
        return Window(*(a + b for a, b in zip(self, (*step, seconds))))

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.terms, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.terms, 1)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    index: int = 0  # next global batch of the epoch
    tokens: int = 0
    train_seconds: float = 0.0
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    window: Window = field(default_factory=Window)

    def __post_init__(self):
        self.window = Window(*self.window)  # a checkpoint gives it back as a list


@dataclass
class FitResult:
    steps: int
    epochs_done: float
    stop_reason: str
    train_loss: float | None
    dev: dict[str, float]
    best: float | None
    best_step: int | None
    tokens: int
    seconds: float
    tokens_per_s: float
    checkpoint: Path | None


def fit(model: nn.Module, task: Task, cfg: TrainConfig, run_dir: Path, *, seed: int, model_config: dict[str, Any],
        resume: Path | None = None, show_progress: bool = False, console=None, extra_state: dict | None = None,
        log_lines: bool = False, budget: str = "", budget_spent: float = 0.0) -> FitResult:
    """Train `model` on `task` into run_dir/checkpoints. With show_progress a rich bar is
    drawn on `console`; with log_lines one plain line per --log-every steps goes to stderr
    (for logs that are not a terminal: nohup, Slurm, CI). `budget` (pretrain's --budget, a
    duration) is the training time to spend, less `budget_spent` seconds already used (pretrain's
    speed measurement): --epochs 0 then means no limit but the clock."""
    trainer = _Trainer(model, task, cfg, run_dir, seed=seed, model_config=model_config, resume=resume,
                       extra_state=extra_state, log_lines=log_lines, budget=budget, budget_spent=budget_spent)
    state, total = trainer.state, trainer.total
    show_bar = show_progress and trainer.dist.main
    model.train()
    with _Progress(show_bar, console, total, trainer.limit, state) as bar, _SignalFlag(signal.SIGTERM) as term:
        started = time.perf_counter() - state.train_seconds
        while total is None or state.step < total:
            grad_norm = trainer.train_step(started)
            trainer.log_if_due(grad_norm, bar)
            stop, evaluated = trainer.evaluate_if_due()
            time_up, signalled = trainer.agreed_time_and_signal(term)
            if time_up and not stop:
                stop, trainer.stop_reason = True, trainer.time_reason
                if not evaluated:  # the run ends here: its final model gets a dev score too
                    trainer.evaluate()
            if stop or state.step == total:
                break
            trainer.checkpoint_if_due(signalled)
            if signalled:
                trainer.stop_for_signal()
    return trainer.finish()


class _Trainer:
    """What `fit` holds across steps: the model and its wrappers, the optimizer, the loop's
    state, the checkpoints and the logs. Its methods are the parts of one step, in order."""

    def __init__(self, model: nn.Module, task: Task, cfg: TrainConfig, run_dir: Path, *, seed: int,
                 model_config: dict[str, Any], resume: Path | None, extra_state: dict | None, log_lines: bool,
                 budget: str = "", budget_spent: float = 0.0):
        self.model, self.task, self.cfg, self.run_dir, self.model_config = model, task, cfg, run_dir, model_config
        self.dist = dist = Dist.from_env()
        self.device = _setup_device(cfg, dist)
        model.to(self.device)
        self.optimizer = make_optimizer(model, cfg, self.device)
        # None: no step limit (a budget with --epochs 0); the clock ends the run
        self.total = cfg.max_steps or (cfg.epochs * task.steps_per_epoch if cfg.epochs else None)
        self.limit, self.time_reason = _time_limit(cfg.max_time, budget, budget_spent)
        self.checkpoints = run_dir / "checkpoints"
        metrics_path = run_dir / "metrics.jsonl"
        self.train_json = {**asdict(cfg), "seed": seed, "world_size": dist.world, "total_steps": self.total,
                           **(extra_state or {})}
        self.state = _start_state(model, self.optimizer, resume, metrics_path, self.checkpoints, dist)
        self.lines = _LogLines(log_lines and dist.main, self.total)
        self.runner = _wrap(model, task, cfg, dist, self.device)
        self.precision = torch.bfloat16 if _precision(cfg.precision, self.device, model_config.get("dim", 0)) == "bf16-mixed" else None
        self.per_rank = cfg.batch_size // dist.world
        self.micro = self.per_rank // cfg.accumulate
        self.log = _MetricsLog(metrics_path, run_dir, dist.main)
        self.stop_reason = "max steps" if cfg.max_steps else "epochs" if cfg.epochs else self.time_reason
        self.dev: dict[str, float] = {}
        self.last_saved: Path | None = None

    def autocast(self):
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    def epochs_done(self) -> float:
        return round(self.state.epoch + self.state.index / self.task.steps_per_epoch, 4)

    def train_step(self, started: float) -> float:
        """One optimizer step on the next global batch; returns the gradient norm."""
        state, cfg, optimizer, model = self.state, self.cfg, self.optimizer, self.model
        if state.index >= self.task.steps_per_epoch:
            state.epoch, state.index = state.epoch + 1, 0
        step_start = time.perf_counter()
        progress = schedule_progress(state.step, self.total, state.train_seconds, self.limit)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, state.step, progress)
        stats = _train_step(self.runner, optimizer, self.task, state, self.dist, self.per_rank, self.micro, cfg,
                            self.autocast)
        if cfg.clip:
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.clip))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])))
        if not math.isfinite(grad_norm) or not math.isfinite(stats.loss_sum):
            raise UserError(f"training diverged at step {state.step + 1}: the loss or gradient is "
                            f"{stats.loss_sum if not math.isfinite(stats.loss_sum) else grad_norm}",
                            hint=f"lower --lr (now {cfg.lr:g}), keep --clip on, or use --precision 32")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.index += 1
        seconds = time.perf_counter() - step_start
        state.tokens += int(stats.tokens)
        state.window = state.window.add(stats, seconds)
        state.train_seconds = time.perf_counter() - started
        for hook in AFTER_STEP:
            hook(state.step)
        return grad_norm

    def log_if_due(self, grad_norm: float, bar: _Progress) -> None:
        """Every --log-every steps and at the last: the window's averages to the metrics, the
        bar and the log lines; then a new window."""
        state, window = self.state, self.state.window
        if not (state.step % self.cfg.log_every == 0 or state.step == self.total):
            return
        lr = self.optimizer.param_groups[0]["lr"]
        self.log.write({"step": state.step, "epoch": self.epochs_done(), "loss": window.loss, "accuracy": window.accuracy,
                        "lr": lr, "grad_norm": grad_norm, "tokens_per_s": window.tokens_per_s,
                        "elapsed_s": round(state.train_seconds, 3)})
        bar.update(state, window.loss, window.tokens_per_s)
        self.lines.train(state.step, window.loss, lr, window.tokens_per_s, state.train_seconds)
        state.window = Window()

    def evaluate_if_due(self) -> tuple[bool, bool]:
        """(stop, evaluated): dev is evaluated every --eval-every steps, at the end of each
        epoch and at the last step; early stopping may end the run there."""
        state, cfg = self.state, self.cfg
        end_of_epoch = state.index >= self.task.steps_per_epoch
        if not ((cfg.eval_every and state.step % cfg.eval_every == 0) or end_of_epoch or state.step == self.total):
            return False, False
        stop = self.evaluate()
        if stop:
            self.stop_reason = f"early stopping (no better dev {self.task.monitor} in {cfg.early_stopping} evaluations)"
        return stop, True

    def evaluate(self) -> bool:
        """Evaluate on dev; True when early stopping says stop."""
        state, task, model = self.state, self.task, self.model
        model.eval()
        with torch.no_grad():
            self.dev = dev = task.evaluate(model, self.autocast)
        model.train()
        if not dev:
            return False
        self.log.write({"step": state.step, "split": "dev", **dev})
        self.lines.dev(state.step, dev)
        value = dev[task.monitor]
        improved = state.best is None or (value > state.best if task.higher_is_better else value < state.best)
        if improved:
            state.best, state.best_step, state.bad_evals = value, state.step, 0
            if self.dist.main:
                ckpt.point(self.checkpoints, "best", self.save())
        else:
            state.bad_evals += 1
        return bool(self.cfg.early_stopping and state.bad_evals >= self.cfg.early_stopping)

    def agreed_time_and_signal(self, term: _SignalFlag) -> tuple[bool, bool]:
        """(time up, SIGTERM received), as rank 0 sees them, so that every process stops at
        the same step; rank 0's clock becomes every process's, so that all follow the same
        learning rate."""
        state = self.state
        time_up, signalled, seconds = _agreed_values(
            [self.limit is not None and state.train_seconds >= self.limit, term.raised, state.train_seconds], self.dist)
        state.train_seconds = seconds
        return bool(time_up), bool(signalled)

    def checkpoint_if_due(self, signalled: bool) -> None:
        """Every --checkpoint-every steps, and before stopping for SIGTERM (once per step)."""
        step, every = self.state.step, self.cfg.checkpoint_every
        saved_now = self.last_saved is not None and self.last_saved.name == ckpt.step_name(step)
        if self.dist.main and not saved_now and (signalled or (every and step % every == 0)):
            self.save()

    def stop_for_signal(self) -> None:
        self.log.close()
        if self.dist.world > 1 and torch.distributed.is_initialized():
            # Every rank stops at this same step: leave the process group together, so that no
            # rank exits while the group's threads still run (gloo then aborts the process).
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        where = Path(self.run_dir.parent.name, self.run_dir.name, "checkpoints", ckpt.step_name(self.state.step))
        raise Stopped(f"stopped by SIGTERM after step {self.state.step:,}; saved {where}",
                      hint="run the same command with --resume auto to continue exactly from there")

    def save(self) -> Path:
        self.last_saved = ckpt.save(self.checkpoints, self.state.step, self.model, self.optimizer, asdict(self.state),
                                    self.model_config, self.train_json)
        ckpt.prune(self.checkpoints, self.cfg.keep)
        return self.last_saved

    def finish(self) -> FitResult:
        """The last checkpoint (unless this step has one), the loss plot, and the result."""
        state, dist = self.state, self.dist
        if dist.main:
            if self.last_saved is None or self.last_saved.name != ckpt.step_name(state.step):
                self.save()
            self.log.close()
            self.log.plot()
        if dist.world > 1:
            torch.distributed.barrier()
        rate = state.tokens / max(state.train_seconds, 1e-9)
        return FitResult(state.step, self.epochs_done(), self.stop_reason, self.log.last_loss, self.dev, state.best,
                         state.best_step, state.tokens, state.train_seconds, rate,
                         ckpt.resolve_link(self.checkpoints, "best") or ckpt.resolve_link(self.checkpoints, "last"))


def _setup_device(cfg: TrainConfig, dist: Dist) -> torch.device:
    """The device, and the process group when torchrun (or --nproc) launched several."""
    device = pick_device(cfg.device, dist)
    if device.type == "cpu":
        tune_cpu_allocator()
    if dist.world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _start_state(model: nn.Module, optimizer: torch.optim.Optimizer, resume: Path | None, metrics_path: Path,
                 checkpoints: Path, dist: Dist) -> LoopState:
    """A fresh state, or the one `resume` saved (with the weights, the optimizer and every
    generator). The metrics a killed run logged after that checkpoint are dropped, and so
    are the checkpoints it left half-written."""
    state = LoopState()
    if resume is not None:
        state = LoopState(**{k: v for k, v in ckpt.restore(resume, model, optimizer).items()
                             if k in LoopState.__dataclass_fields__})
        if dist.main:
            _truncate_metrics(metrics_path, state.step)
    elif dist.main:
        metrics_path.unlink(missing_ok=True)
    if dist.main:
        ckpt.clean_partial(checkpoints)
    return state


def _wrap(model: nn.Module, task: Task, cfg: TrainConfig, dist: Dist, device: torch.device) -> nn.Module:
    """The model and the task's loss as the module each step calls: under DDP with
    several processes, compiled with --compile."""
    runner: nn.Module = Objective(model, task.loss)
    if dist.world > 1:
        runner = nn.parallel.DistributedDataParallel(runner, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        runner = torch.compile(runner)
    return runner


def _train_step(runner, optimizer, task, state: LoopState, dist: Dist, per_rank: int, micro: int,
                cfg: TrainConfig, autocast) -> StepStats:
    """Forward and backward over this process's share of one global batch, in `accumulate`
    parts. The loss is a sum divided by the global number of terms, so that the gradient is
    the same for any number of processes and parts."""
    start = dist.rank * per_rank
    parts = [task.batch(state.epoch, state.index, slice(start + i * micro, start + (i + 1) * micro))
             for i in range(cfg.accumulate)]
    count = torch.tensor(float(sum(task.count(p) for p in parts)))
    if dist.world > 1:
        torch.distributed.all_reduce(count)
    scale = dist.world / max(float(count), 1.0)  # DDP averages gradients over processes
    stats = torch.zeros(4, dtype=torch.float64)
    for i, part in enumerate(parts):
        sync = i == len(parts) - 1 or dist.world == 1
        with (contextlib.nullcontext() if sync else runner.no_sync()):
            with autocast():
                loss, terms, correct = runner(part)
            (loss * scale).backward()
        stats += torch.tensor([float(loss.detach()), float(terms), float(correct), float(task.tokens(part))], dtype=torch.float64)
    if dist.world > 1:
        torch.distributed.all_reduce(stats)
    return StepStats(*stats.tolist())


def _agreed_values(values: list[float], dist: Dist) -> list[float]:
    """Rank 0's values, so that every process stops at the same step and follows the same
    schedule (timings differ between processes)."""
    if dist.world == 1:
        return values
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    torch.distributed.broadcast(tensor, 0)
    return tensor.tolist()


def _time_limit(max_time: str, budget: str, spent: float) -> tuple[float | None, str]:
    """The seconds the run may train (the shorter of --budget, less what was spent of it
    before training, and --max-time; None for no limit) and the stop reason that names it."""
    seconds = parse_duration(budget)
    limits = [(limit, reason) for limit, reason in
              ((None if seconds is None else max(0.0, seconds - spent), f"budget ({budget})"),
               (parse_duration(max_time), f"max time ({max_time})"))
              if limit is not None]
    return min(limits) if limits else (None, "")


def _precision(name: str, device: torch.device, width: int) -> str:
    """--precision auto where the stage did not decide it (finetune): see training/budget.py."""
    if name != "auto":
        return name
    from bigmodel_cli.training.budget import auto_precision

    return auto_precision(device, width)


class _SignalFlag:
    """Note a signal instead of dying of it, so that the loop can checkpoint first."""

    def __init__(self, signum: int):
        self.signum, self.raised, self.previous = signum, False, None

    def __enter__(self) -> "_SignalFlag":
        def note(signum, frame):
            self.raised = True

        try:
            self.previous = signal.signal(self.signum, note)
        except ValueError:  # not the main thread: signals stay as they were
            self.previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(self.signum, self.previous)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines a killed run logged after the checkpoint it resumes from."""
    if not path.exists():
        return
    from bigmodel_cli.fileio import atomic_write

    kept = [json.dumps(entry) for entry in read_metrics(path) if entry.get("step", 0) <= step]
    with atomic_write(path) as handle:
        handle.writelines(line + "\n" for line in kept)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- output: metrics, plot, progress -----------------------------------------------------------
class _MetricsLog:
    """metrics.jsonl (one object per logged step; dev evaluations carry "split": "dev"),
    TensorBoard when it is installed, and loss.png at the end."""

    def __init__(self, path: Path, run_dir: Path, active: bool):
        self.path, self.run_dir, self.active = path, run_dir, active
        self.last_loss: float | None = None
        self.handle = open(path, "a", encoding="utf-8") if active else None
        self.board = None
        if active:
            with contextlib.suppress(ImportError, ModuleNotFoundError):
                from torch.utils.tensorboard import SummaryWriter

                self.board = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, entry: dict[str, Any]) -> None:
        if "split" not in entry:
            self.last_loss = entry["loss"]
        if not self.active:
            return
        entry = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in entry.items()}
        self.handle.write(json.dumps(entry) + "\n")
        self.handle.flush()
        if self.board is not None:
            prefix = entry.get("split", "train")
            for key, value in entry.items():
                if isinstance(value, (int, float)) and key not in ("step", "split"):
                    self.board.add_scalar(f"{prefix}/{key}", value, entry["step"])

    def close(self) -> None:
        if self.handle:
            self.handle.close()
        if self.board is not None:
            self.board.close()

    def plot(self) -> None:
        plot_losses(self.path, self.run_dir / "loss.png")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The entries of metrics.jsonl; a line a killed run left half-written is skipped."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line) if line.strip() else None
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


def plot_losses(metrics: Path, out: Path) -> None:
    """Train and dev loss against the step, as a PNG."""
    entries = read_metrics(metrics)
    train = [(e["step"], e["loss"]) for e in entries if "split" not in e]
    dev = [(e["step"], e["loss"]) for e in entries if e.get("split") == "dev"]
    if not train:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(*zip(*train), label="train")
    if dev:
        ax.plot(*zip(*dev), marker="o", label="dev")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from bigmodel_cli.fileio import atomic_write

    with atomic_write(out, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)


class _LogLines:
    """Plain progress lines on stderr, for logs that are not a terminal (where the rich bar
    writes nothing until it ends)."""

    def __init__(self, active: bool, total: int | None):
        self.active, self.total = active, total
        self.of = f"/{total:,}" if total else ""

    def _write(self, text: str) -> None:
        if self.active:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def train(self, step: int, loss: float, lr: float, rate: float, elapsed: float) -> None:
        self._write(f"step {step:,}{self.of}  loss {loss:.4f}  lr {lr:.3g}  {rate:,.0f} tok/s  {elapsed:,.1f} s")

    def dev(self, step: int, dev: dict[str, float]) -> None:
        self._write(f"step {step:,}{self.of}  dev " + "  ".join(f"{k} {v:.4g}" for k, v in dev.items()))


class _Progress:
    """The rich bar: steps of a step-counted run, seconds of a run that only the clock ends."""

    def __init__(self, show: bool, console, total: int | None, limit: float | None, state: LoopState):
        self.show, self.console, self.total, self.limit, self.state = show, console, total, limit, state
        self.progress = None

    def _completed(self, state: LoopState) -> float:
        return state.step if self.total else round(state.train_seconds, 1)

    def __enter__(self) -> "_Progress":
        if self.show:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            done = MofNCompleteColumn() if self.total else TextColumn("{task.completed:.0f}/{task.total:.0f} s")
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), done, TextColumn("step {task.fields[step]}"),
                                     TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} tok/s"),
                                     TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False)
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.total or self.limit, completed=self._completed(self.state),
                                               step=f"{self.state.step:,}", loss="-", rate="-")
        return self

    def update(self, state: LoopState, loss: float, rate: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=self._completed(state), step=f"{state.step:,}", loss=f"{loss:.4f}",
                                 rate=f"{rate:,.0f}")

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
