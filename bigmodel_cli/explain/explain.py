"""`bigmodel explain`: why the model decided, per word, and how far to trust each answer.

Methods (scores are per word the model saw, [CLS]/[SEP] left out):
- attention: the weights from [CLS] (a classifier) or from the last position (a causal LM's
  next-word prediction) to each word, from the explicit attention path, for one layer and
  head or averaged over them;
- rollout (Abnar & Zuidema, 2020): attention propagated through the layers, each layer's
  head-averaged weights mixed half and half with the identity for the residual path;
- saliency: the L2 norm of the gradient of the target's logit with respect to the word's
  embedding;
- grad-input: gradient · embedding, signed;
- ig: integrated gradients on the token embeddings from a baseline of [PAD] embeddings (or
  zeros) for the words ([CLS], [SEP] and positions kept), midpoint Riemann sum over `steps`
  interpolations, run in batches of `internal_batch_size`. Completeness says the scores
  sum to logit(x) - logit(baseline); the gap is reported.

Faithfulness (ERASER, DeYoung et al. 2020): for the top 10%..50% of words by a method's
score, comprehensiveness = p - p(without them) and sufficiency = p - p(only them), averaged
over the five levels (AOPC). A faithful method has higher comprehensiveness and lower
sufficiency than random rankings (the mean of RANDOM_DRAWS seeded draws, with a 95%
confidence interval).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.data.vocab import CLS, MASK, PAD, SEP, UNK
from bigmodel_cli.errors import UserError
from bigmodel_cli.explain.explanation import Explanation
from bigmodel_cli.training.classify_data import encode_ids

METHODS = ("attention", "rollout", "saliency", "grad-input", "ig")
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5)
RANDOM_DRAWS = 10  # random rankings per text: their mean is the bar, their spread its interval


class Explainer:
    """Explains one model: a finetuned classifier, or a causal LM's next word."""

    def __init__(self, model, vocab, labels: list[str] | None = None, max_len: int | None = None, encode=None):
        """`max_len`: the tokens a classifier reads, as in finetune, predict and evaluate (the
        run's train.json); `encode(words, max_len)`: their encoder, predict's TextPipeline.encode
        when the explainer is loaded from a run."""
        import torch

        self.torch = torch
        self.model = model.eval()
        self.vocab = vocab
        self.kind = "classifier" if model.cfg.num_labels else "causal"
        if self.kind == "causal" and not (model.cfg.causal and model.cfg.lm_head):
            raise UserError("this run is a masked-LM pretrain run, which has no prediction to explain",
                            hint="explain a finetuned classifier (bigmodel finetune) or a causal run (pretrain --objective clm)")
        self.labels = labels or list(model.cfg.labels) or [str(i) for i in range(model.cfg.num_labels)]
        self.max_len = min(max_len or model.cfg.max_positions, model.cfg.max_positions)
        self.encode = encode or (lambda words, length: encode_ids(vocab, words, length))
        self.special = {vocab.id(t) for t in (PAD, CLS, SEP, MASK)}

    # -- inputs and outputs ------------------------------------------------------------
    def encode_words(self, words: list[str]) -> tuple[list[int], list[int]]:
        """The ids the model sees and the positions that hold words: for a classifier, exactly
        what predict and evaluate feed it ([CLS] words [SEP] cut to max_len, by their encoder);
        for a causal LM [CLS] words cut from the left to the position table (the words nearest
        the prediction matter). `words` are model units (one id each, see Encoder.units)."""
        index: list[int | None]
        if self.kind == "classifier":
            ids = self.encode(words, self.max_len)
            index = [None, *range(len(ids) - 2), None]
        else:
            ids = ([self.vocab.id(CLS)] + self.vocab.encode(words))[-self.max_len:]
            index = [None, *range(len(words))][-self.max_len:]
        self._index = index
        return ids, [p for p, w in enumerate(index) if w is not None]

    def probs(self, ids, mask=None, token_embeds=None):
        """(B, C) class probabilities, or (B, vocab) next-word probabilities."""
        return self.logits(ids, mask, token_embeds).float().softmax(-1)

    def logits(self, ids, mask=None, token_embeds=None):
        """What the gradient methods attribute: the target's logit, not its probability. A
        confident model's probability is flat (saliency vanishes) and then jumps along the
        integrated-gradients path (the Riemann sum needs hundreds of steps); the logit is
        neither."""
        causal = self.kind == "causal"
        hidden, _ = self.model.encode(ids, attention_mask=mask, causal=causal, token_embeds=token_embeds)
        if causal:
            last = (mask.sum(1) - 1) if mask is not None else self.torch.full((ids.shape[0],), ids.shape[1] - 1)
            logits = self.model.lm_logits(hidden[self.torch.arange(ids.shape[0]), last])
        else:
            logits = self.model.classify(hidden, mask)
        return logits

    def target_of(self, target: str | None, probs) -> int:
        if target is None:
            return int(probs.argmax())
        if self.kind == "classifier":
            if target not in self.labels:
                raise UserError(f"--target '{target}' is not a label of this model", hint=f"its labels are: {', '.join(self.labels)}")
            return self.labels.index(target)
        if target not in self.vocab:
            raise UserError(f"--target '{target}' is not in the vocabulary of this run", hint="give a word the model knows, or leave --target out")
        return self.vocab.id(target)

    def name_of(self, index: int) -> str:
        return self.labels[index] if self.kind == "classifier" else self.vocab.tokens[index]

    # -- the methods -------------------------------------------------------------------
    def explain(self, text: str, words: list[str], methods=METHODS, *, target: str | None = None, layer: int | None = None,
                head: int | None = None, steps: int = 50, internal_batch_size: int = 25, baseline: str = "pad") -> Explanation:
        torch = self.torch
        cfg = self.model.cfg
        if layer is not None and not 0 <= layer < cfg.layers:
            raise UserError(f"--layer {layer} is out of range: the model has {cfg.layers} layers (0 to {cfg.layers - 1})")
        if head is not None and not 0 <= head < cfg.heads:
            raise UserError(f"--head {head} is out of range: the model has {cfg.heads} heads (0 to {cfg.heads - 1})")
        ids, positions = self.encode_words(words)
        shown = [self.vocab.tokens[i] for i in ids]
        words = [words[self._index[p]] for p in positions]
        x = torch.tensor([ids])
        with torch.no_grad():
            _, attentions = self.model.encode(x, causal=self.kind == "causal", need_weights=True)
            probs = self.probs(x)[0]
        t = self.target_of(target, probs)
        result = Explanation(text, words, [shown[p] == UNK for p in positions], self.kind, self.name_of(t), t,
                             float(probs[t]), self.name_of(int(probs.argmax())), self._top_probs(probs),
                             kept=[self._index[p] for p in positions])
        query = 0 if self.kind == "classifier" else len(ids) - 1
        att = torch.stack([a[0] for a in attentions])  # (layers, heads, T, T)
        result.attention = [[att[l_, h_].numpy() for h_ in range(cfg.heads)] for l_ in range(cfg.layers)]
        for method in methods:
            if method == "attention":
                sel = att[layer:layer + 1] if layer is not None else att
                sel = sel[:, head:head + 1] if head is not None else sel
                scores = sel.mean((0, 1))[query]
            elif method == "rollout":
                scores = rollout(att)[query]
            elif method in ("saliency", "grad-input"):
                grad, embeds = self._gradient(x, t)
                scores = grad.norm(dim=-1) if method == "saliency" else (grad * embeds).sum(-1)
            elif method == "ig":
                scores, result.ig_delta = self.integrated_gradients(x, t, steps, internal_batch_size, baseline, positions)
                result.ig_steps = steps
            else:
                raise UserError(f"--method must be one of {', '.join(METHODS)} or all, got '{method}'")
            result.scores[method] = [float(scores[p]) for p in positions]
        return result

    def _top_probs(self, probs, k: int = 5) -> dict[str, float]:
        values, index = probs.topk(min(k, probs.numel()))
        return {self.name_of(int(i)): float(v) for v, i in zip(values, index)}

    def _gradient(self, x, target: int):
        embeds = self.model.embeddings.tokens(x).detach().requires_grad_(True)
        p = self.logits(x, token_embeds=embeds)[0, target]
        (grad,) = self.torch.autograd.grad(p, embeds)
        return grad[0], embeds[0].detach()

    def integrated_gradients(self, x, target: int, steps: int, internal_batch_size: int, baseline: str = "pad",
                             positions: list[int] | None = None):
        """Scores per position and the completeness gap |Σ scores − (f(x) − f(baseline))|, f the target's logit.
        The baseline replaces the words at `positions` (default: every non-special token)."""
        torch = self.torch
        if steps < 1 or internal_batch_size < 1:
            raise UserError(f"--steps and --internal-batch-size must be positive, got {steps} and {internal_batch_size}")
        emb = self.model.embeddings.tokens(x).detach()[0]  # (T, D)
        base = emb.clone()
        words = torch.zeros(x.shape[1], dtype=torch.bool)
        words[positions if positions is not None else [i for i, t in enumerate(x[0].tolist()) if t not in self.special]] = True
        fill = torch.zeros_like(emb[0]) if baseline == "zeros" else self.model.embeddings.tokens.weight[self.vocab.id(PAD)].detach()
        base[words] = fill
        diff = emb - base
        total = torch.zeros_like(emb)
        alphas = (torch.arange(steps, dtype=emb.dtype) + 0.5) / steps  # midpoints
        for start in range(0, steps, internal_batch_size):
            a = alphas[start:start + internal_batch_size]
            path = (base + a[:, None, None] * diff).requires_grad_(True)
            p = self.logits(x.expand(len(a), -1), token_embeds=path)[:, target]
            (grad,) = torch.autograd.grad(p.sum(), path)
            total += grad.sum(0)
        scores = (diff * total / steps).sum(-1)
        with torch.no_grad():
            gap = float(scores.sum()) - float(self.logits(x, token_embeds=emb[None])[0, target] - self.logits(x, token_embeds=base[None])[0, target])
        return scores, abs(gap)

    # -- faithfulness ------------------------------------------------------------------
    def faithfulness(self, words: list[str], scores: dict[str, list[float]], target: int, removal: str = "mask",
                     seed: int = 0, draws: int = RANDOM_DRAWS, batch_size: int = 64) -> dict[str, dict[str, Any]]:
        """AOPC comprehensiveness and sufficiency for each method and for random rankings: the
        mean of `draws` seeded permutations, each draw's figures kept (one draw is noise)."""
        ids, positions = self.encode_words(words)
        n = len(positions)
        rankings = {m: [positions[i] for i in np.argsort(-np.asarray(s), kind="stable")] for m, s in scores.items()}
        for d in range(draws):
            rankings[("random", d)] = [positions[i] for i in np.random.default_rng([seed, d]).permutation(n)]
        variants, keys = [ids], []
        for method, order in rankings.items():
            for level in LEVELS:
                top = set(order[: max(1, math.ceil(level * n))]) if n else set()
                rest = set(positions) - top
                variants += [_remove(ids, top, removal, self.vocab.id(MASK)), _remove(ids, rest, removal, self.vocab.id(MASK))]
                keys.append(method)
        p = self._target_probs(variants, target, batch_size)
        full, aopc = p[0], {}
        for i, method in enumerate(keys):
            entry = aopc.setdefault(method, [0.0, 0.0])
            entry[0] += (full - p[1 + 2 * i]) / len(LEVELS)
            entry[1] += (full - p[2 + 2 * i]) / len(LEVELS)
        out: dict[str, dict[str, Any]] = {m: {"comprehensiveness": c, "sufficiency": s_} for m, (c, s_) in aopc.items()
                                          if not isinstance(m, tuple)}
        per_draw = [aopc[("random", d)] for d in range(draws)]
        out["random"] = {"comprehensiveness": float(np.mean([c for c, _ in per_draw])),
                         "sufficiency": float(np.mean([s_ for _, s_ in per_draw])), "draws": per_draw}
        return out

    def _target_probs(self, variants: list[list[int]], target: int, batch_size: int) -> list[float]:
        """p(target) for each id list, padded and run `batch_size` at a time (bounded memory)."""
        torch = self.torch
        pad, out = self.vocab.id(PAD), []
        for start in range(0, len(variants), batch_size):
            chunk = variants[start:start + batch_size]
            width = max(len(v) for v in chunk)
            x = torch.tensor([v + [pad] * (width - len(v)) for v in chunk])
            mask = torch.tensor([[1] * len(v) + [0] * (width - len(v)) for v in chunk]).bool()
            with torch.no_grad():
                out += self.probs(x, mask)[:, target].tolist()
        return out


