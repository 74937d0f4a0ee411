"""Checkpoints that resume exactly and never load a pickle.

    checkpoints/step-00000500/
        model.safetensors      the (uncompiled) model's weights
        optimizer.safetensors  AdamW's moments, one tensor per parameter and moment
        rng.safetensors        torch's generator states (CPU, and CUDA when used)
        state.json             step, epoch, data position, best metric, the python and numpy
                               generator states, the optimizer's hyperparameters
        config.json            the model config; train.json: the resolved training options
        manifest.json          sha256 of every file above, so a truncated or corrupt file is
                               named before anything is loaded
    checkpoints/last -> step-...   checkpoints/best -> step-...

A checkpoint is written into a hidden folder and renamed into place, and `last`/`best` are
replaced by rename too: a crash at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import read_json, sha256_file, write_json

MODEL = "model.safetensors"
FILES = (MODEL, "optimizer.safetensors", "rng.safetensors", "state.json", "config.json", "train.json")
TENSOR_FILES = tuple(name for name in FILES if name.endswith(".safetensors"))
# What `save` and `point` leave behind when killed mid-write: only these names are removed.
PARTIAL = re.compile(r"\.(step-\d{8}|last|best)\.tmp")
STEP = re.compile(r"step-\d{8}")  # the names step_name makes; prune removes nothing else
RESUME_HINT = "resume from another checkpoint (--resume checkpoints/step-...) or start over with --force"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


# -- saving ---------------------------------------------------------------------------
def save(root: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         state: dict[str, Any], model_config: dict[str, Any], train_config: dict[str, Any]) -> Path:
    """Write checkpoints/step-N/ atomically and point `last` at it."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_contiguous(model.state_dict()), tmp / MODEL)
    moments, groups = _optimizer_tensors(optimizer)
    save_file(moments, tmp / "optimizer.safetensors")
    save_file(_torch_rng(), tmp / "rng.safetensors")
    write_json(tmp / "state.json", {**state, "optimizer": groups, "python_rng": _python_rng(), "numpy_rng": _numpy_rng()})
    write_json(tmp / "config.json", model_config)
    write_json(tmp / "train.json", train_config)
    write_json(tmp / "manifest.json", {name: sha256_file(tmp / name) for name in FILES})
    if final.exists():  # the same step written again (a resumed run's final checkpoint)
        shutil.rmtree(final)
    os.replace(tmp, final)
    point(root, "last", final)
    return final


def point(root: Path, link: str, target: Path) -> None:
    """Make root/link refer to target: a relative symlink, replaced by rename."""
    path = root / link
    tmp = root / f".{link}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(target.name, tmp)
    except OSError:  # pragma: no cover - file systems without symlinks: a one-line pointer file
        tmp.write_text(target.name + "\n", encoding="utf-8")
    os.replace(tmp, path)


def resolve_link(root: Path, link: str) -> Path | None:
    path = root / link
    if path.is_symlink():
        target = root / os.readlink(path)
        return target if target.is_dir() else None
    if path.is_file():  # pragma: no cover - pointer file
        target = root / path.read_text(encoding="utf-8").strip()
        return target if target.is_dir() else None
    return None


def prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` step checkpoints, and always the ones `last` and `best` name."""
    steps = sorted(p for p in root.glob("step-*") if STEP.fullmatch(p.name) and p.is_dir() and not p.is_symlink())
    protected = {resolve_link(root, "last"), resolve_link(root, "best")}
    for path in steps[: max(0, len(steps) - keep)]:
        if path not in protected:
            shutil.rmtree(path)


def clean_partial(root: Path) -> list[Path]:
    """Remove the hidden folders and links a killed run left half-written in its own
    checkpoints folder (only names `save` and `point` make); return what was removed."""
    removed = []
    if not root.is_dir():
        return removed
    for path in sorted(root.iterdir()):
        if not PARTIAL.fullmatch(path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def step_folders(root: Path) -> list[Path]:
    """The finished step-N checkpoints, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if re.fullmatch(r"step-\d{8}", p.name) and p.is_dir())


def newest_intact(root: Path) -> tuple[Path | None, list[str]]:
    """The newest step-N checkpoint that passes `verify`, and why each newer one failed."""
    problems = []
    for folder in reversed(step_folders(root)):
        try:
            verify(folder)
        except UserError as exc:
            problems.append(exc.message)
            continue
        return folder, problems
    return None, problems


# -- loading --------------------------------------------------------------------------
def verify(folder: Path) -> None:
    """Check every file against the manifest; a one-line error names the bad one."""
    manifest_path = folder / "manifest.json"
    hint = RESUME_HINT
    if not folder.is_dir():
        raise UserError(f"checkpoint {folder} does not exist", hint=hint)
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError):
        raise UserError(f"{manifest_path}: missing or unreadable, so the checkpoint cannot be trusted", hint=hint) from None
    for name in FILES:
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path}: missing from the checkpoint", hint=hint)
        if sha256_file(path) != manifest.get(name):
            raise UserError(f"{path}: corrupt or truncated (its checksum differs from manifest.json)", hint=hint)
    # A file can match its checksum and still not be safetensors (rewritten together with
    # the manifest): reading the headers finds that before anything is loaded.
    for name in TENSOR_FILES:
        try:
            with safe_open(folder / name, framework="pt"):
                pass
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{folder / name}: not a readable safetensors file ({_first_line(exc)})", hint=hint) from None
    for name in ("state.json", "config.json", "train.json"):
        try:
            if not isinstance(read_json(folder / name), dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise UserError(f"{folder / name}: not a valid JSON object ({_first_line(exc)})", hint=hint) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a file that is not one is a one-line error naming it."""
    from bigmodel_cli.lifecycle import interrupts_kept

    try:
        with interrupts_kept():  # a Ctrl-C while numpy builds the tensors is not a corrupt file
            return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot be read as safetensors ({_first_line(exc)})",
                        hint="the file is corrupt or truncated; " + RESUME_HINT) from None


def load_model_weights(folder: Path) -> dict[str, torch.Tensor]:
    return read_tensors(folder / MODEL)


def restore(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Load weights, optimizer moments and every RNG state; return the loop's state."""
    verify(folder)
    load_weights(model, load_model_weights(folder), folder / MODEL)
    state = read_json(folder / "state.json")
    if optimizer is not None:
        _load_optimizer(optimizer, read_tensors(folder / "optimizer.safetensors"), state["optimizer"])
    _set_rng(read_tensors(folder / "rng.safetensors"), state)
    for key in ("optimizer", "python_rng", "numpy_rng"):
        state.pop(key, None)
    return state


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path, strict: bool = True):
    """model.load_state_dict, with weights that do not fit the model's shapes named in one line."""
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (the model wants {tuple(own[k].shape)})"
             for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if strict:
        wrong += [f"{k} is missing" for k in own if k not in weights]
        wrong += [f"{k} is not in the model" for k in weights if k not in own]
    if wrong:
        raise UserError(f"{path}: the weights do not fit the model of its config.json: {'; '.join(wrong[:3])}"
                        + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""),
                        hint="the config or the weights were changed by hand; train the run again")
    return model.load_state_dict(weights, strict=strict)


# -- the pieces -------------------------------------------------------------------------
def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in sd["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return _contiguous(tensors), {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(groups["scalars"].items()):
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups["param_groups"]})


def _torch_rng() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda.{i}"] = s
    return states


def _python_rng() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_rng(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy_rng"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{folder / 'config.json'}: missing or not valid JSON", hint="the checkpoint is incomplete") from None
