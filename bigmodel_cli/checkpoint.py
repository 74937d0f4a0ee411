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
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import read_json, sha256_file, write_json

MODEL = "model.safetensors"
FILES = (MODEL, "optimizer.safetensors", "rng.safetensors", "state.json", "config.json", "train.json")


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
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    protected = {resolve_link(root, "last"), resolve_link(root, "best")}
    for path in steps[: max(0, len(steps) - keep)]:
        if path not in protected:
            shutil.rmtree(path)


def clean_partial(root: Path) -> None:
    """Remove checkpoints a killed run left half-written."""
    for tmp in root.glob(".step-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


# -- loading --------------------------------------------------------------------------
def verify(folder: Path) -> None:
    """Check every file against the manifest; a one-line error names the bad one."""
    manifest_path = folder / "manifest.json"
    hint = "resume from another checkpoint (--resume checkpoints/step-...) or start over with --force"
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


def load_model_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / MODEL
    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path}: cannot be read as safetensors ({exc})", hint="the file is corrupt or truncated") from None


def restore(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Load weights, optimizer moments and every RNG state; return the loop's state."""
    verify(folder)
    model.load_state_dict(load_model_weights(folder))
    state = read_json(folder / "state.json")
    if optimizer is not None:
        _load_optimizer(optimizer, load_file(folder / "optimizer.safetensors"), state["optimizer"])
    _set_rng(load_file(folder / "rng.safetensors"), state)
    for key in ("optimizer", "python_rng", "numpy_rng"):
        state.pop(key, None)
    return state


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