def _remove(ids: list[int], drop: set[int], removal: str, mask_id: int) -> list[int]:
    if removal == "delete":
        return [t for i, t in enumerate(ids) if i not in drop]
    return [mask_id if i in drop else t for i, t in enumerate(ids)]


def rollout(att) -> Any:
    """Attention rollout: Π_l (0.5·mean_heads(A_l) + 0.5·I), rows renormalised."""
    import torch

    T = att.shape[-1]
    result = torch.eye(T)
    for layer in att:  # (heads, T, T)
        a = 0.5 * layer.mean(0) + 0.5 * torch.eye(T)
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    return result


# -- the stage ------------------------------------------------------------------------
def pick_run(ws, run: str | None) -> Path:
    """runs/RUN, or the newest classifier (a pretrain run only when there is none)."""
    from bigmodel_cli.model.runs import find_run, run_folders, run_kind

    if run in (None, "latest"):
        kinds = {run_kind(p) for p in run_folders(ws)}
        return find_run(ws, None, kind="finetune" if "finetune" in kinds else None)
    return find_run(ws, run)


def load_explainer(ws, run: str | None):
    from bigmodel_cli.data.tokenizer import Encoder
    from bigmodel_cli.model.runs import load_model
    from bigmodel_cli.training.classify_data import classifier_max_len

    folder = pick_run(ws, run)
    model, checkpoint = load_model(folder)
    encoder = Encoder.from_folder(folder)
    max_len = classifier_max_len(folder, model) if model.cfg.num_labels else None
    return folder, Explainer(model, encoder.vocab, max_len=max_len, encode=encoder.encode_units), encoder


