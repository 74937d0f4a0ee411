"""Finetuning's learning rate, chosen on dev: each rate of --lr-grid trains --grid-steps (one
epoch) from the same start in runs/NAME/grid/; the best by dev macro-F1 is recorded in
runs/NAME/grid.json and the grid folder is removed. A dev split too small to rank rates on
falls back to FALLBACK_LR, with a notice. A resumed search keeps its finished candidates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import read_json, write_json
from bigmodel_cli.training.classify_data import Encoded
from bigmodel_cli.workspace.config import FinetuneConfig

if TYPE_CHECKING:
    from bigmodel_cli.training.finetune import ClassifyTask

GRID_DIR = "grid"  # runs/NAME/grid/: the candidate rates' runs while the search lasts
GRID_FILE = "grid.json"  # runs/NAME/grid.json: each candidate's dev score and the rate chosen
FALLBACK_LR = 1e-4  # the rate when dev cannot rank the grid
# Below this many labelled dev documents one document moves macro-F1 by a point or more,
# more than the rates of the grid usually differ by.
MIN_DEV_DOCS = 50
def parse_grid(text: str) -> list[float]:
    """The rates of --lr-grid, in the order given, each once; ValueError when one is not a
    positive number or there are none."""
    import math

    rates: list[float] = []
    for part in str(text).split(","):
        rate = float(part.strip())
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(part)
        if rate not in rates:
            rates.append(rate)
    return rates


def read_search(folder: Path) -> dict[str, Any] | None:
    """runs/NAME/grid.json (the learning-rate search), or None when the run has none."""
    path = folder / GRID_FILE
    return read_json(path) if path.is_file() else None


def search_key(params: dict[str, Any], inputs: list[dict[str, str]]) -> dict[str, Any]:
    """What a resumed search must share with the one it continues: the options that shape the
    candidates (not those a resume may change) and the inputs' hashes."""
    from bigmodel_cli.training.loop import RESUMABLE

    return {"params": {k: v for k, v in params.items() if k not in RESUMABLE}, "inputs": inputs}


def search_options(cfg: FinetuneConfig, seed: int, folder: Path, start: Path | None, resume: str | None,
                    given: set[str] | None) -> tuple[FinetuneConfig, int]:
    """A run cut off during its search has no checkpoint for inherit_options to read: on a
    resume from the command line, the options not given there are those the search recorded."""
    if start is not None or resume is None or given is None:
        return cfg, seed
    saved = (read_search(folder) or {}).get("key", {}).get("params", {})
    kept = {f.name: saved[f.name] for f in dataclasses.fields(cfg) if f.name not in given and f.name in saved}
    return dataclasses.replace(cfg, **kept), (saved.get("seed", seed) if "seed" not in given else seed)


def searched_again(cfg: FinetuneConfig, folder: Path, start: Path | None, given: set[str] | None) -> FinetuneConfig:
    """A resumed run whose rate was chosen on dev is --lr 0 again: its checkpoints hold the
    chosen rate, which inherit_options took, and the run's parameters are those it started with."""
    if start is None or given is None or "lr" in given:
        return cfg
    search = read_search(folder)
    if search is not None and search.get("lr") == cfg.lr:
        return dataclasses.replace(cfg, lr=0.0)
    return cfg


@dataclass
class Trainer:
    """How the candidates' runs report: as the run itself does."""

    show_progress: bool
    console: Any
    log_lines: bool
    extra_state: dict[str, Any]


def search_summary(search: dict[str, Any] | None) -> dict[str, Any] | None:
    """The search as train.json and report.json record it (grid.json's key left out)."""
    if search is None:
        return None
    return {k: v for k, v in search.items() if k != "key"}


def dev_too_small(dev: Encoded | None, labels: list[str]) -> str | None:
    """Why dev cannot rank learning rates (too few labelled documents, a class missing), or None."""
    known = dev.labels[dev.labels >= 0] if dev is not None else np.zeros(0, dtype=np.int64)
    if len(known) < MIN_DEV_DOCS:
        return f"dev has {len(known)} documents"
    missing = sorted(set(range(len(labels))) - set(known.tolist()))
    if missing:
        return f"dev has {len(known)} documents, none of class '{labels[missing[0]]}'"
    return None


