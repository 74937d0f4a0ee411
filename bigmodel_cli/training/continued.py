"""`pretrain --from`: continued (domain-adaptive) pretraining. The new run starts from the
weights of a pretrain run of this workspace or of a local Hugging Face BERT folder
(model.hf_import reads it), keeps that model's shape, and reads the workspace's text through
that model's own tokenizer: the ids must be the ones its embeddings were trained on, so the
workspace's vocabulary is never used. The optimizer and the learning-rate schedule start
fresh (a source's optimizer state belongs to its own schedule and data).

A source is resolved and checked whole before the run folder is touched; every refusal is
one line."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import UserError

SHAPE = ("layers", "dim", "heads", "ffn")


@dataclass(frozen=True)
class Source:
    kind: str  # "run" (runs/NAME/) or "hf" (a Hugging Face folder)
    label: str  # the run's name, or the folder's absolute path: what train.json and status show
    weights: tuple[Path, ...]  # the files whose hashes are the run's lineage and decide staleness
    config: dict[str, Any]  # the source's model config, under our field names
    objective: str  # what the source was trained for: mlm or clm
    tokenizer: Path | None = None  # the folder whose tokenizer files encode the text (the run, or the prepared base)

    @property
    def weights_folder(self) -> Path:
        return self.weights[0].parent


def resolve_source(ws, cfg, given: set[str] | None):
    """(cfg, source): the pretrain run (a name, or latest) or Hugging Face folder (a path)
    that `--from` names, with the options checked against it (check_options) before a
    folder's tokenizer is prepared in the workspace: a refusal writes nothing."""
    from bigmodel_cli.model import hf_import

    if not hf_import.is_hf_folder(cfg.from_run, ws.root / "runs"):
        source = _run_source(ws, cfg.from_run)
        check_vocab_size(source)
        return check_options(cfg, source, given), source
    folder, config, weights = hf_import.read_hf_shape(cfg.from_run)
    source = Source("hf", str(folder), tuple(weights), config, "mlm")
    cfg = check_options(cfg, source, given)
    base = hf_import.prepare_base(folder, ws.meta / "hf")
    return cfg, dataclasses.replace(source, tokenizer=base)


def _run_source(ws, value: str) -> Source:
    from bigmodel_cli.model import checkpoint as ckpt
    from bigmodel_cli.model.runs import find_run, model_checkpoint

    folder = find_run(ws, value, kind="pretrain")  # an unknown name lists the runs there are
    checkpoint = model_checkpoint(folder)
    ckpt.verify(checkpoint)
    config = ckpt.read_config(checkpoint)
    return Source("run", folder.name, (checkpoint / ckpt.MODEL,), config, "clm" if config.get("causal") else "mlm", folder)


def source_label(ws, value: str) -> str:
    """--from as train.json records it: `latest` as the run it meant, a folder as its absolute
    path, so that a resume continues from the same source."""
    from bigmodel_cli.model import hf_import
    from bigmodel_cli.model.runs import find_run

    if hf_import.is_hf_folder(value, ws.root / "runs"):
        return os.path.abspath(Path(value).expanduser())
    return find_run(ws, value, kind="pretrain").name if value == "latest" else value


