"""Pieces that pretrain and finetune share to set up a run folder: where the processed data is,
which checkpoint a resume starts from, the options a resume keeps or may change, train.json,
and how a training run runs in run_stage (refused over another run's checkpoints, rank 0
alone locking and recording, a failed record for any stop)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import read_json, write_json


def find_processed(ws, dataset: str | None = None) -> tuple[Path, Path | None, Path]:
    """The train split, the dev split (None when absent or empty) and vocab.txt of a dataset
    (`--data`); a split is train.parquet, or the train.jsonl of an older version."""
    from bigmodel_cli.data.store import has_records, split_file

    folder = ws.find_dataset(dataset)
    train, dev, vocab = split_file(folder, "train"), split_file(folder, "dev"), folder / "vocab.txt"
    if train is None or not vocab.is_file():
        raise UserError(f"no processed data in {ws.relative(folder)}/ (train.parquet and vocab.txt)",
                        hint="run `bigmodel preprocess FILE` first")
    return train, (dev if has_records(dev) else None), vocab


def resume_point(folder: Path, resume: str | None) -> Path | None:
    """The checkpoint to continue from, verified: `auto` takes `last`, or when `last` is
    gone the newest intact step-N (never starting over beside them); None when the run has
    no checkpoint at all."""
    from bigmodel_cli.model import checkpoint as ckpt
    from bigmodel_cli.model.runs import warn
    from bigmodel_cli.training.loop import Dist

    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_absolute() and not path.exists():
            path = folder / path
        ckpt.verify(path)
        return path
    root = folder / "checkpoints"
    last = ckpt.resolve_link(root, "last")
    if last is not None:
        ckpt.verify(last)
        return last
    found, problems = ckpt.newest_intact(root)
    if found is None and problems:
        raise UserError(f"cannot resume {root}: no intact checkpoint ({problems[0]})",
                        hint="start over with --force, or pick another --name")
    if found is not None and Dist.from_env().main:
        warn(f"{root / 'last'} is missing; resuming from {found.name}, the newest intact checkpoint")
    return found


INTERRUPTED = "interrupted (Ctrl-C); continue with --resume auto"


def refuse_other_run(ws, folder: Path, resume: str | None, force: bool) -> None:
    """Checkpoints of a run with other inputs or options are neither continued nor replaced
    unless --resume or --force says which."""
    if resume is None and not force and (folder / "checkpoints").exists():
        raise UserError(f"{ws.relative(folder)}/ already holds a run with other inputs or options",
                        hint="continue it with --resume auto, start over with --force, or pick another --name")


def stage_options(ws, folder: Path, resume: str | None, force: bool, dist) -> dict[str, Any]:
    """run_stage's options for a training run: it skips only without --resume and --force;
    another run's checkpoints refuse it (refuse_other_run); under torchrun rank 0 alone locks
    the workspace and writes the record; any failure (Ctrl-C and SIGTERM among them) leaves
    a failed record, so that `status` says so instead of showing the previous run."""
    return {"may_skip": resume is None and not force, "refuse": lambda: refuse_other_run(ws, folder, resume, force),
            "main": dist.main, "record_errors": BaseException, "interrupted": INTERRUPTED}


# What a run folder holds once a run has started (data/ held the block cache of earlier versions).
RUN_FILES = ("config.json", "train.json", "checkpoints", "data", "metrics.jsonl")


def start_over(folder: Path, force: bool, start: Path | None, dist) -> None:
    """--force without a resume replaces the run: rank 0 removes its folder (holding the
    lock), but only a folder that a run made: one the user filled is refused."""
    if dist.main and force and start is None and folder.exists():
        if any(folder.iterdir()) and not any((folder / name).exists() for name in RUN_FILES):
            raise UserError(f"{folder} holds no bigmodel run, so --force will not replace it",
                            hint="pick another --name, or move that folder away")
        shutil.rmtree(folder)


def run_outputs(ws, folder: Path, report: dict[str, Any], dist) -> list[Path]:
    """The files a training run's record hashes (rank 0; the others write no record)."""
    if not dist.main:
        return []
    outputs = [folder / f for f in ("config.json", "vocab.txt", "meta.json", "metrics.jsonl", "report.json")]
    outputs.append(ws.absolute(report["checkpoint"]) / "model.safetensors")
    return [p for p in outputs if p.exists()]


