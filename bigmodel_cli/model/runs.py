"""Finding a trained run in the workspace and loading its model (never from a pickle).

Every run lives in runs/NAME/ with config.json (the model), vocab.txt and meta.json (how
its text was cleaned and segmented), train.json (the training options, the vocabulary's
sha256 and whether the run finished) and checkpoints/{best,last}; later stages load the
`best` checkpoint when the run evaluated on dev, else `last`.

Loading checks what a person or a half-finished run can leave wrong: a config that
cannot build a model, a config.json that disagrees with the checkpoint's, a vocab.txt
other than the one the model was trained on, and a run that was interrupted.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import read_json, sha256_file
from bigmodel_cli.model import checkpoint as ckpt

RETRAIN = "restore it, or train the run again"


def run_folders(ws) -> list[Path]:
    root = ws.root / "runs"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if (p / "checkpoints").is_dir() and (p / "config.json").is_file()),
                  key=lambda p: (p / "config.json").stat().st_mtime)


def find_run(ws, name: str | None, *, kind: str | None = None) -> Path:
    """runs/NAME, or the newest run (of `kind`: 'pretrain' or 'finetune') when NAME is None or
    'latest'. The newest finished run wins over newer interrupted ones (with a warning)."""
    folders = [p for p in run_folders(ws) if kind is None or run_kind(p) == kind]
    if name in (None, "latest"):
        if not folders:
            what = f"{kind} run" if kind else "trained run"
            raise UserError(f"no {what} in {ws.relative(ws.root / 'runs')}/", hint=f"run `bigmodel {kind or 'pretrain'}` first")
        finished = [p for p in folders if is_complete(p)]
        if finished and finished[-1] != folders[-1]:
            for skipped in folders[folders.index(finished[-1]) + 1:]:
                warn(f"skipped run '{skipped.name}': it was interrupted ({resume_advice(skipped)}); "
                     f"using '{finished[-1].name}'")
        return finished[-1] if finished else folders[-1]
    folder = ws.root / "runs" / name
    if folder not in run_folders(ws):
        known = ", ".join(p.name for p in folders) or "none yet"
        raise UserError(f"no run named '{name}' in {ws.relative(ws.root / 'runs')}/", hint=f"known runs: {known}")
    if kind is not None and run_kind(folder) != kind:
        raise UserError(f"run '{name}' is a {run_kind(folder)} run, not a {kind} run")
    return folder


def run_kind(folder: Path) -> str:
    """'finetune' for a classifier, else 'pretrain': read from the checkpoint's config (which
    its manifest protects) where there is one, so that a hand-edited config.json is caught
    when the run is loaded instead of making it look like another kind of run."""
    config = _read_object(folder / "config.json")
    found = ckpt.resolve_link(folder / "checkpoints", "best") or ckpt.resolve_link(folder / "checkpoints", "last")
    if found is not None:
        with contextlib.suppress(UserError):
            config = ckpt.read_config(found)
    return "finetune" if config.get("num_labels") else "pretrain"


def _read_object(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: missing or not valid JSON ({exc})", hint=RETRAIN) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object", hint=RETRAIN)
    return data


# -- finished or interrupted -------------------------------------------------------------
def train_options(folder: Path) -> dict[str, Any]:
    """The run's train.json ({} for a run folder without one)."""
    path = folder / "train.json"
    return _read_object(path) if path.exists() else {}


def is_complete(folder: Path) -> bool:
    """False while a run trains and after it was interrupted; runs written before the
    flag existed count as complete."""
    return train_options(folder).get("complete", True) is not False


def resume_advice(folder: Path) -> str:
    last = ckpt.resolve_link(folder / "checkpoints", "last")
    where = f"its last checkpoint is {last.name}" if last else "it has no finished checkpoint"
    return f"{where}; finish it with `bigmodel {run_kind(folder)} --name {folder.name} --resume auto`"


def warn(message: str) -> None:
    """A warning line on stderr (library calls have no console; the CLI's stdout stays clean)."""
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


def model_checkpoint(folder: Path) -> Path:
    root = folder / "checkpoints"
    found = ckpt.resolve_link(root, "best") or ckpt.resolve_link(root, "last")
    if found is None:
        raise UserError(f"{root}/ has no finished checkpoint", hint="the run was interrupted before its first one; resume or train it again")
    return found


# -- loading -----------------------------------------------------------------------------
def load_model(folder: Path, checkpoint: Path | None = None, device: str = "cpu", **overrides: Any):
    """The run's Transformer with the weights of `checkpoint` (default: best, else last), in eval mode."""
    import torch

    from bigmodel_cli.model.transformer import ModelConfig, Transformer

    if not is_complete(folder):
        warn(f"run '{folder.name}' was interrupted and is used as it stands ({resume_advice(folder)})")
    checkpoint = checkpoint or model_checkpoint(folder)
    ckpt.verify(checkpoint)
    saved = ckpt.read_config(checkpoint)
    ModelConfig.checked(saved, str(checkpoint / "config.json"))
    check_run_config(folder, saved)
    cfg = ModelConfig.checked({**saved, **overrides}, str(checkpoint / "config.json"))
    weights = ckpt.load_model_weights(checkpoint)
    check_vocab(folder, weights)
    model = Transformer(cfg)
    ckpt.load_weights(model, weights, checkpoint / ckpt.MODEL)
    return model.to(torch.device(device)).eval(), checkpoint


def check_run_config(folder: Path, saved: dict[str, Any]) -> None:
    """The run's config.json (what later stages read) must build a model and agree with the
    checkpoint's config (what the weights were saved with)."""
    from bigmodel_cli.model.transformer import ModelConfig

    path = folder / "config.json"
    ours = _read_object(path)
    ModelConfig.checked(ours, str(path))
    differ = [f"'{k}' is {ours.get(k)!r} there but {saved.get(k)!r} in the checkpoint"
              for k in sorted(set(ours) | set(saved)) if ours.get(k) != saved.get(k)]
    if differ:
        raise UserError(f"{path}: {'; '.join(differ)}", hint=f"the config was changed by hand; {RETRAIN}")


def recorded_vocab_hash(folder: Path) -> str | None:
    """The sha256 of vocab.txt recorded when the run started (None for older runs)."""
    meta = folder / "meta.json"
    if meta.is_file():
        with_hash = _read_object(meta).get("vocab_sha256")
        if with_hash:
            return with_hash
    return train_options(folder).get("vocab_sha256")


def check_vocab(folder: Path, weights: dict[str, Any]) -> None:
    """vocab.txt maps words to the rows of the embedding table: a changed file makes every
    prediction silently wrong, so it must be the one recorded, with one row per token."""
    path = folder / "vocab.txt"
    if not path.is_file():
        return  # TextPipeline names the missing file where it is needed
    recorded = recorded_vocab_hash(folder)
    if recorded and sha256_file(path) != recorded:
        raise UserError(f"{path}: not the vocabulary the run was trained on (its sha256 differs from the one recorded "
                        "in meta.json), so the words would map to the wrong ids", hint=RETRAIN)
    table = weights.get("embeddings.tokens.weight")
    if table is None:
        return
    with open(path, encoding="utf-8") as handle:
        tokens = sum(1 for line in handle if line.strip("\n"))
    if tokens != table.shape[0]:
        raise UserError(f"{path}: {tokens:,} tokens, but the model's embedding table has {table.shape[0]:,} rows; "
                        "the ids would not match", hint=RETRAIN)