def check_options(cfg, source: Source, given: set[str] | None) -> Any:
    """The options against the source: those that would change its shape or objective are
    refused (the weights fix the shape, and a silently ignored --layers would leave the user
    believing in another model); an --objective not given is the source's. Returns cfg."""
    from bigmodel_cli.model.transformer import architecture

    theirs = source.config
    mine = tuple(theirs[k] for k in SHAPE)
    what = f"run '{source.label}'" if source.kind == "run" else source.label
    if given is not None and "objective" not in given:
        cfg = dataclasses.replace(cfg, objective=source.objective)
    if source.kind == "hf" and cfg.objective != "mlm":
        raise UserError(f"--objective {cfg.objective}: {what} is a masked-LM BERT, so continuing it takes --objective mlm")
    if cfg.objective != source.objective:
        raise UserError(f"--objective {cfg.objective}: run '{source.label}' was trained with {source.objective}, and "
                        f"its weights continue only as {source.objective}",
                        hint=f"leave --objective out, or pass --objective {source.objective}")
    problems = [f"--{k} {getattr(cfg, k)} (it has {theirs[k]})" for k in SHAPE if getattr(cfg, k) and getattr(cfg, k) != theirs[k]]
    if given is not None and "size" in given and cfg.size != "auto" and architecture(dataclasses.replace(cfg, **dict.fromkeys(SHAPE, 0))) != mine:
        problems.append(f"--size {cfg.size}")
    if given is not None and "max_positions" in given and cfg.max_positions != theirs["max_positions"]:
        problems.append(f"--max-positions {cfg.max_positions} (it has {theirs['max_positions']})")
    if problems:
        raise UserError(f"{', '.join(problems)}: continued pretraining keeps the shape of {what} "
                        f"({theirs['layers']} layers x {theirs['dim']}, {theirs['heads']} heads, ffn {theirs['ffn']})",
                        hint="leave the shape options out")
    if cfg.init_embeddings:
        raise UserError(f"--init-embeddings {cfg.init_embeddings}: the token embeddings come from {what} (--from)",
                        hint="leave one of the two out")
    if cfg.seq_len > theirs["max_positions"]:
        raise UserError(f"--seq-len {cfg.seq_len} is longer than {what} can read (its position table holds "
                        f"{theirs['max_positions']})", hint=f"pass --seq-len {theirs['max_positions']} or less")
    return dataclasses.replace(cfg, max_positions=theirs["max_positions"])


def check_vocab_size(source: Source, vocab_size: int | None = None) -> None:
    """The source's vocabulary must be the one its embeddings were trained on (hf_import checks
    a folder's; a run's vocab.txt may have been edited since)."""
    from bigmodel_cli.data.tokenizer import Encoder

    if vocab_size is None:
        vocab_size = len(Encoder.from_folder(source.tokenizer).vocab)
    rows = source.config["vocab_size"]
    if vocab_size != rows:
        raise UserError(f"{source.tokenizer / 'vocab.txt'} holds {vocab_size:,} tokens, but the model's word-embedding "
                        f"matrix has {rows:,} rows; the ids would not match",
                        hint="the vocabulary was changed after the model was trained; restore the one it was trained with")


def model_config(cfg, source: Source, vocab_size: int):
    """The source's model with the new run's dropout and objective."""
    from bigmodel_cli.model.transformer import ModelConfig

    check_vocab_size(source, vocab_size)
    theirs = source.config
    return ModelConfig.from_dict({**theirs, "dropout": cfg.dropout, "attention_dropout": cfg.dropout, "lm_head": True,
                                  "causal": cfg.objective == "clm", "num_labels": 0, "labels": []})


def load_source_weights(model, source: Source) -> dict[str, Any]:
    """Copy the source's weights into the new model: the encoder always, the LM head where the
    source has one whole (else the head starts new: `new` names its tensors)."""
    from bigmodel_cli.model import checkpoint as ckpt
    from bigmodel_cli.model import hf_import

    if source.kind == "hf":
        _, weights, _, meta = hf_import.read_hf_folder(source.label)
        unused = list(meta["unused_weights"])
    else:
        weights, unused = ckpt.load_model_weights(source.weights_folder), []
    result = ckpt.load_weights(model, weights, source.weights[0], strict=False)
    new = sorted(result.missing_keys)
    encoder_new = [k for k in new if not k.startswith("lm_head.")]
    if encoder_new:  # hf_import and the checkpoint's manifest make this unreachable short of a bug
        raise UserError(f"{source.label}: the weights lack {encoder_new[0]}", hint="the source holds no complete encoder")
    return {"new": new, "unused": sorted(result.unexpected_keys) + unused,
            "lm_head": "new" if any(k.startswith("lm_head.") for k in new) else "from the source"}


def lineage(ws, source: Source, inputs: list[dict[str, str]]) -> dict[str, Any]:
    """Where the run started, as train.json and the stage record keep it: the source and the
    sha256 of its weights (taken from the stage's input hashes, not hashed twice)."""
    hashes = {i["path"]: i["sha256"] for i in inputs}
    return {"kind": source.kind, "source": source.label,
            "weights": [{"path": ws.relative(p), "sha256": hashes.get(ws.relative(p))} for p in source.weights]}


def head_line(init: dict[str, Any] | None) -> str | None:
    """The one line that says a fresh masked-LM head was needed, or None."""
    if init and init.get("lm_head") == "new":
        return (f"{init['source']} has no masked-LM head: a new one is trained on top of its encoder "
                "(the tied decoder is its word embeddings; the transform and bias start fresh)")
    return None