def given_options(overrides: dict[str, Any], seed: int | None) -> set[str]:
    """The options a command line set (None: not given), `seed` among them."""
    return {k for k, v in overrides.items() if v is not None} | ({"seed"} if seed is not None else set())


def inherit_options(cfg, seed: int, start: Path | None, given: set[str] | None):
    """On a resume from the command line, the options not given there are the run's own
    (from the checkpoint's train.json), so `--resume auto` alone continues a run whatever
    options started it. `given` is None for library calls: their options are taken as they are."""
    if start is None or given is None:
        return cfg, seed
    saved = read_json(start / "train.json")
    kept = {f.name: saved[f.name] for f in dataclasses.fields(cfg) if f.name not in given and f.name in saved}
    return dataclasses.replace(cfg, **kept), (saved.get("seed", seed) if "seed" not in given else seed)


def check_resume(folder: Path, start: Path, mcfg, cfg, seed: int, vocab_path: str, vocab_hash: str) -> dict[str, list]:
    """Refuse a resume that would not continue the same run (another model, another
    vocabulary, other training options); return the options it changes that may change
    (see train.RESUMABLE) as {option: [run's value, new value]}."""
    from bigmodel_cli.fileio import sha256_file
    from bigmodel_cli.model import checkpoint as ckpt
    from bigmodel_cli.model.runs import recorded_vocab_hash
    from bigmodel_cli.training.loop import RESUMABLE

    new_run = "start a new run instead with another --name, or replace this one with --force"
    saved = ckpt.read_config(start)
    if saved != mcfg.to_dict():
        diff = ", ".join(f"{k}: {saved.get(k)} -> {v}" for k, v in mcfg.to_dict().items() if saved.get(k) != v)
        raise UserError(f"cannot resume {start}: the model differs ({diff})", hint=f"resume with the options of the original run, or {new_run}")
    recorded = recorded_vocab_hash(folder) or (sha256_file(folder / "vocab.txt") if (folder / "vocab.txt").is_file() else None)
    if recorded and recorded != vocab_hash:
        raise UserError(f"cannot resume run '{folder.name}': {vocab_path} is not the vocabulary the run was trained on (it changed "
                        "since, e.g. by `preprocess --force`), so the same words would get other ids", hint=new_run)
    options = read_json(start / "train.json")
    ours = {**dataclasses.asdict(cfg), "seed": seed}
    differ = {k: [options[k], v] for k, v in ours.items() if k in options and options[k] != v}
    refused = {k: d for k, d in differ.items() if k not in RESUMABLE}
    if refused:
        listed = ", ".join(f"{option_flag(k)} {shown(d[1])} (the run has {shown(d[0])})" for k, d in refused.items())
        raise UserError(f"cannot resume run '{folder.name}' with other options: {listed}",
                        hint=f"leave them out to keep the run's values (runs/{folder.name}/train.json; only --max-steps, "
                             f"--max-time, --epochs, --early-stopping, --device, --compile, --accumulate and the log, eval "
                             f"and checkpoint intervals may change on resume), or {new_run}")
    return {k: d for k, d in differ.items() if k in RESUMABLE}


def write_train_options(folder: Path, options: dict[str, Any], *, start: Path | None, changed: dict[str, list],
                        complete: bool) -> None:
    """runs/NAME/train.json: the options, the vocabulary's hash, whether the run finished,
    and each resume with the options it changed."""
    path = folder / "train.json"
    previous = read_json(path) if path.is_file() else {}
    resumes = list(previous.get("resumes", [])) if start is not None else []
    if start is not None and not complete:
        resumes.append({"from": start.name, "changed": changed})
    write_json(path, {**options, "resumes": resumes, "complete": complete})


def option_flag(field: str) -> str:
    """The command-line flag of an options field (from_run is --from)."""
    return "--from" if field == "from_run" else f"--{field.replace('_', '-')}"


def shown(value: Any) -> Any:
    """An option's value in a message: an empty string (no --from, no --data) as none."""
    return "none" if value == "" else value
