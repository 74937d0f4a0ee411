"""Pretraining's `auto` options, chosen from the compute budget, this machine's speed and the
corpus size.

The rule follows what budget pretraining found (Cramming, 24hBERT, Chinchilla; see
docs/benchmarks.md for the measurements on this project's corpora):
- size: the largest preset for which the budget, at the speed measured on this machine
  (a few timed steps of each candidate), trains on at least TOKENS_PER_PARAMETER tokens for
  each parameter of the encoder (embeddings not counted). On a laptop CPU and a budget of
  minutes that is the tiny model; a GPU or hours of CPU give the small one.
- precision: bf16-mixed where the device has bf16 units and the model is at least
  BF16_MIN_WIDTH wide; below that width casting costs more than bf16 saves on a CPU
  (benchmarks/bench_precision.py measures both on the machine at hand). A fixed rule rather
  than a timed race, so that the same command makes the same choice on the same machine.
- dropout: 0 when the budget sees the corpus fewer than REPEATS_FOR_DROPOUT times (with
  little repetition dropout only slows learning), 0.1 when it repeats the corpus more.
Explicit options always win; the choice and the measurements go into train.json.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from bigmodel_cli.errors import UserError

CANDIDATES = ("tiny", "small")
TOKENS_PER_PARAMETER = 20
REPEATS_FOR_DROPOUT = 3
BF16_MIN_WIDTH = 256  # CPU; every bf16-capable GPU gains at any width
WARMUP_STEPS = 2  # untimed steps first: the first steps of a new model allocate and pick kernels
PROBE_STEPS = 3  # timed steps per candidate (their median counts)
NO_BUDGET = ("", "none", "off")


def budget_seconds(text: str) -> float | None:
    """--budget as seconds; None for no budget ('none', 'off' or empty)."""
    from bigmodel_cli.training.loop import parse_duration

    return None if text.strip().lower() in NO_BUDGET else parse_duration(text)


def budget_problems(text: str) -> list[str]:
    from bigmodel_cli.training.loop import duration_problems

    return [] if text.strip().lower() in NO_BUDGET else duration_problems("--budget", text)


def auto_precision(device, width: int) -> str:
    """What --precision auto means for a model `width` wide on `device`."""
    if not has_bf16_units(device):
        return "32"
    return "bf16-mixed" if device.type == "cuda" or width >= BF16_MIN_WIDTH else "32"


def has_bf16_units(device) -> bool:
    """Whether the device computes in bfloat16 natively: a CUDA GPU that supports it, or a
    CPU with AVX-512 BF16 or AMX (elsewhere bf16 is emulated and slower than float32)."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


@dataclass
class Timing:
    seconds_per_step: float
    encoder_parameters: int  # without the embeddings: what Chinchilla's tokens-per-parameter counts


def auto_fields(cfg) -> list[str]:
    """The options of `cfg` left to the rule."""
    fields = []
    if cfg.size == "auto" and not (cfg.layers and cfg.dim):
        fields.append("size")
    if cfg.precision == "auto":
        fields.append("precision")
    if cfg.dropout < 0:
        fields.append("dropout")
    return fields


