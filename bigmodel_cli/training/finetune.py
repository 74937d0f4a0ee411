"""`bigmodel finetune`: a text classifier on the workspace's labelled splits, started from a
pretrain run (or from random weights with `--from scratch`), through the shared training loop.

Data: the `tokens` and `label` of data/processed/{train,dev}.parquet; each document becomes
`[CLS] tokens [SEP]`, cut to max_len, with the ids of the base run's vocabulary. Labels are
the ones present in the training split, in sorted order (class i is labels[i]).

Batches are a pure function of (seed, epoch, index), as the loop's exact resume needs: a
seeded permutation per epoch, sorted by length within windows of 50 batches (so a batch
pads little), cut into batches whose order is then shuffled with the same generator.

The learning rate, unless --lr gives one, is chosen on dev (training/lr_search.py), and the
run then trains from the same start with the chosen rate (the same run as `--lr RATE` would
give).

Best checkpoint and early stopping follow dev macro-F1. Writes runs/NAME/ with the layout
of a pretrain run (config.json with num_labels and labels, vocab.txt, meta.json, train.json,
metrics.jsonl, loss.png, report.json, checkpoints/{step-N,last,best}).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.data.vocab import PAD, UNK, Vocab
from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import read_json, write_json
from bigmodel_cli.training.classify_data import (
    Encoded,
    classify_probs,
    encode_records,
    pad_batch,
    read_split,
)
from bigmodel_cli.training.lr_search import (
    FALLBACK_LR,
    GRID_DIR,
    GRID_FILE,
    Trainer,
    parse_grid,
    read_search,
    search_key,
    search_lr,
    search_options,
    search_summary,
    searched_again,
)
from bigmodel_cli.workspace.config import FinetuneConfig

POOLINGS = ("cls", "mean")
SORT_WINDOW = 50  # batches whose documents are sorted by length together


# -- options ------------------------------------------------------------------------------
def resolve_config(section: dict[str, Any] | None, overrides: dict[str, Any]) -> FinetuneConfig:
    """Defaults < [finetune] in bigmodel.toml < options; every problem reported at once."""
    from bigmodel_cli.workspace.config import resolve_checked

    return resolve_checked(FinetuneConfig, section, overrides, validate)


def validate(cfg: FinetuneConfig) -> list[str]:
    from bigmodel_cli.model.transformer import validate_shape
    from bigmodel_cli.training.loop import validate as validate_loop

    problems = [p.replace("--lr must be a positive number", "--lr must be a positive number (or 0: chosen on dev)")
                for p in validate_loop(dataclasses.replace(cfg, lr=cfg.lr or FALLBACK_LR))]  # --lr 0: chosen on dev
    try:
        parse_grid(cfg.lr_grid)
    except ValueError:
        problems.append(f"--lr-grid must be positive learning rates separated by commas (e.g. 3e-4,1e-4,5e-5), "
                        f"got '{cfg.lr_grid}'")
    if cfg.grid_steps < 0:
        problems.append(f"--grid-steps must be 0 (one epoch) or more, got {cfg.grid_steps}")
    if cfg.pooling not in POOLINGS:
        problems.append(f"--pooling must be cls or mean, got '{cfg.pooling}'")
    if not 0 <= cfg.dropout < 1:
        problems.append(f"--dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.rdrop < 0:
        problems.append(f"--rdrop must be 0 (off) or positive, got {cfg.rdrop}")
    elif cfg.rdrop and not cfg.dropout:
        problems.append("--rdrop needs dropout: with --dropout 0 both passes give the same prediction")
    if cfg.max_len < 3:
        problems.append(f"--max-len must be at least 3 ([CLS], one token, [SEP]), got {cfg.max_len}")
    if not cfg.from_run:
        problems.append("--from must name a pretrain run, latest, scratch or a Hugging Face BERT folder")
    return problems + validate_shape(cfg)


def train_labels(ws, records: list[dict[str, Any]], path: Path) -> list[str]:
    """The sorted labels of the training split; a one-line error when there are none or one."""
    counts = Counter(r["label"] for r in records if r["label"] is not None)
    where = ws.relative(path)
    if not counts:
        raise UserError(f"{where} has no labels, so there is nothing to classify",
                        hint="preprocess a labelled corpus: bigmodel preprocess FILE --label-field NAME --force")
    if len(counts) == 1:
        only = next(iter(counts))
        raise UserError(f"{where} has a single class ('{only}', {counts[only]:,} documents); a classifier needs at least two",
                        hint="preprocess a corpus with two or more labels (bigmodel preprocess FILE --label-field NAME --force)")
    unlabelled = sum(1 for r in records if r["label"] is None)
    if unlabelled:
        raise UserError(f"{where}: {unlabelled:,} of {len(records):,} documents have no label",
                        hint="preprocess again with every record labelled (rejected records go to rejects.jsonl)")
    return sorted(counts)


def class_weights(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """Inverse class frequency, scaled so that the average weight of a training document is 1."""
    counts = np.bincount(labels[labels >= 0], minlength=num_labels).astype(np.float64)
    return np.where(counts > 0, counts.sum() / (num_labels * np.maximum(counts, 1)), 0.0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=list(range(num_labels)), average="macro", zero_division=0))


class ClassifyTask:
    """Classification batches for the shared loop; see train.Task."""

    monitor = "macro_f1"
    higher_is_better = True

    def __init__(self, train: Encoded, dev: Encoded | None, batch_size: int, seed: int, pad_id: int, num_labels: int,
                 weights: np.ndarray | None = None, eval_batches: int = 0, eval_batch_size: int = 64, rdrop: float = 0.0):
        self.train, self.dev, self.batch_size, self.seed = train, dev, batch_size, seed
        self.rdrop = rdrop
        self.pad, self.num_labels, self.weights = pad_id, num_labels, weights
        self.eval_batches, self.eval_batch_size = eval_batches, eval_batch_size
        self.steps_per_epoch = len(train) // batch_size
        self._order: tuple[int, np.ndarray] | None = None

    def batches(self, epoch: int) -> np.ndarray:
        """(steps_per_epoch, batch_size) document indices of the epoch."""
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            picked = rng.permutation(len(self.train))[: self.steps_per_epoch * self.batch_size]
            lengths = self.train.lengths
            window = SORT_WINDOW * self.batch_size
            # Sorting by length inside each window keeps padding small; the batch order is
            # shuffled afterwards, so long and short batches still come in random order.
            sorted_parts = [part[np.argsort(lengths[part], kind="stable")] for part in
                            (picked[i:i + window] for i in range(0, len(picked), window))]
            batches = np.concatenate(sorted_parts).reshape(self.steps_per_epoch, self.batch_size)
            self._order = (epoch, batches[rng.permutation(self.steps_per_epoch)])
        return self._order[1]

    def batch(self, epoch: int, index: int, rows: slice):
        import torch

        picked = self.batches(epoch)[index]
        length = int(self.train.lengths[picked].max())  # the global batch's, so any split of it pads alike
        picked = picked[rows]
        ids, mask = pad_batch([self.train.doc(i) for i in picked], self.pad, length)
        labels = torch.from_numpy(self.train.labels[picked])
        batch = {"ids": ids, "attention_mask": mask, "labels": labels}
        if self.weights is not None:
            batch["weights"] = torch.from_numpy(self.weights[self.train.labels[picked]].astype(np.float32))
        return batch

    def count(self, batch) -> float:
        return float(batch["weights"].sum()) if "weights" in batch else len(batch["labels"])

    def loss(self, model, batch):
        """(summed loss, its number of terms, correct predictions) of one batch.

        With R-Drop (Liang et al., 2021) the batch goes through the model twice in one
        forward pass (stacked), so the two copies draw different dropout masks. The loss
        of each document is the mean of its two cross-entropies plus rdrop times the
        symmetric KL divergence between the two predicted distributions."""
        import torch
        import torch.nn.functional as F

        ids, mask, labels = batch["ids"], batch["attention_mask"], batch["labels"]
        rdrop = self.rdrop if model.training else 0.0
        if rdrop:
            ids, mask = torch.cat([ids, ids]), torch.cat([mask, mask])
        hidden, _ = model.encode(ids, attention_mask=mask)
        logits = model.classify(hidden, mask).float()
        if rdrop:
            first, second = logits.chunk(2)
            losses = (F.cross_entropy(first, labels, reduction="none") + F.cross_entropy(second, labels, reduction="none")) / 2
            log_p, log_q = F.log_softmax(first, -1), F.log_softmax(second, -1)
            kl = (F.kl_div(log_p, log_q, log_target=True, reduction="none")
                  + F.kl_div(log_q, log_p, log_target=True, reduction="none")).sum(-1) / 2
            losses = losses + rdrop * kl
            logits = first
        else:
            losses = F.cross_entropy(logits, labels, reduction="none")
        correct = (logits.argmax(-1) == labels).sum()
        if "weights" in batch:  # a weighted sum, whose terms are the summed weights (see count)
            return (losses * batch["weights"]).sum(), batch["weights"].sum(), correct
        return losses.sum(), labels.new_tensor(len(losses)), correct

    def tokens(self, batch) -> int:
        return int(batch["attention_mask"].sum())

    def evaluate(self, model, autocast) -> dict[str, float]:
        if self.dev is None or not len(self.dev):
            return {}
        dev = self.dev
        if self.eval_batches:
            n = min(len(dev), self.eval_batches * self.eval_batch_size)
            dev = Encoded(dev.ids, dev.offsets[: n + 1], dev.labels[:n])
        probs = classify_probs(model, dev, self.eval_batch_size, self.pad, autocast)
        known = dev.labels >= 0
        if not known.any():
            return {}
        y, p = dev.labels[known], probs[known]
        pred = p.argmax(-1)
        loss = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())
        return {"loss": loss, "accuracy": float((pred == y).mean()), "macro_f1": macro_f1(y, pred, self.num_labels)}


# -- the model --------------------------------------------------------------------------------
def base_run(ws, from_run: str) -> Path | None:
    """The pretrain run to start from (None for scratch), or for a Hugging Face BERT folder
    the base prepared from it in .bigmodel/hf/ (its tokenizer; see model.hf_import)."""
    from bigmodel_cli.model import hf_import
    from bigmodel_cli.model.runs import find_run, run_folders, run_kind

    if from_run == "scratch":
        return None
    if hf_import.is_hf_folder(from_run, ws.root / "runs"):
        return hf_import.prepare_base(from_run, ws.meta / "hf")
    if from_run == "latest" and not any(run_kind(p) == "pretrain" for p in run_folders(ws)):
        raise UserError(f"no pretrain run in {ws.relative(ws.root / 'runs')}/ to start from",
                        hint="run `bigmodel pretrain` first, or pass --from scratch for a classifier without pretraining")
    return find_run(ws, from_run, kind="pretrain")


def resumed_base(ws, folder: Path) -> Path | None:
    """The base a resumed `--from latest` run started from, not a pretrain run made since."""
    from bigmodel_cli.model.runs import train_options

    recorded = train_options(folder).get("base")
    return base_run(ws, recorded or "latest")


def hf_from(ws, from_run: str) -> str:
    """--from as recorded: a Hugging Face folder as its absolute path, so that a resume from
    another folder finds it and `./bert` and `bert/` are the same base."""
    import os

    from bigmodel_cli.model import hf_import

    if not hf_import.is_hf_folder(from_run, ws.root / "runs"):
        return from_run
    return os.path.abspath(Path(from_run).expanduser())


def base_label(base: Path | None) -> str:
    """The base as the run records it: a run's name, a Hugging Face folder's path, or scratch."""
    from bigmodel_cli.model import hf_import

    if base is None:
        return "scratch"
    return hf_import.base_source(base)["source"] if hf_import.is_hf_base(base) else base.name


def base_files(base: Path) -> list[Path]:
    """The files whose hashes decide whether a finetune from `base` is up to date."""
    from bigmodel_cli.model import hf_import
    from bigmodel_cli.model.runs import model_checkpoint

    if hf_import.is_hf_base(base):
        return hf_import.base_files(base)
    return [base / "vocab.txt", model_checkpoint(base) / "model.safetensors"]


def model_config(cfg: FinetuneConfig, base: Path | None, vocab: Vocab, labels: list[str]):
    from bigmodel_cli.model import checkpoint as ckpt
    from bigmodel_cli.model import hf_import
    from bigmodel_cli.model.runs import model_checkpoint
    from bigmodel_cli.model.transformer import ModelConfig, architecture

    head = dict(num_labels=len(labels), labels=list(labels), pooling=cfg.pooling, classifier_dropout=cfg.dropout,
                dropout=cfg.dropout, attention_dropout=cfg.dropout, lm_head=False, causal=False)
    if base is None:
        layers, dim, heads, ffn = architecture(cfg)
        return ModelConfig(vocab_size=len(vocab), layers=layers, dim=dim, heads=heads, ffn=ffn,
                           max_positions=max(512, cfg.max_len), pad_id=vocab.id(PAD), **head)
    hf = hf_import.is_hf_base(base)
    saved = hf_import.base_source(base)["config"] if hf else ckpt.read_config(model_checkpoint(base))
    if cfg.max_len > saved["max_positions"]:
        what = base_label(base) if hf else f"run '{base.name}'"
        raise UserError(f"--max-len {cfg.max_len} is longer than {what} can read (its position table holds {saved['max_positions']})",
                        hint=f"pass --max-len {saved['max_positions']} or less")
    return ModelConfig.from_dict({**saved, **head})


def init_from(model, base: Path) -> dict[str, Any]:
    """Load the base run's weights; the pooler and classifier stay new (and are reported).
    A Hugging Face base's weights are read from its folder (safetensors) at this moment."""
    from bigmodel_cli.model import checkpoint as ckpt
    from bigmodel_cli.model import hf_import
    from bigmodel_cli.model.runs import model_checkpoint

    if hf_import.is_hf_base(base):
        source = hf_import.base_source(base)["source"]
        _, weights, _, meta = hf_import.read_hf_folder(source)
        result = ckpt.load_weights(model, weights, Path(source), strict=False)
        return {"run": source, "checkpoint": source, "new": sorted(result.missing_keys),
                "unused": sorted(result.unexpected_keys) + meta["unused_weights"]}
    checkpoint = model_checkpoint(base)
    ckpt.verify(checkpoint)
    result = ckpt.load_weights(model, ckpt.load_model_weights(checkpoint), checkpoint / ckpt.MODEL, strict=False)
    return {"run": base.name, "checkpoint": str(checkpoint.relative_to(base)),
            "new": sorted(result.missing_keys), "unused": sorted(result.unexpected_keys)}