def summarize_faithfulness(rows: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Mean AOPC per method over the examples. Random: the mean over its draws, with a 95%
    confidence interval from the spread of the draws' means (Student's t); a method beats
    random when its comprehensiveness is above that interval and its sufficiency below it."""
    methods = rows[0].keys() if rows else []
    table: dict[str, dict[str, Any]] = {
        m: {k: float(np.mean([r[m][k] for r in rows])) for k in ("comprehensiveness", "sufficiency")} for m in methods}
    rand = table.get("random")
    if rand is not None:
        draws = np.mean([np.asarray(r["random"]["draws"], dtype=float) for r in rows], axis=0)  # (draws, 2)
        rand["draws"] = len(draws)
        for k, column in zip(("comprehensiveness", "sufficiency"), draws.T):
            rand[f"{k}_ci95"] = [round(v, 6) for v in mean_ci95(column)]
    for m, entry in table.items():
        entry["examples"] = len(rows)
        if m != "random" and rand:
            entry["beats_random"] = bool(entry["comprehensiveness"] > rand["comprehensiveness_ci95"][1]
                                         and entry["sufficiency"] < rand["sufficiency_ci95"][0])
    return table


def mean_ci95(values) -> tuple[float, float]:
    """The 95% confidence interval of the mean of `values` (Student's t; a point for one value)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean - half, mean + half


def parse_methods(method: str) -> tuple[str, ...]:
    if method == "all":
        return METHODS
    chosen = tuple(m.strip() for m in method.split(",") if m.strip())
    bad = [m for m in chosen if m not in METHODS]
    if bad or not chosen:
        raise UserError(f"--method must be one of {', '.join(METHODS)} or all (comma-separated for several), got '{method}'")
    return chosen


def readable_part(text: str, explainer: Explainer) -> str:
    """The part of `text` worth segmenting: as predict does, a classifier's text is cut to
    predict's character budget (its first max_len tokens lie well inside), and a causal
    run's from the left (its last words matter), so that a line of megabytes does not take
    minutes to segment for words the model never reads."""
    from bigmodel_cli.data.cleaning import MAX_CHARS

    cut = max(MAX_CHARS, 200 * explainer.max_len)
    return text[:cut] if explainer.kind == "classifier" else text[-cut:]


def explain_texts(ws, texts: list[str], *, run: str | None = None, methods=METHODS, target: str | None = None,
                  layer: int | None = None, head: int | None = None, steps: int = 50, internal_batch_size: int = 25,
                  baseline: str = "pad", faithfulness: bool = False, removal: str = "mask", progress=None):
    """Explain each text; with faithfulness, also score every method against random."""
    if baseline not in ("pad", "zeros"):
        raise UserError(f"--baseline must be pad or zeros, got '{baseline}'")
    if removal not in ("mask", "delete"):
        raise UserError(f"--removal must be mask or delete, got '{removal}'")
    folder, explainer, encoder = load_explainer(ws, run)
    results, faith = [], []
    for i, text in enumerate(texts):
        if not text or not text.strip():
            raise UserError("the text to explain is empty", hint="give some words, e.g. bigmodel explain \"房间很干净\"")
        part = readable_part(text, explainer)
        words = encoder.units(part)
        if not words:
            raise UserError(f"nothing is left of {text[:80]!r} after cleaning", hint="give text with words in it")
        exp = explainer.explain(text, words, methods, target=target, layer=layer, head=head, steps=steps,
                                internal_batch_size=internal_batch_size, baseline=baseline)
        if len(texts) > 1:  # a page of several texts draws the head means only: keep only them (memory)
            exp.attention = [[np.mean(heads, axis=0)] for heads in exp.attention]
        if faithfulness:  # measured on what the model reads: its tokens
            faith.append(explainer.faithfulness(exp.words, exp.scores, exp.target_index, removal, seed=i))
        groups = encoder.word_groups(part)
        if groups is not None:
            exp.by_words(groups)
        results.append(exp)
        if progress:
            progress()
    return folder, explainer, results, (summarize_faithfulness(faith) if faithfulness else None)


def read_split_texts(ws, split: str, limit: int | None, seed: int = 42) -> list[str]:
    """The texts of a processed split; with `limit`, a seeded random sample of that many, in
    file order (a split may be sorted by label: its first lines would all share one)."""
    import random

    from bigmodel_cli.data.store import read_records

    path = split_path(ws, split)
    if path is None:
        raise UserError(f"no {split} split in {ws.relative(ws.processed)}/", hint="run `bigmodel preprocess` first, or give --input FILE")
    rng = random.Random(seed)
    kept: list[tuple[int, str]] = []  # reservoir sampling: one pass, `limit` texts in memory
    for seen, record in enumerate(read_records(path, columns=["text"])):
        if not limit or len(kept) < limit:
            kept.append((seen, record["text"]))
        else:
            slot = rng.randrange(seen + 1)
            if slot < limit:
                kept[slot] = (seen, record["text"])
    return [text for _, text in sorted(kept)]


def split_path(ws, split: str) -> Path | None:
    """The file of a processed split (train.parquet, or an older version's train.jsonl); None when there is none."""
    from bigmodel_cli.data.store import split_file

    return split_file(ws.processed, split) if split in ("train", "dev", "test") else None


# -- files and the run record ---------------------------------------------------------------
def html_target(path: Path, stem: str) -> Path:
    """Where --html PATH puts the page: PATH, or STEM.html inside it when it is a folder.
    Checked before the work, so that a path through a file fails at once, in one line."""
    if path.is_dir():
        return path / f"{stem}.html"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--html {path}: {parent} is a file, not a folder", hint="give a file in a folder, or a folder")
            break
    return path


@dataclass
class ExplainResult:
    """An explain run: skipped (then `explanations` is empty and `files` are the last run's) or done."""

    skipped: bool
    folder: Path
    record: dict[str, Any] | None
    explanations: list[Explanation]
    faithfulness: dict | None
    files: dict[str, str]


def explain(ws, texts: list[str], *, stem: str, source: str, run: str | None = None, methods=METHODS,
            target: str | None = None, layer: int | None = None, head: int | None = None, steps: int = 50,
            internal_batch_size: int = 25, baseline: str = "pad", faithfulness: bool = False, removal: str = "mask",
            html_path: Path | None = None, png: bool = False, input_paths: tuple[Path, ...] = (),
            params: dict[str, Any] | None = None, force: bool = False, progress=None,
            warnings: list[str] | None = None) -> ExplainResult:
    """The explain stage: explain `texts` and write the files named by `stem` into
    explanations/RUN/, under the workspace lock, with the record `explain:RUN`. The same texts,
    options and checkpoint as the last run of this `stem` (its files intact) skip, unless
    `force`; `input_paths` (the file the texts came from) are hashed into the record."""
    from bigmodel_cli.model.runs import model_checkpoint

    folder = pick_run(ws, run)
    checkpoint = model_checkpoint(folder)
    stage = f"explain:{folder.name}"
    params = {"run": folder.name, "checkpoint": checkpoint.name, "methods": list(methods), "target": target,
              "layer": layer, "head": head, "steps": steps, "internal_batch_size": internal_batch_size,
              "baseline": baseline, "faithfulness": faithfulness, "removal": removal, "texts": len(texts),
              "texts_sha256": _texts_sha256(texts), "source": source, "stem": stem,
              "html": str(html_path) if html_path else None, "png": png, **(params or {})}
    inputs = ws.hash_paths([checkpoint / "model.safetensors", *input_paths])
    last = next((r for r in reversed(ws.records(stage)) if r.get("status") == "ok" and r["params"].get("stem") == stem), None)

    def work():
        _, _, results, faith = explain_texts(
            ws, texts, run=folder.name, methods=methods, target=target, layer=layer, head=head, steps=steps,
            internal_batch_size=internal_batch_size, baseline=baseline, faithfulness=faithfulness, removal=removal,
            progress=progress)
        done = _write_files(ws, folder, results, faith, stem=stem, html_path=html_path, png=png, removal=removal,
                            inputs_note=source, warnings=warnings)
        done.value = (results, faith, done.value)
        return done

    outcome = _run_stage(ws, stage, params, inputs, work, may_skip=not force, last=last)
    if outcome.skipped:
        return ExplainResult(True, folder, outcome.record, [], None, dict(outcome.record.get("files") or {}))
    results, faith, files = outcome.value
    return ExplainResult(False, folder, outcome.record, results, faith, {k: ws.relative(v) for k, v in files.items()})


def _texts_sha256(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def _run_stage(ws, stage: str, params: dict[str, Any], inputs: list[dict[str, str]], work, *, may_skip: bool,
               last: Any = None):
    """run_stage for explain: under the workspace lock (two explains, or an explain and a
    finetune into the same run, do not write at once); no failed record, since a failed
    explain leaves nothing that another stage reads."""
    from bigmodel_cli.workspace.records import run_stage

    return run_stage(ws, stage, params, inputs, work, lock=f"explain {stage.split(':', 1)[1]}", may_skip=may_skip,
                     last=last, record_errors=())


def write_outputs(ws, folder: Path, explanations: list[Explanation], faith: dict | None, *, stem: str,
                  html_path: Path | None, png: bool, params: dict[str, Any], inputs_note: str,
                  warnings: list[str] | None = None) -> dict[str, Any]:
    """Explanations already made, written as `explain` writes them, with the record
    `explain:RUN` (under the lock, never skipped): quickstart's one explained example."""
    from bigmodel_cli.model.runs import model_checkpoint

    checkpoint = model_checkpoint(folder)

    def work():
        return _write_files(ws, folder, explanations, faith, stem=stem, html_path=html_path, png=png,
                            removal=params.get("removal", "mask"), inputs_note=inputs_note, warnings=warnings)

    outcome = _run_stage(ws, f"explain:{folder.name}", params, ws.hash_paths([checkpoint / "model.safetensors"]), work,
                         may_skip=False)
    return {k: ws.relative(v) for k, v in outcome.value.items()}


def _write_files(ws, folder: Path, explanations: list[Explanation], faith: dict | None, *, stem: str,
                 html_path: Path | None, png: bool, removal: str, inputs_note: str, warnings: list[str] | None):
    """HTML page, JSON(L) scores, PNGs and the faithfulness table into explanations/RUN/ (an
    `html_path` that is a folder gets STEM.html inside it): the Done of a stage run, whose
    value is {kind: path}. Things the user should know (no font for the words of a PNG) are
    appended to `warnings`."""
    from bigmodel_cli.evaluation.plots import CJK_HINT
    from bigmodel_cli.explain.render import render_html, write_png
    from bigmodel_cli.fileio import atomic_write, json_line, write_json
    from bigmodel_cli.workspace.records import Done

    out_dir = ws.root / "explanations" / folder.name
    out_dir.mkdir(parents=True, exist_ok=True)
    page = html_target(html_path, stem) if html_path else out_dir / f"{stem}.html"
    with atomic_write(page) as handle:
        handle.write(render_html(explanations, folder.name, faith, removal=removal))
    outputs = {"html": page}
    scores_path = out_dir / f"{stem}.jsonl"
    with atomic_write(scores_path) as handle:
        for exp in explanations:
            handle.write(json_line(exp.to_json()))
    outputs["json"] = scores_path
    pngs = []
    if png:
        pngs = [out_dir / f"{stem}-{i}.png" for i in range(1, min(len(explanations), 50) + 1)]
        drawn = [write_png(exp, path) for exp, path in zip(explanations, pngs)]
        outputs["png"] = pngs[0]
        if not all(drawn) and warnings is not None:
            warnings.append(f"PNG: {CJK_HINT} (the columns are numbered; the page and the JSON have the words)")
    metrics: dict[str, Any] = {"texts": len(explanations)}
    if faith:
        path = out_dir / f"{stem}-faithfulness.json"
        write_json(path, {"removal": removal, "levels": list(LEVELS), "methods": faith})
        outputs["faithfulness"] = path
        for method, entry in faith.items():
            if method != "random":
                metrics[f"{method}_comp"] = round(entry["comprehensiveness"], 4)
    if len(explanations) == 1:
        metrics.update(predicted=explanations[0].predicted, p=round(explanations[0].probability, 4))
    # Every file is in the record, so that one deleted or changed makes the next run redo the work.
    recorded = [p for p in dict.fromkeys([*outputs.values(), *pngs]) if p.exists()]
    return Done(outputs, recorded, metrics,
                extra={"texts_from": inputs_note, "files": {k: ws.relative(v) for k, v in outputs.items()}})