def choose(cfg, *, corpus_tokens: int, tokens_per_step: int, precision_of: Callable[[str], str],
           time_step: Callable[[str, str], Timing], encoder_parameters: Callable[[str], int],
           dev_batches: int = 0, candidates: tuple[str, ...] = CANDIDATES) -> tuple[Any, dict[str, Any]]:
    """`cfg` with its auto options decided, and the record of how (for train.json).
    `precision_of(size)` is the precision a size trains at (auto_precision, or the one given);
    `time_step(size, precision)` times a few training steps of that model on the real data;
    a larger size is timed only if the budget could train it on enough tokens even at the
    speed of the smaller one (it cannot be faster), so a laptop measures the tiny model alone.
    `candidates`: the sizes allowed (those as wide as --init-embeddings' vectors)."""
    wanted = auto_fields(cfg)
    budget = budget_seconds(cfg.budget)
    started = time.perf_counter()
    sizes = candidates if "size" in wanted else (cfg.size if cfg.size != "auto" else "custom",)
    # Speed matters only when it decides something: the size, or how often a budget repeats the corpus.
    measure = "size" in wanted or (budget is not None and "dropout" in wanted)
    timings: dict[str, Timing] = {}
    if measure:
        for size in sizes:
            if timings and budget is not None:
                fastest_yet = min(t.seconds_per_step for t in timings.values())
                if budget / fastest_yet * tokens_per_step < TOKENS_PER_PARAMETER * encoder_parameters(size):
                    break
            timings[size] = time_step(size, precision_of(size))
    probe_s = time.perf_counter() - started

    def tokens_seen(size: str) -> float:
        """Tokens the run will train on with this size: the budget at the measured speed, or
        the epochs/steps asked for, whichever ends first."""
        limits = []
        if cfg.max_steps:
            limits.append(cfg.max_steps * tokens_per_step)
        elif cfg.epochs:
            limits.append(cfg.epochs * corpus_tokens)
        if budget is not None and size in timings:
            step = timings[size].seconds_per_step
            limits.append(max(0.0, budget - probe_s) / step * tokens_per_step)
        return min(limits) if limits else math.inf

    size = sizes[0]
    if "size" in wanted:
        fits = [s for s in timings if tokens_seen(s) >= TOKENS_PER_PARAMETER * timings[s].encoder_parameters]
        size = fits[-1] if fits else sizes[0]
    changes: dict[str, Any] = {}
    if "size" in wanted:
        changes["size"] = size
    if "precision" in wanted:
        changes["precision"] = precision_of(size)
    tokens = tokens_seen(size)
    repeats = tokens / max(1, corpus_tokens)
    if "dropout" in wanted:
        changes["dropout"] = 0.0 if repeats < REPEATS_FOR_DROPOUT else 0.1
    if budget is not None and size in timings:
        _check_budget(cfg.budget, budget, probe_s, timings[size].seconds_per_step, dev_batches)
    record = {
        "rule": f"size: the largest of {', '.join(CANDIDATES)} trained on >= {TOKENS_PER_PARAMETER} tokens per encoder "
                f"parameter within the budget; precision: bf16-mixed with bf16 units and a width of at least {BF16_MIN_WIDTH} (any on a GPU); "
                f"dropout: 0 below {REPEATS_FOR_DROPOUT} passes over the corpus, else 0.1",
        "auto": wanted, "chosen": changes, "probe_seconds": round(probe_s, 3),
        "corpus_tokens": corpus_tokens, "expected_tokens": None if math.isinf(tokens) else int(tokens),
        "expected_passes": None if math.isinf(tokens) else round(repeats, 2),
        "measured": {s: {"precision": precision_of(s), "seconds_per_step": round(t.seconds_per_step, 4),
                         "tokens_per_s": round(tokens_per_step / t.seconds_per_step), "encoder_parameters": t.encoder_parameters}
                     for s, t in timings.items()},
    }
    return dataclasses.replace(cfg, **changes), record


def _check_budget(text: str, budget: float, probe_s: float, step_s: float, dev_batches: int) -> None:
    """A budget that cannot train at all on this machine is refused before anything is written."""
    # A dev batch is a forward pass, about a third of a training step.
    evaluate_s = dev_batches * step_s / 3
    needed = probe_s + 2 * step_s + evaluate_s
    if budget < needed:
        raise UserError(f"--budget {text} is too short on this machine: measuring its speed took {probe_s:.1f} s, one "
                        f"training step takes {step_s:.2f} s and one evaluation on dev about {evaluate_s:.1f} s",
                        hint=f"give at least --budget {math.ceil(needed * 2)}s (or fewer --eval-batches)")