def search_lr(ws, cfg: FinetuneConfig, seed: int, folder: Path, task: ClassifyTask, labels: list[str], new_model,
               model_config: dict[str, Any], key: dict[str, Any], resume: str | None, dist,
               trainer: Trainer) -> dict[str, Any]:
    """The learning rate chosen on dev, as grid.json records it: each rate of --lr-grid trains
    the same number of steps from the same start, in runs/NAME/grid/lr-RATE/; the best dev
    macro-F1 wins (the first of the grid on a tie). A resume keeps the candidates that
    finished and continues the one that was cut off from its checkpoint; the search starts
    over when its options or inputs changed. runs/NAME/grid/ is removed at the end."""
    import shutil
    import sys

    too_small = dev_too_small(task.dev, labels)
    if too_small:
        if dist.main:
            sys.stderr.write(f"notice: {too_small}, too few to choose the learning rate on (--lr-grid needs "
                             f"{MIN_DEV_DOCS} or more, of every class); finetuning with --lr {FALLBACK_LR:g}\n")
            sys.stderr.flush()
        search = {"lr": FALLBACK_LR, "chosen": f"fallback ({too_small})", "trials": []}
        if dist.main:
            write_json(folder / GRID_FILE, search)
            shutil.rmtree(folder / GRID_DIR, ignore_errors=True)  # candidates of a search resumed on other data
        return search
    grid = parse_grid(cfg.lr_grid)
    steps = min(cfg.grid_steps or task.steps_per_epoch, cfg.max_steps or float("inf"))
    key = {**key, "grid": grid, "steps": steps}
    saved = read_search(folder) if resume is not None else None
    same = saved is not None and saved.get("key") == key
    trials = list(saved.get("trials", [])) if same else []
    if not same and dist.main:
        shutil.rmtree(folder / GRID_DIR, ignore_errors=True)  # the tool's own candidates, of another search
    search = {"lr": None, "chosen": "searching", "grid": grid, "steps": steps, "trials": trials, "key": key}
    done = {t["lr"] for t in trials}
    for rate in grid:
        if dist.main:
            write_json(folder / GRID_FILE, search)
        if rate in done:
            continue
        trials.append(run_trial(cfg, rate, steps, folder / GRID_DIR / f"lr-{rate:g}", task, new_model, seed, model_config,
                             dist, trainer))
        if dist.main and trainer.console is not None:
            t = trials[-1]
            trainer.console.print(f"lr {rate:g}: dev macro-F1 {t['dev_macro_f1']:.4f} after {t['steps']:,} steps")
    best = max(trials, key=lambda t: -1.0 if t["dev_macro_f1"] is None else t["dev_macro_f1"])
    search.update(lr=best["lr"], chosen="dev")
    if dist.main:
        write_json(folder / GRID_FILE, search)
        shutil.rmtree(folder / GRID_DIR, ignore_errors=True)
    return search


def run_trial(cfg: FinetuneConfig, rate: float, steps: int, trial_dir: Path, task: ClassifyTask, new_model, seed: int,
           model_config: dict[str, Any], dist, trainer: Trainer) -> dict[str, Any]:
    """One candidate rate: `steps` steps on its own schedule (warm-up and decay within them),
    evaluated on dev at the end; continued from its checkpoint when it has one."""
    import shutil

    from bigmodel_cli.training.loop import fit
    from bigmodel_cli.training.run_setup import resume_point

    start = None
    if (trial_dir / "checkpoints").exists():
        try:
            start = resume_point(trial_dir, "auto")
        except UserError:  # no intact checkpoint: the candidate trains again
            start = None
    if start is None and dist.main and trial_dir.exists():
        shutil.rmtree(trial_dir)
    if dist.main:
        trial_dir.mkdir(parents=True, exist_ok=True)
    model, _ = new_model(load_base=start is None)
    trial_cfg = dataclasses.replace(cfg, lr=rate, max_steps=steps, max_time="", early_stopping=0, eval_every=0, keep=1)
    result = fit(model, task, trial_cfg, trial_dir, seed=seed, model_config=model_config, resume=start,
                 show_progress=trainer.show_progress, console=trainer.console, log_lines=trainer.log_lines,
                 extra_state=trainer.extra_state)
    return {"lr": rate, "steps": result.steps,
            "dev_macro_f1": None if result.best is None else round(result.best, 6), "seconds": round(result.seconds, 2)}


