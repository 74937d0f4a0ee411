"""`bigmodel pretrain`: a Transformer from scratch on the workspace's corpus, masked (BERT)
or causal language modelling, through the shared training loop.

Data: the `tokens` of data/processed/{train,dev}.jsonl, mapped through vocab.txt (the ids
every later stage uses), each document followed by [SEP], concatenated and cut into blocks
of seq_len that start with [CLS]. The last block is padded. Blocks are cached as .npy in the
run folder and memory-mapped, so processes of a torchrun launch share one copy.

Writes runs/NAME/: config.json (the model), train.json, vocab.txt, meta.json (how text was
cleaned and segmented), metrics.jsonl, loss.png, checkpoints/{step-N,last,best}/, report.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.config import PretrainConfig, resolve_checked
from bigmodel_cli.errors import InputError, UserError
from bigmodel_cli.fileio import atomic_write, read_json, write_json
from bigmodel_cli.vocab import CLS, MASK, PAD, SEP, SPECIAL_TOKENS, Vocab

OBJECTIVES = ("mlm", "clm")
INT_OPTIONS = ("batch_size", "accumulate", "epochs", "max_steps", "eval_every", "eval_batches", "checkpoint_every",
               "keep", "early_stopping", "log_every", "layers", "dim", "heads", "ffn", "seq_len", "max_positions")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# -- options ------------------------------------------------------------------------------
def resolve_config(section: dict[str, Any] | None, overrides: dict[str, Any]) -> PretrainConfig:
    """Defaults < [pretrain] in bigmodel.toml < options; every problem reported at once."""
    return resolve_checked(PretrainConfig, section, overrides, INT_OPTIONS, validate)


def validate_shape(cfg) -> list[str]:
    """--size and the --layers/--dim/--heads/--ffn that override it (pretrain, and finetune
    --from scratch)."""
    from bigmodel_cli.model import SIZES

    problems = []
    if cfg.size not in SIZES:
        problems.append(f"--size must be one of {', '.join(SIZES)}, got '{cfg.size}'")
    for key in ("layers", "dim", "heads", "ffn"):
        if getattr(cfg, key) < 0:
            problems.append(f"--{key} must be a positive integer (0 takes it from --size), got {getattr(cfg, key)}")
    _, dim, heads, _ = architecture(cfg)
    if dim > 0 and heads > 0 and dim % heads:
        problems.append(f"--heads ({heads}) must divide --dim ({dim})")
    return problems


def validate(cfg: PretrainConfig) -> list[str]:
    from bigmodel_cli.train import validate as validate_loop

    problems = validate_loop(cfg)
    if cfg.objective not in OBJECTIVES:
        problems.append(f"--objective must be mlm or clm, got '{cfg.objective}'")
    problems += validate_shape(cfg)
    if cfg.seq_len < 8:
        problems.append(f"--seq-len must be at least 8, got {cfg.seq_len}")
    if cfg.max_positions < 1:
        problems.append(f"--max-positions must be a positive integer, got {cfg.max_positions}")
    elif cfg.seq_len > cfg.max_positions:
        problems.append(f"--seq-len ({cfg.seq_len}) is longer than the position table (--max-positions {cfg.max_positions})")
    if not 0 <= cfg.dropout < 1:
        problems.append(f"--dropout must be in [0, 1), got {cfg.dropout}")
    if not 0 < cfg.mask_prob < 1:
        problems.append(f"--mask-prob must be between 0 and 1, got {cfg.mask_prob}")
    return problems


def architecture(cfg: PretrainConfig) -> tuple[int, int, int, int]:
    """(layers, dim, heads, ffn): the preset, with explicit options winning."""
    from bigmodel_cli.model import SIZES

    layers, dim, heads, ffn = SIZES.get(cfg.size, SIZES["small"])
    dim = cfg.dim or dim
    if cfg.dim and not cfg.ffn:
        ffn = 4 * dim
    return cfg.layers or layers, dim, cfg.heads or heads, cfg.ffn or ffn


def model_config(cfg: PretrainConfig, vocab: Vocab):
    from bigmodel_cli.model import ModelConfig

    layers, dim, heads, ffn = architecture(cfg)
    return ModelConfig(vocab_size=len(vocab), layers=layers, dim=dim, heads=heads, ffn=ffn,
                       max_positions=cfg.max_positions, dropout=cfg.dropout, attention_dropout=cfg.dropout,
                       pad_id=vocab.id(PAD), causal=cfg.objective == "clm")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UserError(f"--name must be letters, digits, '_', '.' or '-' (at most 64, not starting with '.' '_' '-'), got '{name}'")
    return name


# -- data -----------------------------------------------------------------------------------
def encode_blocks(path: Path, vocab: Vocab, seq_len: int) -> np.ndarray:
    """(blocks, seq_len) int32: documents + [SEP], concatenated, cut into [CLS] + seq_len-1."""
    body = seq_len - 1
    stream: list[int] = []
    sep = vocab.id(SEP)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                tokens = json.loads(line)["tokens"]
            except (ValueError, KeyError, TypeError):
                raise InputError(path, "not a processed record with a 'tokens' list", line=number,
                                 hint="run `bigmodel preprocess --force` to rebuild it") from None
            stream.extend(vocab.encode(tokens))
            stream.append(sep)
    n = math.ceil(len(stream) / body) if stream else 0
    out = np.full((n, seq_len), vocab.id(PAD), dtype=np.int32)
    out[:, 0] = vocab.id(CLS)
    if n:
        flat = np.asarray(stream, dtype=np.int32)
        padded = np.full(n * body, vocab.id(PAD), dtype=np.int32)
        padded[: len(flat)] = flat
        out[:, 1:] = padded.reshape(n, body)
    return out


def cached_blocks(path: Path, vocab: Vocab, seq_len: int, cache_dir: Path, writer: bool) -> np.ndarray:
    """Encoded blocks, computed once per (file, vocab, seq_len) and memory-mapped."""
    key = hashlib.sha256(f"{path.stat().st_size}:{path.stat().st_mtime_ns}:{len(vocab)}:{seq_len}:{vocab.tokens[-1]}".encode()).hexdigest()[:16]
    cache = cache_dir / f"{path.stem}-{seq_len}-{key}.npy"
    if writer and not cache.exists():
        blocks = encode_blocks(path, vocab, seq_len)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for old in cache_dir.glob(f"{path.stem}-*.npy"):
            old.unlink()
        with atomic_write(cache, "wb") as handle:
            np.save(handle, blocks)
    return np.load(cache, mmap_mode="r", allow_pickle=False)


class LMTask:
    """Language-model batches over packed blocks; see train.Task."""

    monitor = "loss"
    higher_is_better = False

    def __init__(self, train: np.ndarray, dev: np.ndarray | None, batch_size: int, seed: int, vocab: Vocab,
                 mask_prob: float = 0.15, eval_batches: int = 20):
        self.train, self.dev, self.batch_size, self.seed = train, dev, batch_size, seed
        self.vocab_size, self.mask_prob, self.eval_batches = len(vocab), mask_prob, eval_batches
        self.pad, self.mask_id = vocab.id(PAD), vocab.id(MASK)
        self.first_word = len(SPECIAL_TOKENS)  # ids below this are special and never masked
        self.steps_per_epoch = len(train) // batch_size
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.train)))
        return self._order[1]

    def batch(self, epoch: int, index: int, rows: slice):
        import torch

        picked = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size][rows]
        ids = torch.from_numpy(np.asarray(self.train[picked], dtype=np.int64))
        return self.prepare(ids, [self.seed, epoch, index], rows)

    def prepare(self, ids, key: list[int], rows: slice = slice(None)):
        import torch

        batch = {"ids": ids}
        if bool((ids == self.pad).any()):
            batch["attention_mask"] = ids != self.pad
        return batch

    def count(self, batch) -> int:
        return int((batch["ids"][:, 1:] != self.pad).sum())

    def tokens(self, batch) -> int:
        return int((batch["ids"] != self.pad).sum())

    def dev_batches(self):
        import torch

        if self.dev is None or not len(self.dev):
            return
        n = len(self.dev) if not self.eval_batches else min(len(self.dev), self.eval_batches * self.batch_size)
        for i, start in enumerate(range(0, n, self.batch_size)):
            ids = torch.from_numpy(np.asarray(self.dev[start:min(n, start + self.batch_size)], dtype=np.int64))
            yield self.prepare(ids, [self.seed, 1 << 30, i])

    def evaluate(self, model, autocast) -> dict[str, float]:
        device = next(model.parameters()).device
        total = terms = correct = 0.0
        for batch in self.dev_batches():
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                loss, n, right = type(self).loss(model, batch)
            total, terms, correct = total + float(loss), terms + float(n), correct + float(right)
        if not terms:
            return {}
        mean = total / terms
        return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "accuracy": correct / terms}


class MLMTask(LMTask):
    def prepare(self, ids, key: list[int], rows: slice = slice(None)):
        """BERT's masking, drawn for the whole global batch from a generator seeded by the
        step and then cut to `rows`: the same masks for any number of processes or parts."""
        import torch

        g = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        shape = (self.batch_size, ids.shape[1])
        pick, how, random_ids = (torch.rand(shape, generator=g), torch.rand(shape, generator=g),
                                 torch.randint(self.first_word, max(self.vocab_size, self.first_word + 1), shape, generator=g))
        pick, how, random_ids = pick[rows][: len(ids)], how[rows][: len(ids)], random_ids[rows][: len(ids)]
        chosen = (pick < self.mask_prob) & (ids >= self.first_word)
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        inputs = ids.clone()
        inputs[chosen & (how < 0.8)] = self.mask_id
        swap = chosen & (how >= 0.8) & (how < 0.9)
        inputs[swap] = random_ids[swap]
        batch = {"ids": inputs, "labels": labels}
        if bool((ids == self.pad).any()):
            batch["attention_mask"] = ids != self.pad
        return batch

    def count(self, batch) -> int:
        return int((batch["labels"] != -100).sum())

    @staticmethod
    def loss(model, batch):
        hidden, _ = model.encode(batch["ids"], attention_mask=batch.get("attention_mask"))
        return model.mlm_loss(hidden, batch["labels"])


class CLMTask(LMTask):
    @staticmethod
    def loss(model, batch):
        hidden, _ = model.encode(batch["ids"], attention_mask=batch.get("attention_mask"), causal=True)
        return model.clm_loss(hidden, batch["ids"])


# -- initial embeddings ------------------------------------------------------------------------
def init_embeddings(ws, model, vocab: Vocab, name: str) -> dict[str, Any]:
    """Copy a workspace embedding run's vectors into the token embeddings, rescaled to the
    model's initial spread (BERT's N(0, 0.02)), and report the coverage."""
    import torch

    from bigmodel_cli.embed import find_run
    from bigmodel_cli.embed_eval import load_vectors

    run_name, folder = find_run(ws, name)
    kv = load_vectors(folder)  # safetensors + JSON, not a pickle; 10x faster than parsing vectors.txt
    weight = model.embeddings.tokens.weight
    if kv.vector_size != weight.shape[1]:
        raise UserError(f"embeddings '{run_name}' have {kv.vector_size} dimensions but the model is {weight.shape[1]} wide",
                        hint=f"pass --dim {kv.vector_size} (with --heads dividing it), or train embeddings of "
                             f"{weight.shape[1]} dimensions: bigmodel embed --dim {weight.shape[1]} --name {run_name}")
    words = [(i, t) for i, t in enumerate(vocab.tokens) if t not in SPECIAL_TOKENS]
    found = [(i, t) for i, t in words if t in kv.key_to_index]
    if found:
        vectors = np.stack([kv[t] for _, t in found]).astype(np.float32)
        vectors *= 0.02 / max(float(vectors.std()), 1e-12)
        with torch.no_grad():
            weight[torch.tensor([i for i, _ in found])] = torch.from_numpy(vectors)
    return {"name": run_name, "covered": len(found), "words": len(words),
            "coverage": round(len(found) / max(1, len(words)), 4)}


# -- the stage -----------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    skipped: bool
    name: str
    folder: Path
    record: dict[str, Any] | None
    report: dict[str, Any]


def find_processed(ws) -> tuple[Path, Path | None, Path]:
    train, dev, vocab = ws.processed / "train.jsonl", ws.processed / "dev.jsonl", ws.processed / "vocab.txt"
    if not train.is_file() or not vocab.is_file():
        raise UserError(f"no processed data in {ws.relative(ws.processed)}/ (train.jsonl and vocab.txt)",
                        hint="run `bigmodel preprocess FILE` first")
    return train, (dev if dev.is_file() and dev.stat().st_size else None), vocab


def resume_point(folder: Path, resume: str | None) -> Path | None:
    """The checkpoint to continue from, verified: `auto` takes `last`, or when `last` is
    gone the newest intact step-N (never starting over beside them); None when the run has
    no checkpoint at all."""
    from bigmodel_cli import checkpoint as ckpt
    from bigmodel_cli.runs import warn
    from bigmodel_cli.train import Dist

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
    from bigmodel_cli import checkpoint as ckpt
    from bigmodel_cli.fileio import sha256_file
    from bigmodel_cli.runs import recorded_vocab_hash
    from bigmodel_cli.train import RESUMABLE

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
        listed = ", ".join(f"--{k.replace('_', '-')} {d[1]} (the run has {d[0]})" for k, d in refused.items())
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


def pretrain(ws, cfg: PretrainConfig | None = None, *, name: str | None = None, seed: int = 42, resume: str | None = None,
             force: bool = False, show_progress: bool = False, console=None, log_lines: bool = False,
             given: set[str] | None = None) -> PretrainResult:
    """Pretrain one model into runs/NAME/ (see the module docstring). `given`: the options
    the command line set (see inherit_options)."""
    from bigmodel_cli.train import Dist

    cfg = cfg or PretrainConfig()
    problems = validate(cfg)
    if problems:
        raise UserError("; ".join(problems))
    name = check_name(name or cfg.objective)
    train_path, dev_path, vocab_path = find_processed(ws)
    folder = ws.root / "runs" / name
    start = resume_point(folder, resume)
    cfg, seed = inherit_options(cfg, seed, start, given)
    stage = f"pretrain:{name}"
    params = {**dataclasses.asdict(cfg), "name": name, "seed": seed}
    input_paths = [p for p in (train_path, dev_path, vocab_path) if p is not None]
    if cfg.init_embeddings:
        from bigmodel_cli.embed import find_run

        input_paths.append(find_run(ws, cfg.init_embeddings)[1])
    inputs = ws.hash_paths(input_paths)
    dist = Dist.from_env()

    from bigmodel_cli.workspace import StageRun, unchanged

    last = ws.last_record(stage)
    if resume is None and not force and unchanged(ws, last, params, inputs):
        return PretrainResult(True, name, folder, last, _read(folder / "report.json"))
    if resume is None and not force and (folder / "checkpoints").exists():
        raise UserError(f"{ws.relative(folder)}/ already holds a run with other inputs or options",
                        hint="continue it with --resume auto, start over with --force, or pick another --name")
    lock = ws.lock(f"pretrain --name {name}") if dist.main else no_lock()
    with lock:
        if dist.main and force and start is None and folder.exists():
            shutil.rmtree(folder)
        run = StageRun(ws, stage, params, inputs, config=ws.config_sections("project", "pretrain"))
        with record_failure(run, dist):
            report = _run(ws, cfg, name, seed, folder, train_path, dev_path, vocab_path, start, dist, show_progress,
                          console, log_lines)
        record = None
        if dist.main:
            outputs = [folder / f for f in ("config.json", "vocab.txt", "meta.json", "metrics.jsonl", "report.json")]
            outputs.append(ws.absolute(report["checkpoint"]) / "model.safetensors")
            record = run.finish([p for p in outputs if p.exists()], _headline(report))
        return PretrainResult(False, name, folder, record, report)


@contextlib.contextmanager
def record_failure(run, dist):
    """A run that ends in an error, Ctrl-C or SIGTERM leaves a failed record (rank 0), so
    that `status` says so instead of showing the previous run."""
    try:
        yield
    except BaseException as exc:
        if dist.main:
            if isinstance(exc, UserError):
                error = exc.one_line()
            elif isinstance(exc, KeyboardInterrupt):
                error = "interrupted (Ctrl-C); continue with --resume auto"
            else:
                error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):  # the original error matters more than the record
                run.finish([], {}, status="failed", extra={"error": error})
        raise


def _run(ws, cfg: PretrainConfig, name: str, seed: int, folder: Path, train_path: Path, dev_path: Path | None,
         vocab_path: Path, start: Path | None, dist, show_progress: bool, console, log_lines: bool) -> dict[str, Any]:
    import torch

    from bigmodel_cli.fileio import sha256_file
    from bigmodel_cli.model import Transformer, training_flops
    from bigmodel_cli.tokenizer import copy_tokenizer_files
    from bigmodel_cli.train import fit, pick_device, seed_everything

    vocab = Vocab.load(vocab_path)
    mcfg = model_config(cfg, vocab)
    # Everything that can refuse the run is checked before the run folder is touched.
    pick_device(cfg.device, dist)
    vocab_hash = sha256_file(vocab_path)
    changed = check_resume(folder, start, mcfg, cfg, seed, ws.relative(vocab_path), vocab_hash) if start is not None else {}
    if dist.main:
        folder.mkdir(parents=True, exist_ok=True)
    if dist.world > 1 and not torch.distributed.is_initialized():
        cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    cache = folder / "data"
    train = cached_blocks(train_path, vocab, cfg.seq_len, cache, dist.main) if dist.world == 1 else None
    if dist.world > 1:  # rank 0 encodes, the others map the same file
        if dist.main:
            cached_blocks(train_path, vocab, cfg.seq_len, cache, True)
            if dev_path:
                cached_blocks(dev_path, vocab, cfg.seq_len, cache, True)
        torch.distributed.barrier()
        train = cached_blocks(train_path, vocab, cfg.seq_len, cache, False)
    dev = cached_blocks(dev_path, vocab, cfg.seq_len, cache, dist.main) if dev_path else None
    _check_sizes(ws, train, train_path, cfg, dist.world)
    task = (MLMTask if cfg.objective == "mlm" else CLMTask)(train, dev, cfg.batch_size, seed, vocab, cfg.mask_prob, cfg.eval_batches)

    seed_everything(seed)
    model = Transformer(mcfg)
    coverage = init_embeddings(ws, model, vocab, cfg.init_embeddings) if cfg.init_embeddings and start is None else None
    options = {**dataclasses.asdict(cfg), "seed": seed, "world_size": dist.world, "vocab_sha256": vocab_hash}
    if dist.main:
        write_json(folder / "config.json", mcfg.to_dict())
        if start is None:  # a resumed run keeps its own copies (check_resume proved the vocabulary the same)
            copy_tokenizer_files(ws.processed, folder)
        write_train_options(folder, options, start=start, changed=changed, complete=False)
    result = fit(model, task, cfg, folder, seed=seed, model_config=mcfg.to_dict(), resume=start,
                 show_progress=show_progress, console=console, log_lines=log_lines,
                 extra_state={"objective": cfg.objective, "vocab_sha256": vocab_hash})
    predicted = cfg.batch_size * (cfg.seq_len - 1) * (cfg.mask_prob if cfg.objective == "mlm" else 1.0)
    report = {
        "name": name, "objective": cfg.objective, "model": mcfg.to_dict(),
        "parameters": model.num_parameters(), "parameters_without_embeddings": model.num_parameters(embeddings=False),
        "data": {"train_blocks": int(len(train)), "dev_blocks": int(len(dev)) if dev is not None else 0,
                 "seq_len": cfg.seq_len, "steps_per_epoch": task.steps_per_epoch},
        "steps": result.steps, "epochs": result.epochs_done, "stop_reason": result.stop_reason,
        "train_loss": result.train_loss, "dev": result.dev,
        "best": {"loss": result.best, "step": result.best_step} if result.best is not None else None,
        "tokens": result.tokens, "seconds": round(result.seconds, 3), "tokens_per_s": round(result.tokens_per_s, 1),
        "flops_per_step": training_flops(mcfg, cfg.batch_size, cfg.seq_len, int(predicted)),
        "init_embeddings": coverage, "resumed_from": ws.relative(start) if start else None,
        "changed_on_resume": changed or None,
        "checkpoint": ws.relative(result.checkpoint) if result.checkpoint else None,
        "world_size": dist.world, "precision": cfg.precision, "device": str(next(model.parameters()).device),
    }
    if dist.main:
        write_json(folder / "report.json", report)
        write_train_options(folder, options, start=start, changed=changed, complete=True)
    return report


def _check_sizes(ws, train: np.ndarray, path: Path, cfg: PretrainConfig, world: int) -> None:
    """A corpus too small for one batch fails here, with what to change, not as an empty loop."""
    if len(train) == 0:
        raise UserError(f"{ws.relative(path)} holds no tokens to train on", hint="preprocess a corpus with text in it")
    if len(train) < cfg.batch_size:
        raise UserError(f"{ws.relative(path)} makes {len(train)} block(s) of {cfg.seq_len} tokens, fewer than one batch "
                        f"(--batch-size {cfg.batch_size})",
                        hint=f"lower --batch-size to {len(train)} or less, lower --seq-len, or add text")
    if cfg.batch_size % (world * cfg.accumulate):
        raise UserError(f"--batch-size ({cfg.batch_size}) must be a multiple of processes x --accumulate ({world} x {cfg.accumulate})")


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    if report.get("dev"):
        metrics["dev_loss"] = round(report["dev"]["loss"], 4)
        metrics["dev_ppl"] = round(report["dev"]["perplexity"], 2)
        metrics["dev_acc"] = round(report["dev"]["accuracy"], 4)
    if report.get("train_loss") is not None:
        metrics["train_loss"] = round(report["train_loss"], 4)
    metrics.update(steps=report["steps"], tokens_per_s=report["tokens_per_s"])
    return metrics


def _read(path: Path) -> dict[str, Any]:
    return read_json(path) if path.exists() else {}


class no_lock:
    """What a process other than rank 0 holds instead of the workspace lock."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