def freeze_embeddings(model) -> None:
    for p in model.embeddings.parameters():
        p.requires_grad_(False)


# -- the stage -----------------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    skipped: bool
    name: str
    folder: Path
    record: dict[str, Any] | None
    report: dict[str, Any]


def finetune(ws, cfg: FinetuneConfig | None = None, *, name: str | None = None, seed: int = 42, resume: str | None = None,
             force: bool = False, show_progress: bool = False, console=None, log_lines: bool = False,
             given: set[str] | None = None) -> FinetuneResult:
    """Finetune one classifier into runs/NAME/ (see the module docstring). `given`: the
    options the command line set (see pretrain.inherit_options)."""
    from bigmodel_cli.training.loop import Dist
    from bigmodel_cli.training.run_setup import (
        find_processed,
        inherit_options,
        resume_point,
        run_outputs,
        stage_options,
        start_over,
    )
    from bigmodel_cli.workspace.layout import check_name
    from bigmodel_cli.workspace.records import Done, run_stage

    cfg = cfg or FinetuneConfig()
    problems = validate(cfg)
    if problems:
        raise UserError("; ".join(problems))
    cfg = dataclasses.replace(cfg, from_run=hf_from(ws, cfg.from_run))
    name = check_name(name or ("classifier-scratch" if cfg.from_run == "scratch" else "classifier"))
    folder = ws.root / "runs" / name
    start = resume_point(folder, resume)
    # The base is found after a resume took the run's own options: --resume auto alone
    # continues a run from a Hugging Face folder even where no pretrain run exists.
    cfg, seed = inherit_options(cfg, seed, start, given)
    cfg = searched_again(cfg, folder, start, given)
    cfg, seed = search_options(cfg, seed, folder, start, resume, given)
    train_path, dev_path, vocab_path = find_processed(ws, cfg.data)
    base = resumed_base(ws, folder) if start is not None and cfg.from_run == "latest" else base_run(ws, cfg.from_run)
    if base is not None and base.resolve() == folder.resolve():
        raise UserError(f"--name {name} is the pretrain run it would start from", hint="pick another --name")
    stage = f"finetune:{name}"
    params = {**dataclasses.asdict(cfg), "name": name, "seed": seed, "base": base_label(base)}
    input_paths = [p for p in (train_path, dev_path, vocab_path, vocab_path.parent / "meta.json") if p is not None and p.exists()]
    if base is not None:
        input_paths += base_files(base)
    inputs = ws.hash_paths(input_paths)

    # Under torchrun every process runs this; rank 0 alone holds the lock, clears the folder
    # and writes the record (as in pretrain).
    dist = Dist.from_env()
    options = stage_options(ws, folder, resume, force, dist)
    refuse_other_run = options["refuse"]

    def refuse() -> None:
        refuse_other_run()
        if resume is None and not force and (folder / GRID_DIR).exists():
            raise UserError(f"{ws.relative(folder)}/ holds an unfinished learning-rate search",
                            hint="continue it with --resume auto, start over with --force, or pick another --name")

    def work() -> Done:
        start_over(folder, force, start, dist)
        report = _run(ws, cfg, name, seed, folder, base, train_path, dev_path, vocab_path, start, dist, show_progress,
                      console, log_lines, search_key=search_key(params, inputs), resume=resume)
        outputs = run_outputs(ws, folder, report, dist)
        if dist.main and (folder / GRID_FILE).is_file():
            outputs.append(folder / GRID_FILE)
        return Done(report, outputs, _headline(report))

    outcome = run_stage(ws, stage, params, inputs, work, lock=f"finetune --name {name}", sections=("project", "finetune"),
                        **{**options, "refuse": refuse})
    if outcome.skipped:
        report_path = folder / "report.json"
        return FinetuneResult(True, name, folder, outcome.record, read_json(report_path) if report_path.exists() else {})
    return FinetuneResult(False, name, folder, outcome.record, outcome.value)


