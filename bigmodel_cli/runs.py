"""Finding a trained run in the workspace and loading its model (never from a pickle).

Every run lives in runs/NAME/ with config.json (the model), vocab.txt and meta.json (how
its text was cleaned and segmented) and checkpoints/{best,last}; later stages load the
`best` checkpoint when the run evaluated on dev, else `last`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bigmodel_cli import checkpoint as ckpt
from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import read_json


def run_folders(ws) -> list[Path]:
    root = ws.root / "runs"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if (p / "checkpoints").is_dir() and (p / "config.json").is_file()),
                  key=lambda p: (p / "config.json").stat().st_mtime)


def find_run(ws, name: str | None, *, kind: str | None = None) -> Path:
    """runs/NAME, or the newest run (of `kind`: 'pretrain' or 'finetune') when NAME is None or 'latest'."""
    folders = [p for p in run_folders(ws) if kind is None or run_kind(p) == kind]
    if name in (None, "latest"):
        if not folders:
            what = f"{kind} run" if kind else "trained run"
            raise UserError(f"no {what} in {ws.relative(ws.root / 'runs')}/", hint=f"run `bigmodel {kind or 'pretrain'}` first")
        return folders[-1]
    folder = ws.root / "runs" / name
    if folder not in run_folders(ws):
        known = ", ".join(p.name for p in folders) or "none yet"
        raise UserError(f"no run named '{name}' in {ws.relative(ws.root / 'runs')}/", hint=f"known runs: {known}")
    if kind is not None and run_kind(folder) != kind:
        raise UserError(f"run '{name}' is a {run_kind(folder)} run, not a {kind} run")
    return folder


def run_kind(folder: Path) -> str:
    return "finetune" if read_json(folder / "config.json").get("num_labels") else "pretrain"


def model_checkpoint(folder: Path) -> Path:
    root = folder / "checkpoints"
    found = ckpt.resolve_link(root, "best") or ckpt.resolve_link(root, "last")
    if found is None:
        raise UserError(f"{root}/ has no finished checkpoint", hint="the run was interrupted before its first one; resume or train it again")
    return found


def load_model(folder: Path, checkpoint: Path | None = None, device: str = "cpu", **overrides: Any):
    """The run's Transformer with the weights of `checkpoint` (default: best, else last), in eval mode."""
    import torch

    from bigmodel_cli.model import ModelConfig, Transformer

    checkpoint = checkpoint or model_checkpoint(folder)
    ckpt.verify(checkpoint)
    cfg = ModelConfig.from_dict({**ckpt.read_config(checkpoint), **overrides})
    model = Transformer(cfg)
    model.load_state_dict(ckpt.load_model_weights(checkpoint))
    return model.to(torch.device(device)).eval(), checkpoint
