"""`bigmodel pretrain`: a Transformer from scratch on the workspace's corpus, masked (BERT)
or causal language modelling, through the shared training loop.

Data: the records of data/processed/{train,dev}.parquet (or data/NAME/ with --data NAME),
encoded by the dataset's Encoder (jieba words through vocab.txt, or tokenizer.json), each
document followed by [SEP], concatenated and cut into blocks of seq_len that start with
[CLS]. The last block is padded. The flat stream of ids is written once into the workspace's
.bigmodel/cache/ids/ (streaming) and memory-mapped, so runs and the processes of a launch share one
copy and a corpus of any size starts without being held in memory (lm_data.TokenBlocks).

Writes runs/NAME/: config.json (the model), train.json, vocab.txt, meta.json (how text was
cleaned and segmented), metrics.jsonl, loss.png, checkpoints/{step-N,last,best}/, report.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.data.vocab import PAD, SPECIAL_TOKENS, Vocab
from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import read_json, write_json
from bigmodel_cli.model.transformer import architecture, validate_shape
from bigmodel_cli.training.budget import NO_BUDGET, budget_problems
from bigmodel_cli.training.lm_data import CLMTask, MLMTask, cached_blocks
from bigmodel_cli.training.run_setup import (
    check_resume,
    find_processed,
    inherit_options,
    resume_point,
    run_outputs,
    stage_options,
    start_over,
    write_train_options,
)
from bigmodel_cli.workspace.config import PretrainConfig, resolve_checked
from bigmodel_cli.workspace.layout import check_name

OBJECTIVES = ("mlm", "clm")
AUTO_DROPOUT = -1.0


# -- options ------------------------------------------------------------------------------
def resolve_config(section: dict[str, Any] | None, overrides: dict[str, Any]) -> PretrainConfig:
    """Defaults < [pretrain] in bigmodel.toml < options; every problem reported at once."""
    return resolve_checked(PretrainConfig, section, overrides, validate)


def validate(cfg: PretrainConfig) -> list[str]:
    from bigmodel_cli.training.loop import validate as validate_loop

    problems = validate_loop(cfg, budget="" if cfg.budget.strip().lower() in NO_BUDGET else cfg.budget)
    problems += budget_problems(cfg.budget)
    if cfg.objective not in OBJECTIVES:
        problems.append(f"--objective must be mlm or clm, got '{cfg.objective}'")
    if not cfg.from_run:  # with --from the shape is the source's (training.continued checks the options against it)
        problems += validate_shape(dataclasses.replace(cfg, size="tiny") if cfg.size == "auto" else cfg)
    if cfg.seq_len < 8:
        problems.append(f"--seq-len must be at least 8, got {cfg.seq_len}")
    if cfg.max_positions < 1:
        problems.append(f"--max-positions must be a positive integer, got {cfg.max_positions}")
    elif cfg.seq_len > cfg.max_positions:
        problems.append(f"--seq-len ({cfg.seq_len}) is longer than the position table (--max-positions {cfg.max_positions})")
    if not (0 <= cfg.dropout < 1 or cfg.dropout == AUTO_DROPOUT):
        problems.append(f"--dropout must be in [0, 1), or {AUTO_DROPOUT:g} for auto, got {cfg.dropout}")
    if not 0 < cfg.mask_prob < 1:
        problems.append(f"--mask-prob must be between 0 and 1, got {cfg.mask_prob}")
    return problems


def model_config(cfg: PretrainConfig, vocab: Vocab):
    from bigmodel_cli.model.transformer import ModelConfig

    layers, dim, heads, ffn = architecture(cfg)
    return ModelConfig(vocab_size=len(vocab), layers=layers, dim=dim, heads=heads, ffn=ffn,
                       max_positions=cfg.max_positions, dropout=cfg.dropout, attention_dropout=cfg.dropout,
                       pad_id=vocab.id(PAD), causal=cfg.objective == "clm")


# -- initial embeddings ------------------------------------------------------------------------
def init_embeddings(ws, model, vocab: Vocab, name: str) -> dict[str, Any]:
    """Copy a workspace embedding run's vectors into the token embeddings, rescaled to the
    model's initial spread (BERT's N(0, 0.02)), and report the coverage."""
    import torch

    from bigmodel_cli.embeddings.vectors import find_run, load_vectors

    run_name, folder = find_run(ws, name)
    kv = load_vectors(folder)  # safetensors + JSON: never a pickle, and much quicker than parsing vectors.txt
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


def pretrain(ws, cfg: PretrainConfig | None = None, *, name: str | None = None, seed: int = 42, resume: str | None = None,
             force: bool = False, show_progress: bool = False, console=None, log_lines: bool = False,
             given: set[str] | None = None) -> PretrainResult:
    """Pretrain one model into runs/NAME/ (see the module docstring). `given`: the options
    the command line set (see inherit_options)."""
    from bigmodel_cli.training.loop import Dist

    cfg = cfg or PretrainConfig()
    problems = validate(cfg)
    if problems:
        raise UserError("; ".join(problems))
    name = check_name(name or ("continued" if cfg.from_run else cfg.objective))
    folder = ws.root / "runs" / name
    start = resume_point(folder, resume)
    cfg, seed = inherit_options(cfg, seed, start, given)
    cfg, source = continued_from(ws, cfg, name, given)
    train_path, dev_path, vocab_path = find_processed(ws, cfg.data)
    stage = f"pretrain:{name}"
    params = {**dataclasses.asdict(cfg), "name": name, "seed": seed, **({"base": source.label} if source else {})}
    tokenizer_path = vocab_path.parent / "tokenizer.json"
    input_paths = [p for p in (train_path, dev_path, vocab_path, tokenizer_path) if p is not None and p.exists()]
    if source is not None:
        input_paths = [train_path, *([dev_path] if dev_path else []), *source_inputs(source)]
    if cfg.init_embeddings:
        from bigmodel_cli.embeddings.vectors import find_run

        input_paths.append(find_run(ws, cfg.init_embeddings)[1])
    inputs = ws.hash_paths(input_paths)
    dist = Dist.from_env()
    start_from = {"source": source, "lineage": lineage(ws, source, inputs)} if source is not None else None

    from bigmodel_cli.workspace.records import Done, run_stage

    def work() -> Done:
        start_over(folder, force, start, dist)
        report = _run(ws, cfg, name, seed, folder, train_path, dev_path, vocab_path, start, dist, show_progress,
                      console, log_lines, start_from=start_from)
        return Done(report, run_outputs(ws, folder, report, dist), _headline(report),
                    extra={"from": start_from["lineage"]} if start_from else None)

    outcome = run_stage(ws, stage, params, inputs, work, lock=f"pretrain --name {name}", sections=("project", "pretrain"),
                        **stage_options(ws, folder, resume, force, dist))
    if outcome.skipped:
        return PretrainResult(True, name, folder, outcome.record, _read(folder / "report.json"))
    return PretrainResult(False, name, folder, outcome.record, outcome.value)


def _tokens_per_word(blocks) -> float:
    """How many tokens a word of the corpus takes, on average (1 for a word vocabulary); the
    [SEP] after each document counts as a word of one token."""
    words = sum(int(np.count_nonzero(blocks.word_starts[i:i + (1 << 24)])) for i in range(0, blocks.tokens, 1 << 24))
    return round(blocks.tokens / max(1, words), 3)


def _run(ws, cfg: PretrainConfig, name: str, seed: int, folder: Path, train_path: Path, dev_path: Path | None,
         vocab_path: Path, start: Path | None, dist, show_progress: bool, console, log_lines: bool,
         start_from: dict[str, Any] | None = None) -> dict[str, Any]:
    """`start_from`: {source, lineage} of continued pretraining (--from), else None."""
    import torch

    from bigmodel_cli.data.tokenizer import Encoder, copy_tokenizer_files
    from bigmodel_cli.fileio import sha256_file
    from bigmodel_cli.model.transformer import Transformer, training_flops
    from bigmodel_cli.training.loop import fit, pick_device, seed_everything

    source = start_from["source"] if start_from else None
    # --from: the text is read through the source's own tokenizer, never the workspace's
    ids_from = source.tokenizer / "vocab.txt" if source is not None else vocab_path
    encoder = Encoder.from_folder(ids_from.parent)
    vocab = encoder.vocab
    # Everything that can refuse the run is checked before the run folder is touched.
    device = pick_device(cfg.device, dist)
    vocab_hash = sha256_file(ids_from)
    if dist.world > 1 and not torch.distributed.is_initialized():
        cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    cache = ws.meta / "cache" / "ids"
    train = cached_blocks(train_path, encoder, cfg.seq_len, cache, dist.main) if dist.world == 1 else None
    if dist.world > 1:  # rank 0 encodes, the others map the same file
        if dist.main:
            cached_blocks(train_path, encoder, cfg.seq_len, cache, True)
            if dev_path:
                cached_blocks(dev_path, encoder, cfg.seq_len, cache, True)
        torch.distributed.barrier()
        train = cached_blocks(train_path, encoder, cfg.seq_len, cache, False)
    dev = cached_blocks(dev_path, encoder, cfg.seq_len, cache, dist.main) if dev_path else None
    _check_sizes(ws, train, train_path, cfg, dist.world)
    whole_word = cfg.objective == "mlm" and cfg.whole_word
    starts = (train.starts, dev.starts if dev is not None else None) if whole_word else None
    task = (MLMTask if cfg.objective == "mlm" else CLMTask)(train, dev, cfg.batch_size, seed, vocab, cfg.mask_prob, cfg.eval_batches,
                                                            starts=starts)

    def build_config(c: PretrainConfig):
        return continued_model_config(c, source, len(vocab)) if source is not None else model_config(c, vocab)

    cfg, auto = _decide_auto(ws, cfg, start, folder, task, train.tokens, device, dist, build_config)
    mcfg = build_config(cfg)
    changed = check_resume(folder, start, mcfg, cfg, seed, ws.relative(ids_from), vocab_hash) if start is not None else {}
    if dist.main:
        folder.mkdir(parents=True, exist_ok=True)

    seed_everything(seed)
    model = Transformer(mcfg)
    coverage = init_embeddings(ws, model, vocab, cfg.init_embeddings) if cfg.init_embeddings and start is None else None
    init = continued_init(ws, model, folder, start_from, start)
    options = {**dataclasses.asdict(cfg), "seed": seed, "world_size": dist.world, "vocab_sha256": vocab_hash}
    if init is not None:
        options["from"] = init
    if auto is not None:
        options["auto"] = auto
    if dist.main:
        write_json(folder / "config.json", mcfg.to_dict())
        if start is None:  # a resumed run keeps its own copies (check_resume proved the vocabulary the same)
            copy_tokenizer_files(vocab_path.parent, folder, base=source.tokenizer if source else None)
        write_train_options(folder, options, start=start, changed=changed, complete=False)
    result = fit(model, task, cfg, folder, seed=seed, model_config=mcfg.to_dict(), resume=start,
                 show_progress=show_progress, console=console, log_lines=log_lines,
                 extra_state={"objective": cfg.objective, "vocab_sha256": vocab_hash},
                 budget="" if cfg.budget.strip().lower() in NO_BUDGET else cfg.budget,
                 budget_spent=(auto or {}).get("probe_seconds", 0.0))
    predicted = cfg.batch_size * (cfg.seq_len - 1) * (cfg.mask_prob if cfg.objective == "mlm" else 1.0)
    report = {
        "name": name, "objective": cfg.objective, "model": mcfg.to_dict(),
        "parameters": model.num_parameters(), "parameters_without_embeddings": model.num_parameters(embeddings=False),
        "data": {"train_blocks": int(len(train)), "dev_blocks": int(len(dev)) if dev is not None else 0,
                 "seq_len": cfg.seq_len, "steps_per_epoch": task.steps_per_epoch,
                 "tokenizer": encoder.kind, "masking": ("whole-word" if whole_word else "token") if cfg.objective == "mlm" else None,
                 "tokens": train.tokens, "tokens_per_word": _tokens_per_word(train)},
        "steps": result.steps, "epochs": result.epochs_done, "stop_reason": result.stop_reason,
        "train_loss": result.train_loss, "dev": result.dev,
        "best": {"loss": result.best, "step": result.best_step} if result.best is not None else None,
        "tokens": result.tokens, "seconds": round(result.seconds, 3), "tokens_per_s": round(result.tokens_per_s, 1),
        "flops_per_step": training_flops(mcfg, cfg.batch_size, cfg.seq_len, int(predicted)),
        "init_embeddings": coverage, "from": init, "auto": auto, "resumed_from": ws.relative(start) if start else None,
        "changed_on_resume": changed or None,
        "checkpoint": ws.relative(result.checkpoint) if result.checkpoint else None,
        "world_size": dist.world, "precision": cfg.precision, "device": str(next(model.parameters()).device),
    }
    if dist.main:
        write_json(folder / "report.json", report)
        write_train_options(folder, options, start=start, changed=changed, complete=True)
    return report


def _decide_auto(ws, cfg: PretrainConfig, start: Path | None, folder: Path, task, corpus_tokens: int, device, dist,
                 build_config) -> tuple[PretrainConfig, dict[str, Any] | None]:
    """The run's options with `auto` decided (training/budget.py), and the record of how. A
    resumed run takes the values its start chose; with several processes rank 0 measures
    and every process follows its choice."""
    from bigmodel_cli.training import budget

    if start is not None:  # (from the command line, inherit_options has already put the saved values in)
        saved = read_json(folder / "train.json")
        return dataclasses.replace(cfg, **{k: saved[k] for k in budget.auto_fields(cfg) if k in saved}), saved.get("auto")
    if not budget.auto_fields(cfg):
        return cfg, None
    if cfg.from_run:  # the shape is the source's: only precision and dropout are left to decide
        cfg = dataclasses.replace(cfg, size="custom") if cfg.size == "auto" else cfg
    choice: list[Any] = [None]
    if dist.main:
        choice[0] = budget.choose(cfg, corpus_tokens=corpus_tokens, tokens_per_step=cfg.batch_size * cfg.seq_len,
                                  precision_of=lambda size: _precision_of(cfg, size, device, build_config),
                                  dev_batches=_dev_batches(task, cfg),
                                  time_step=lambda size, precision: _time_steps(task, cfg, size, precision, device, build_config),
                                  encoder_parameters=lambda size: _encoder_parameters(cfg, size, build_config),
                                  candidates=_candidates(ws, cfg))
    if dist.world > 1:
        import torch

        torch.distributed.broadcast_object_list(choice, 0)
    return choice[0]


def _candidates(ws, cfg: PretrainConfig) -> tuple[str, ...]:
    """The sizes --size auto may pick: with --init-embeddings, those as wide as its vectors."""
    from bigmodel_cli.model.transformer import SIZES
    from bigmodel_cli.training.budget import CANDIDATES

    if not cfg.init_embeddings or cfg.dim:
        return CANDIDATES
    from bigmodel_cli.embeddings.vectors import find_run, vector_dim

    dim = vector_dim(find_run(ws, cfg.init_embeddings)[1])
    return tuple(s for s in CANDIDATES if SIZES[s][1] == dim) or CANDIDATES


def _dev_batches(task, cfg: PretrainConfig) -> int:
    dev = getattr(task, "dev", None)
    if dev is None:
        return 0
    batches = -(-len(dev) // cfg.batch_size)
    return min(batches, cfg.eval_batches) if cfg.eval_batches else batches


def _precision_of(cfg: PretrainConfig, size: str, device, build_config) -> str:
    from bigmodel_cli.training.budget import auto_precision

    if cfg.precision != "auto":
        return cfg.precision
    return auto_precision(device, build_config(dataclasses.replace(cfg, size=size, dropout=0.0)).dim)


def _encoder_parameters(cfg: PretrainConfig, size: str, build_config) -> int:
    from bigmodel_cli.model.transformer import Transformer

    return Transformer(build_config(dataclasses.replace(cfg, size=size, dropout=0.0))).num_parameters(embeddings=False)


def _time_steps(task, cfg: PretrainConfig, size: str, precision: str, device, build_config):
    """Seconds per optimizer step of a fresh model of this size on the run's own batches (the
    median of a few, after one that warms up), and its encoder's parameter count."""
    import contextlib
    import statistics
    import time

    import torch

    from bigmodel_cli.model.transformer import Transformer
    from bigmodel_cli.training.budget import PROBE_STEPS, WARMUP_STEPS, Timing
    from bigmodel_cli.training.loop import Objective, make_optimizer, tune_cpu_allocator

    if device.type == "cpu":
        tune_cpu_allocator()  # as the loop will: without it the first steps run at a fraction of the speed
    trial = dataclasses.replace(cfg, size=size, dropout=max(cfg.dropout, 0.0))
    model = Transformer(build_config(trial)).to(device)
    runner = Objective(model, task.loss)
    optimizer = make_optimizer(model, trial, device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16-mixed" else contextlib.nullcontext
    times = []
    for index in range(WARMUP_STEPS + PROBE_STEPS):
        batch = task.batch(0, index % task.steps_per_epoch, slice(0, cfg.batch_size))
        began = time.perf_counter()
        with autocast():
            loss, terms, _ = runner(batch)
        (loss / max(float(terms), 1.0)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return Timing(statistics.median(times[WARMUP_STEPS:]), model.num_parameters(embeddings=False))


def _check_sizes(ws, train, path: Path, cfg: PretrainConfig, world: int) -> None:
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


# -- continued pretraining (--from) -----------------------------------------------------------------
def continued_from(ws, cfg: PretrainConfig, name: str, given: set[str] | None):
    """(cfg, source) for `--from`: the source resolved and checked against the options (see
    training.continued), or (cfg, None) for a new model."""
    from bigmodel_cli.training.continued import resolve_source, source_label

    if not cfg.from_run:
        return cfg, None
    cfg = dataclasses.replace(cfg, from_run=source_label(ws, cfg.from_run))
    if cfg.from_run == name:
        raise UserError(f"--name {name} is the run it would continue from (--from {cfg.from_run})",
                        hint="pick another --name for the continued run")
    return resolve_source(ws, cfg, given)


def source_inputs(source) -> list[Path]:
    """The files whose hashes decide whether a continued run is up to date: the source's
    tokenizer and config, and its weights (new weights make the run stale)."""
    tokenizer = [source.tokenizer / n for n in ("vocab.txt", "tokenizer.json", "meta.json") if (source.tokenizer / n).is_file()]
    config = [source.weights_folder / "config.json"] if source.kind == "hf" else []
    return [*tokenizer, *config, *source.weights]


def lineage(ws, source, inputs: list[dict[str, str]]) -> dict[str, Any]:
    from bigmodel_cli.training.continued import lineage as source_lineage

    return source_lineage(ws, source, inputs)


def continued_model_config(cfg: PretrainConfig, source, vocab_size: int):
    from bigmodel_cli.training.continued import model_config as source_model_config

    return source_model_config(cfg, source, vocab_size)


def continued_init(ws, model, folder: Path, start_from: dict[str, Any] | None, start: Path | None) -> dict[str, Any] | None:
    """The source's weights in the new model (a fresh start), or what the run's first start
    recorded (a resume, whose checkpoint holds the weights); None without --from."""
    from bigmodel_cli.model.runs import warn
    from bigmodel_cli.training.continued import head_line, load_source_weights

    if start_from is None:
        return None
    if start is not None:  # what the first start loaded, as its train.json keeps it
        return _read(folder / "train.json").get("from") or start_from["lineage"]
    init = {**start_from["lineage"], **load_source_weights(model, start_from["source"])}
    line = head_line(init)
    if line:
        warn(line)
    return init