def _run(ws, cfg: FinetuneConfig, name: str, seed: int, folder: Path, base: Path | None, train_path: Path,
         dev_path: Path | None, vocab_path: Path, start: Path | None, dist, show_progress: bool, console,
         log_lines: bool, search_key: dict[str, Any] | None = None, resume: str | None = None) -> dict[str, Any]:
    from bigmodel_cli.data.tokenizer import Encoder, copy_tokenizer_files
    from bigmodel_cli.fileio import sha256_file
    from bigmodel_cli.model.transformer import Transformer
    from bigmodel_cli.training.loop import fit, pick_device, seed_everything
    from bigmodel_cli.training.run_setup import check_resume, write_train_options

    train_records = read_split(train_path)
    labels = train_labels(ws, train_records, train_path)
    dev_records = read_split(dev_path) if dev_path else []
    ids_from = base / "vocab.txt" if base is not None else vocab_path  # the ids are the base run's
    encoder = Encoder.from_folder(ids_from.parent)
    vocab = encoder.vocab
    mcfg = model_config(cfg, base, vocab, labels)
    # Everything that can refuse the run is checked before the run folder is touched.
    pick_device(cfg.device, dist)
    vocab_hash = sha256_file(ids_from)
    search = {"lr": cfg.lr, "chosen": "given"} if cfg.lr else None
    if start is not None and search is None:
        search = read_search(folder)
        if search is None or not search.get("lr"):
            raise UserError(f"cannot resume run '{name}': it records no learning rate chosen on dev "
                            f"({ws.relative(folder / GRID_FILE)} is missing)",
                            hint="resume with the run's --lr, or start over with --force")
    run_cfg = dataclasses.replace(cfg, lr=search["lr"]) if search else cfg
    changed = check_resume(folder, start, mcfg, run_cfg, seed, ws.relative(ids_from), vocab_hash) if start is not None else {}
    train = encode_records(train_records, encoder, labels, cfg.max_len)
    dev = encode_records(dev_records, encoder, labels, cfg.max_len) if dev_records else None
    if len(train) < cfg.batch_size:
        raise UserError(f"{ws.relative(train_path)} holds {len(train):,} documents, fewer than one batch (--batch-size {cfg.batch_size})",
                        hint=f"lower --batch-size to {len(train)} or less, or add labelled documents")
    if cfg.batch_size % (dist.world * cfg.accumulate):
        raise UserError(f"--batch-size ({cfg.batch_size}) must be a multiple of processes x --accumulate "
                        f"({dist.world} x {cfg.accumulate})")
    weights = class_weights(train.labels, len(labels)) if cfg.balance else None
    task = ClassifyTask(train, dev, cfg.batch_size, seed, vocab.id(PAD), len(labels), weights, cfg.eval_batches,
                        rdrop=cfg.rdrop)
    extra_state = {"task": "classify", "labels": labels, "vocab_sha256": vocab_hash}

    def new_model(load_base: bool):
        """The model as the run starts: seeded, from the base's weights (every candidate
        rate and the run itself start from the same point)."""
        seed_everything(seed)
        model = Transformer(mcfg)
        init = init_from(model, base) if base is not None and load_base else None
        if cfg.freeze_embeddings:
            freeze_embeddings(model)
        return model, init

    def options() -> dict[str, Any]:
        return {**dataclasses.asdict(run_cfg), "seed": seed, "base": base_label(base), "world_size": dist.world,
                "vocab_sha256": vocab_hash, "lr_search": search_summary(search)}

    if dist.main:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "config.json", mcfg.to_dict())
        if start is None:  # a resumed run keeps its own copies (check_resume proved the vocabulary the same)
            copy_tokenizer_files(vocab_path.parent, folder, base=base)
        write_train_options(folder, options(), start=start, changed=changed, complete=False)
    if search is None:
        search = search_lr(ws, cfg, seed, folder, task, labels, new_model, mcfg.to_dict(), dict(search_key or {}),
                            resume, dist, Trainer(show_progress, console, log_lines, extra_state))
        run_cfg = dataclasses.replace(cfg, lr=search["lr"])
        if dist.main:
            write_train_options(folder, options(), start=start, changed=changed, complete=False)
    model, init = new_model(load_base=start is None)
    result = fit(model, task, run_cfg, folder, seed=seed, model_config=mcfg.to_dict(), resume=start,
                 show_progress=show_progress, console=console, log_lines=log_lines, extra_state=extra_state)
    if init is None and start is not None:
        previous = read_json(folder / "report.json") if (folder / "report.json").exists() else {}
        init = previous.get("init")
    unk = vocab.id(UNK)
    report = {
        "name": name, "task": "classify", "base": base_label(base), "init": init,
        "model": mcfg.to_dict(), "labels": labels,
        "parameters": model.num_parameters(),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "data": {"train": len(train), "dev": len(dev) if dev is not None else 0, "max_len": cfg.max_len,
                 "train_classes": dict(zip(labels, np.bincount(train.labels, minlength=len(labels)).tolist())),
                 "truncated": int((train.lengths >= cfg.max_len).sum()),
                 "unk_rate": round(float((train.ids == unk).mean()), 4) if len(train.ids) else 0.0,
                 "dev_unseen_labels": int((dev.labels < 0).sum()) if dev is not None else 0,
                 "steps_per_epoch": task.steps_per_epoch},
        "class_weights": dict(zip(labels, [round(float(w), 4) for w in weights])) if weights is not None else None,
        "lr": run_cfg.lr, "lr_search": search_summary(search),
        "steps": result.steps, "epochs": result.epochs_done, "stop_reason": result.stop_reason,
        "train_loss": result.train_loss, "dev": result.dev,
        "best": _best(folder, result) if result.best is not None else None,
        "tokens": result.tokens, "seconds": round(result.seconds, 3), "tokens_per_s": round(result.tokens_per_s, 1),
        "resumed_from": ws.relative(start) if start else None, "changed_on_resume": changed or None,
        "checkpoint": ws.relative(result.checkpoint) if result.checkpoint else None,
        "world_size": dist.world, "precision": cfg.precision, "device": str(next(model.parameters()).device),
        "warnings": _warnings(ws, vocab_path.parent, dev, base),
    }
    if dist.main:
        write_json(folder / "report.json", report)
        write_train_options(folder, options(), start=start, changed=changed, complete=True)
    return report


def _best(folder: Path, result) -> dict[str, Any]:
    """The dev metrics of the evaluation that picked the best checkpoint."""
    from bigmodel_cli.training.loop import read_metrics

    entry = next((e for e in read_metrics(folder / "metrics.jsonl")
                  if e.get("split") == "dev" and e["step"] == result.best_step), {})
    return {"step": result.best_step, "macro_f1": result.best, "accuracy": entry.get("accuracy"), "loss": entry.get("loss")}


def _warnings(ws, data: Path, dev: Encoded | None, base: Path | None) -> list[str]:
    from bigmodel_cli.model import hf_import

    warnings = []
    if dev is None:
        warnings.append("no dev split: no early stopping, and the last checkpoint is the model "
                        "(preprocess with a dev share, e.g. --split 0.8,0.1,0.1)")
    elif (dev.labels < 0).any():
        warnings.append(f"{int((dev.labels < 0).sum())} dev document(s) carry labels unseen in training; "
                        "they are left out of the dev metrics")
    if base is not None and (base / "meta.json").exists() and not hf_import.is_hf_base(base):
        ours, theirs = read_json(data / "meta.json"), read_json(base / "meta.json")
        word_base = not (base / "tokenizer.json").is_file()  # a tokenizer.json reads any text the same way
        if word_base and (ours.get("clean"), ours.get("segment")) != (theirs.get("clean"), theirs.get("segment")):
            warnings.append(f"{ws.relative(data)}/ was cleaned or segmented differently from run '{base.name}'; "
                            "pretrain again on this data for matching words")
    return warnings


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    if report.get("best"):
        metrics["dev_macro_f1"] = round(report["best"]["macro_f1"], 4)
        if report["best"].get("accuracy") is not None:
            metrics["dev_acc"] = round(report["best"]["accuracy"], 4)
    if report.get("train_loss") is not None:
        metrics["train_loss"] = round(report["train_loss"], 4)
    metrics.update(base=report["base"], steps=report["steps"], tokens_per_s=report["tokens_per_s"])
    search = report.get("lr_search") or {}
    metrics.update(lr=report.get("lr"), lr_chosen=search.get("chosen"))
    if search.get("trials"):
        metrics["lr_trials"] = {f"{t['lr']:g}": t["dev_macro_f1"] for t in search["trials"]}
    return metrics
