"""`bigmodel embed`: static word embeddings from the processed training split.

    train.parquet tokens -> stopwords out -> chunks of <= 10,000 tokens -> one token file
      -> word2vec / fasttext (gensim, `corpus_file` mode) or glove (bigmodel_cli.embeddings.glove)
      -> per-epoch loss (float64) -> evaluation -> .kv + word2vec-format export

Each run is a named folder `embeddings/NAME/` written into a staging folder that replaces
the old one only when the run succeeds, and a run record under stage `embed:NAME`.

Speed: gensim reads the token file itself in its C threads (`corpus_file`), without a
Python producer thread, and the vocabulary comes from the counts taken while the file is
written (`build_vocab_from_freq`), so the corpus is read once by Python, not twice.

Loss: gensim's own training loss is a float32 running sum that saturates on large
corpora, and with more than one worker thread each thread overwrites the others' sums
(in `corpus_file` mode only the last thread to finish counts; in iterable mode updates
race). FastText has no loss at all. So bigmodel computes the negative-sampling objective
itself at the end of every epoch, in float64, on a fixed sample of training examples
drawn the way gensim draws them (downsampling, shrunk windows, unigram^0.75 negatives),
with the input vectors formed as gensim's training code forms them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from bigmodel_cli.data.store import count_records, read_records, split_file
from bigmodel_cli.embeddings.vectors import (
    SAFE_VECTORS,
    SAFE_WORDS,
    TOPN,
    VECTORS,
    EvalFiles,
    evaluate_vectors,
    export_name,
    find_run,
    load_vectors,
    neighbors,
    save_vectors,
)
from bigmodel_cli.errors import InputError, UserError
from bigmodel_cli.fileio import (
    read_json,
    recover_dir,
    remove_stale,
    staged_dir,
    write_json,
)
from bigmodel_cli.workspace.config import EmbedConfig, resolve_checked
from bigmodel_cli.workspace.layout import check_name

METHODS = ("word2vec", "fasttext", "glove")
# gensim silently cuts a sentence after this many tokens (MAX_WORDS_IN_BATCH): longer
# documents are written as several lines instead.
MAX_SENTENCE = 10_000
# Examples in the fixed loss sample, small enough to cost little per epoch. The same
# examples every epoch, so epochs compare closely even though the level is a sample's.
LOSS_SAMPLE_EXAMPLES = 4_096
LOSS_SAMPLE_CHUNKS = 512  # chunks kept (reservoir) while the corpus is read
LOSS_SAMPLE_TOKENS = 60_000  # of which at most this many tokens are used
STAGING_RE = r"\.[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\.staging-(\d+)"  # a run's staging folder; the group is its pid


# -- options --------------------------------------------------------------------------
def resolve_config(section: dict[str, Any] | None, overrides: dict[str, Any]) -> EmbedConfig:
    """Defaults < [embed] in bigmodel.toml < options, checked; every problem reported at once.

    `window` and `epochs` given for `--method glove` set `glove_window` and `glove_epochs`.
    """
    def for_glove(options: dict[str, Any]) -> dict[str, Any]:
        method = options.get("method") or (section or {}).get("method") or EmbedConfig.method
        if method == "glove":
            for key in ("window", "epochs"):
                if options.get(key) is not None:
                    options[f"glove_{key}"] = options.pop(key)
        return options

    return resolve_checked(EmbedConfig, section, overrides, validate, rename=for_glove)


def validate(cfg: EmbedConfig) -> list[str]:
    """Every problem with the settings, so that the user fixes them all at once."""
    problems = []
    if cfg.method not in METHODS:
        problems.append(f"--method must be one of {', '.join(METHODS)}, got '{cfg.method}'")
    glove = cfg.method == "glove"
    window, epochs = ("glove_window", "glove_epochs") if glove else ("window", "epochs")
    for key, option in (("dim", "dim"), (window, "window"), (epochs, "epochs"), ("min_count", "min-count")):
        if getattr(cfg, key) < 1:
            problems.append(f"--{option} must be a positive integer, got {getattr(cfg, key)}")
    if not glove and cfg.negative < 1:
        problems.append(f"--negative must be a positive integer (bigmodel trains with negative sampling), got {cfg.negative}")
    if cfg.workers < 0:
        problems.append(f"--workers must be 0 (one per core) or more, got {cfg.workers}")
    if cfg.x_max <= 0 or cfg.glove_lr <= 0 or not math.isfinite(cfg.x_max + cfg.glove_lr):
        problems.append(f"x_max and glove_lr must be positive numbers, got {cfg.x_max} and {cfg.glove_lr}")
    if cfg.buckets < 1:
        problems.append(f"--buckets must be a positive integer, got {cfg.buckets}")
    if not 1 <= cfg.min_n <= cfg.max_n:
        problems.append(f"--min-n and --max-n must be whole numbers with 1 <= min-n <= max-n, got {cfg.min_n} and {cfg.max_n}")
    if not all(isinstance(p, str) and p.strip() and not any(c.isspace() for c in p.strip()) for p in cfg.probes):
        problems.append(f"probes must be single words, got {cfg.probes!r}")
    return problems


def check_ngram_memory(cfg: EmbedConfig) -> None:
    """fastText's n-gram matrix (buckets x dim float32) must fit in memory, with room for the rest,
    or gensim fails with a MemoryError half-way (or the system kills the process)."""
    need = cfg.buckets * cfg.dim * 4
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not known on this system
        return
    if need > have // 2:
        raise UserError(f"--buckets {cfg.buckets:,} x --dim {cfg.dim} needs {need / 2**30:.1f} GiB for fastText's n-gram matrix, "
                        f"more than half of this machine's {have / 2**30:.1f} GiB",
                        hint=f"use --buckets {max(1, have // 4 // (cfg.dim * 4)):,} or less (a quarter of the memory)")




def settings(cfg: EmbedConfig, seed: int) -> dict[str, Any]:
    """The parameters that shape the vectors of this method (recorded, compared to skip)."""
    glove = cfg.method == "glove"
    params: dict[str, Any] = {
        "method": cfg.method, "dim": cfg.dim,
        "window": cfg.glove_window if glove else cfg.window,
        "epochs": cfg.glove_epochs if glove else cfg.epochs,
        "min_count": cfg.min_count, "stopwords": cfg.stopwords, "seed": seed, "workers": cfg.workers,
    }
    if cfg.data:  # absent for the default dataset, so that earlier records still match
        params["data"] = cfg.data
    if glove:
        params.update(x_max=cfg.x_max, lr=cfg.glove_lr, alpha=0.75)
    else:
        params.update(negative=cfg.negative, sg=cfg.sg)
        if cfg.method == "fasttext":
            params.update(buckets=cfg.buckets, min_n=cfg.min_n, max_n=cfg.max_n)
    return params


# -- corpus ---------------------------------------------------------------------------
@dataclass
class Corpus:
    """The training tokens as read: counts, a loss sample, and the token file or id arrays."""

    documents: int = 0
    chunks: int = 0
    tokens: int = 0
    stopwords_removed: int = 0
    split_documents: int = 0  # documents longer than MAX_SENTENCE, written as several chunks
    multiword: int = 0  # chunks of two words or more: the only ones with word pairs to learn from
    counts: Counter = field(default_factory=Counter)
    sample: list[list[str]] = field(default_factory=list)
    token_file: Path | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"documents": self.documents, "chunks": self.chunks, "tokens": self.tokens,
                "stopwords_removed": self.stopwords_removed, "documents_split": self.split_documents,
                "types": len(self.counts), "seconds": round(self.seconds, 3)}


def processed_train(ws, data: str = "") -> Path:
    folder = ws.find_dataset(data or None)
    path = split_file(folder, "train")
    if path is None:
        raise UserError(f"no processed data in {ws.relative(folder)}/ (train.parquet is missing)",
                        hint="run `bigmodel preprocess` first")
    return path


def load_stopword_file(ws, data: str = "") -> set[str]:
    path = ws.dataset(data or None) / "stopwords.txt"
    if not path.is_file():
        raise UserError(f"{ws.relative(path)} is missing", hint="run `bigmodel preprocess` again, or pass --no-stopwords")
    return {w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()}


def chunked(tokens: list[str], size: int = MAX_SENTENCE) -> list[list[str]]:
    """A document as pieces of at most `size` tokens, none lost."""
    return [tokens[i:i + size] for i in range(0, len(tokens), size)] if len(tokens) > size else [tokens]


def read_corpus(path: Path, stop: set[str], token_file: Path | None, seed: int,
                progress: Callable[[int], None] | None = None) -> Corpus:
    """Stream the train split's tokens once: drop stopwords, count, keep a seeded reservoir of chunks
    for the loss sample, and write one chunk per line to `token_file` (when given)."""
    started = time.perf_counter()
    corpus = Corpus(token_file=token_file)
    rng = random.Random(seed)
    counts, sample = corpus.counts, corpus.sample
    out = open(token_file, "w", encoding="utf-8") if token_file else None
    done = 0
    try:
        for done, record in enumerate(read_records(path, columns=["tokens"]), 1):
            if progress is not None and done % 2048 == 0:
                progress(done)
            tokens = _tokens(record["tokens"], path, done)
            corpus.documents += 1
            if stop:
                kept = [t for t in tokens if t not in stop]
                corpus.stopwords_removed += len(tokens) - len(kept)
                tokens = kept
            if not tokens:
                continue
            text = _line(tokens)
            if text is None:  # a token held whitespace or was empty: mend, so that a line splits back into the tokens
                tokens = ["_".join(t.split()) for t in tokens if isinstance(t, str) and t.strip()]
                if not tokens:
                    continue
                text = " ".join(tokens)
            counts.update(tokens)
            corpus.tokens += len(tokens)
            pieces = chunked(tokens)
            corpus.split_documents += len(pieces) > 1
            corpus.multiword += len(tokens) > 1
            for piece in pieces:
                if out is not None:
                    out.write(text if len(pieces) == 1 else " ".join(piece))
                    out.write("\n")
                # Reservoir sampling (algorithm R): a uniform sample of chunks in one pass.
                if corpus.chunks < LOSS_SAMPLE_CHUNKS:
                    sample.append(piece)
                else:
                    j = rng.randrange(corpus.chunks + 1)
                    if j < LOSS_SAMPLE_CHUNKS:
                        sample[j] = piece
                corpus.chunks += 1
    finally:
        if out is not None:
            out.close()
    if progress is not None:
        progress(done)
    corpus.seconds = time.perf_counter() - started
    return corpus


def _tokens(tokens, path: Path, number: int) -> list[str]:
    if tokens is None:
        raise InputError(path, "not a processed document (a record with a 'tokens' list)", line=number,
                         hint="run `bigmodel preprocess` again")
    if not isinstance(tokens, list):
        raise InputError(path, "'tokens' is not a list", line=number, hint="run `bigmodel preprocess` again")
    return tokens


def _line(tokens: list) -> str | None:
    """The tokens as one line of the token file, or None when the line would not split back
    into exactly these tokens (a token holding whitespace, an empty one, a non-string):
    gensim and the word2vec format both split on whitespace. A C-speed check per document."""
    try:
        text = " ".join(tokens)
    except TypeError:
        return None
    return text if text.split() == tokens else None


def check_corpus(corpus: Corpus, min_count: int, ws, train: Path) -> int:
    """The vocabulary size at `min_count`, or the error that says what is too small."""
    where = ws.relative(train)
    if corpus.documents == 0:
        raise UserError(f"the training split {where} is empty", hint="run `bigmodel preprocess` on a larger corpus")
    if corpus.tokens == 0:
        raise UserError(f"no words left in {where} after removing {corpus.stopwords_removed:,} stopwords",
                        hint="pass --no-stopwords, or preprocess with --stopwords none")
    if corpus.multiword == 0:
        raise UserError(f"every document in {where} has a single word (after removing stopwords): no word pairs to learn from",
                        hint="give it more text, or pass --no-stopwords")
    size = sum(1 for c in corpus.counts.values() if c >= min_count)
    if size == 0:
        top = max(corpus.counts.values())
        raise UserError(f"--min-count {min_count} leaves no vocabulary: the most frequent word occurs {top:,} times "
                        f"in {corpus.tokens:,} tokens", hint=f"use --min-count {top} or less")
    return size


# -- loss -----------------------------------------------------------------------------
class LossProbe:
    """The negative-sampling loss of a gensim model on a fixed sample, in float64.

    Examples are drawn once (before training) as gensim's training code draws them:
    out-of-vocabulary words dropped, frequent words downsampled by `sample_int`, each
    position's window shrunk to 1..window, `negative` targets drawn from the
    unigram^0.75 table (a draw equal to the true target is skipped, as gensim skips it).
    The value is the mean over examples of
        -log s(u_t . h) - sum_k log s(-u_k . h)
    where h is the input vector (a context word for skip-gram; the mean of the window for
    CBOW; for fastText, the word and its character n-grams as gensim averages them) and
    u the output vectors (`syn1neg`). Before training `syn1neg` is zero, so the loss is
    exactly log 2 per term: (1 + negative) log 2 when no draw hit its target.
    """

    def __init__(self, model, chunks: Iterable[list[str]], seed: int, max_examples: int = LOSS_SAMPLE_EXAMPLES):
        import numpy as np
        from scipy import sparse

        rng = np.random.default_rng(seed)
        wv = model.wv
        self.fasttext = hasattr(wv, "vectors_ngrams")
        examples = list(_examples(model, chunks, rng, max_examples))
        self.examples = n_ex = len(examples)
        if not n_ex:
            return
        buckets = wv.buckets_word if self.fasttext else None
        rows, cols, vals, ngram_rows, ngram_cols, ngram_vals = [], [], [], [], [], []
        for e, (words, _) in enumerate(examples):
            weight = self._weight(words, buckets, bool(model.sg))
            for w in words:
                rows.append(e), cols.append(w), vals.append(weight)
                if self.fasttext:
                    for b in buckets[w]:
                        ngram_rows.append(e), ngram_cols.append(int(b)), ngram_vals.append(weight)
        # Gather only the rows the sample uses: the n-gram matrix can hold millions of rows.
        self.vocab_rows, vocab_cols = np.unique(np.asarray(cols, dtype=np.int64), return_inverse=True)
        self.inputs = sparse.csr_matrix((vals, (rows, vocab_cols)), shape=(n_ex, len(self.vocab_rows)), dtype=np.float64)
        self.ngram_rows = None
        if ngram_cols:
            self.ngram_rows, ngram_inv = np.unique(np.asarray(ngram_cols, dtype=np.int64), return_inverse=True)
            self.ngram_inputs = sparse.csr_matrix((ngram_vals, (ngram_rows, ngram_inv)),
                                                  shape=(n_ex, len(self.ngram_rows)), dtype=np.float64)
        self.targets = np.array([t for _, t in examples], dtype=np.int64)
        cum = model.cum_table
        draws = rng.integers(0, int(cum[-1]), (n_ex, model.negative), dtype=np.int64)
        self.negatives = np.searchsorted(cum, draws, side="left").astype(np.int64)
        self.mask = (self.negatives != self.targets[:, None]).astype(np.float64)

    def _weight(self, words: list[int], buckets, sg: bool) -> float:
        """The weight of each word (and n-gram) vector in the input, as gensim's training code."""
        if not self.fasttext:
            return 1.0 if sg else 1.0 / len(words)  # CBOW: cbow_mean=1
        if not sg:  # fastText CBOW: mean over every word and n-gram vector of the window
            return 1.0 / sum(1 + len(buckets[w]) for w in words)
        n = len(buckets[words[0]])  # fastText skip-gram: word + n-grams divided by the n-gram count
        return 1.0 / n if n else 1.0

    def __call__(self, model) -> float | None:
        """The loss now; None when the sample holds no example (a corpus of a few words)."""
        import numpy as np

        if not self.examples:
            return None
        wv = model.wv
        syn0 = wv.vectors_vocab if self.fasttext else wv.vectors
        h = self.inputs @ syn0[self.vocab_rows].astype(np.float64)
        if self.fasttext and self.ngram_rows is not None:
            h = h + self.ngram_inputs @ wv.vectors_ngrams[self.ngram_rows].astype(np.float64)
        out = model.syn1neg
        pos = np.einsum("ed,ed->e", h, out[self.targets].astype(np.float64))
        neg = np.einsum("ed,ekd->ek", h, out[self.negatives].astype(np.float64))
        loss = np.logaddexp(0.0, -pos) + (np.logaddexp(0.0, neg) * self.mask).sum(axis=1)
        return float(loss.mean())

    def initial_value(self) -> float | None:
        """The loss with zero output vectors: log 2 per term kept."""
        return float(math.log(2) * (1.0 + self.mask.sum(axis=1)).mean()) if self.examples else None


def _examples(model, chunks: Iterable[list[str]], rng, max_examples: int) -> Iterable[tuple[list[int], int]]:
    """(input word ids, target id) as gensim's training loop forms them: OOV words dropped,
    frequent words downsampled, a window of 1..window per position. word2vec skip-gram
    predicts the centre from each context word, fastText skip-gram each context word from
    the centre, CBOW the centre from the whole window."""
    import numpy as np

    index = model.wv.key_to_index
    sample_int = model.wv.expandos["sample_int"] if model.sample else None
    window, sg, fasttext = model.window, bool(model.sg), hasattr(model.wv, "vectors_ngrams")
    made = used = 0
    for chunk in chunks:
        if made >= max_examples or used >= LOSS_SAMPLE_TOKENS:
            return
        used += len(chunk)
        ids = np.fromiter((index.get(t, -1) for t in chunk), dtype=np.int64, count=len(chunk))
        ids = ids[ids >= 0]
        if sample_int is not None and len(ids):
            ids = ids[sample_int[ids] >= rng.integers(0, 2**32, len(ids), dtype=np.uint64)]
        reduced = rng.integers(0, window, len(ids)) if model.shrink_windows else np.zeros(len(ids), dtype=np.int64)
        ids = ids.tolist()
        for i, center in enumerate(ids):
            w = window - int(reduced[i])
            context = ids[max(0, i - w):i] + ids[i + 1:i + w + 1]
            if not context:
                continue
            if not sg:
                pairs = [(context, center)]
            elif fasttext:
                pairs = [([center], c) for c in context]
            else:
                pairs = [([c], center) for c in context]
            made += len(pairs)
            yield from pairs
            if made >= max_examples:  # a 10,000-token chunk alone could give 100,000 examples
                return


# -- training -------------------------------------------------------------------------
@dataclass
class Trained:
    vectors: Any  # gensim KeyedVectors (FastTextKeyedVectors for fasttext)
    losses: list[dict[str, Any]]
    initial_loss: float | None
    loss_kind: str
    stats: dict[str, Any]


def train_gensim(cfg: EmbedConfig, corpus: Corpus, seed: int, workers: int, bar: "_Bars") -> Trained:
    import numpy as np
    from gensim.models import FastText, Word2Vec
    from gensim.models.callbacks import CallbackAny2Vec

    common = dict(vector_size=cfg.dim, window=cfg.window, min_count=cfg.min_count, sg=int(cfg.sg), hs=0,
                  negative=cfg.negative, workers=workers, seed=seed, epochs=cfg.epochs)
    if cfg.method == "fasttext":
        model = FastText(bucket=cfg.buckets, min_n=cfg.min_n, max_n=cfg.max_n, **common)
    else:
        model = Word2Vec(**common)
    # The counts taken while the token file was written: gensim need not read it again.
    model.build_vocab_from_freq(corpus.counts, corpus_count=corpus.chunks)
    probe = LossProbe(model, corpus.sample, seed)
    losses: list[dict[str, Any]] = []

    class EpochEnd(CallbackAny2Vec):
        def __init__(self) -> None:
            self.started = 0.0

        def on_epoch_begin(self, m) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, m) -> None:
            seconds = time.perf_counter() - self.started
            loss = probe(m)
            if loss is not None and not np.isfinite(loss):
                raise UserError(f"the loss is {loss} after epoch {len(losses) + 1}",
                                hint="gensim should never do this: report it with the run record")
            losses.append({"epoch": len(losses) + 1, "loss": loss, "seconds": round(seconds, 3),
                           "words_per_s": round(corpus.tokens / seconds, 1) if seconds > 0 else None})
            bar.epoch_done(len(losses), corpus.tokens, loss, corpus.tokens / max(seconds, 1e-9))

    started = time.perf_counter()
    bar.start_training(cfg.epochs, corpus.tokens, "words")
    model.train(corpus_file=str(corpus.token_file), total_examples=corpus.chunks, total_words=corpus.tokens,
                epochs=cfg.epochs, callbacks=[EpochEnd()])
    seconds = time.perf_counter() - started
    stats = {"train_seconds": round(seconds, 3), "words_per_s": round(corpus.tokens * cfg.epochs / seconds, 1),
             "loss_sample_examples": probe.examples}
    return Trained(model.wv, losses, probe.initial_value(), "negative-sampling loss per example, float64, "
                   f"on a fixed sample of {probe.examples:,} training examples at the end of each epoch", stats)


def glove_ids(corpus: Corpus, min_count: int) -> tuple[list[str], list[int], list]:
    """The vocabulary (most frequent first, ties by the word) and the corpus as id arrays,
    out-of-vocabulary words removed (as the reference GloVe tool skips them)."""
    import numpy as np

    words = sorted((w for w, c in corpus.counts.items() if c >= min_count), key=lambda w: (-corpus.counts[w], w))
    index = {w: i for i, w in enumerate(words)}
    arrays = []
    with open(corpus.token_file, encoding="utf-8") as handle:
        for line in handle:
            ids = np.fromiter((index.get(t, -1) for t in line.split()), dtype=np.int64)
            ids = ids[ids >= 0]
            if len(ids):
                arrays.append(ids)
    return words, [corpus.counts[w] for w in words], arrays


def train_glove_vectors(cfg: EmbedConfig, corpus: Corpus, seed: int, workers: int, bar: "_Bars") -> Trained:
    from gensim.models import KeyedVectors

    try:
        from bigmodel_cli.embeddings.glove import train_glove
    except ImportError:
        raise UserError("--method glove is not available in this build (bigmodel_cli.embeddings.glove is missing)",
                        hint="use --method word2vec or fasttext") from None
    words, counts, ids = glove_ids(corpus, cfg.min_count)
    bar.epochs = cfg.glove_epochs
    vectors, losses, stats = train_glove(ids, len(words), dim=cfg.dim, window=cfg.glove_window, epochs=cfg.glove_epochs,
                                         x_max=cfg.x_max, alpha=0.75, lr=cfg.glove_lr, seed=seed, workers=workers,
                                         progress=bar.glove_callback())
    rows = []
    for epoch, loss in enumerate(losses, 1):
        loss = float(loss)
        if not math.isfinite(loss):
            raise UserError(f"GloVe's cost is {loss} after epoch {epoch}", hint="lower glove_lr, or raise x_max")
        rows.append({"epoch": epoch, "loss": loss})
    pairs = stats.get("nonzero_pairs")
    for row, seconds in zip(rows, stats.get("seconds_per_epoch") or []):
        row["seconds"] = round(float(seconds), 3)
        if pairs and seconds > 0:
            row["pairs_per_s"] = round(pairs / seconds, 1)
    kv = KeyedVectors(cfg.dim)
    kv.add_vectors(words, vectors)
    for word, count in zip(words, counts):
        kv.set_vecattr(word, "count", count)
    clean = {k: _rounded(v) for k, v in stats.items() if isinstance(v, (int, float, str, list))}
    return Trained(kv, rows, None, "GloVe weighted least-squares cost per epoch (from bigmodel_cli.embeddings.glove)", clean)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# -- the stage ------------------------------------------------------------------------
@dataclass
class EmbedResult:
    skipped: bool
    name: str
    folder: Path
    record: dict[str, Any]
    report: dict[str, Any]
    losses: dict[str, Any]
    evaluation: dict[str, Any]


def embed(ws, config: EmbedConfig | None = None, *, name: str | None = None, seed: int = 42, force: bool = False,
          show_progress: bool = False, console=None) -> EmbedResult:
    """Train, evaluate and export one embedding run into embeddings/NAME/."""
    cfg = config or EmbedConfig()
    problems = validate(cfg)
    if problems:
        raise UserError("; ".join(problems))
    name = check_name(name or cfg.method)
    if cfg.method == "fasttext":
        check_ngram_memory(cfg)
    train = processed_train(ws, cfg.data)
    eval_files = {key: ws.absolute(getattr(cfg, key)) if getattr(cfg, key) else None for key in ("analogies", "pairs")}
    files = EvalFiles.read(eval_files["analogies"], eval_files["pairs"])  # a bad file fails before training
    workers = cfg.workers or os.cpu_count() or 1
    params = {**settings(cfg, seed), "name": name, "binary": cfg.binary, "probes": list(cfg.probes),
              "analogies": ws.relative(eval_files["analogies"]) if eval_files["analogies"] else None,
              "pairs": ws.relative(eval_files["pairs"]) if eval_files["pairs"] else None}
    input_paths = [train] + ([train.parent / "stopwords.txt"] if cfg.stopwords else [])
    input_paths += [p for p in eval_files.values() if p is not None]
    if cfg.stopwords:
        load_stopword_file(ws, cfg.data)  # a clear error before hashing a missing file
    inputs = ws.hash_paths(input_paths)
    stage = f"embed:{name}"
    folder = ws.root / "embeddings" / name

    from bigmodel_cli.workspace.records import Done, run_stage

    def work() -> Done:
        recover_dir(folder)
        remove_stale_staging(folder.parent)
        with staged_dir(staging_dir(folder), folder) as staging:
            report, losses, evaluation = _run(ws, cfg, name, seed, workers, train, files, staging, show_progress, console)
        outputs = sorted(p for p in folder.iterdir() if p.is_file())
        return Done((report, losses, evaluation), outputs, _headline(report, losses, evaluation))

    outcome = run_stage(ws, stage, params, inputs, work, lock=f"embed --name {name}", sections=("project", "embed"),
                        may_skip=not force)
    if outcome.skipped:
        return EmbedResult(True, name, folder, outcome.record, *_read_outputs(folder))
    return EmbedResult(False, name, folder, outcome.record, *outcome.value)


def staging_dir(folder: Path) -> Path:
    """Where a run writes embeddings/NAME/ before it replaces it: `.NAME.staging-PID`."""
    return folder.with_name(f".{folder.name}.staging-{os.getpid()}")


def remove_stale_staging(root: Path) -> list[Path]:
    """Remove the staging folders of killed runs in embeddings/ (any run name): only names of
    exactly the form `staging_dir` gives, and only when that pid no longer runs."""
    if not root.is_dir():
        return []
    return remove_stale(root, ".*.staging-*", STAGING_RE)


def _run(ws, cfg: EmbedConfig, name: str, seed: int, workers: int, train: Path, files: EvalFiles,
         staging: Path, show_progress: bool, console) -> tuple[dict, dict, dict]:
    started = time.perf_counter()
    stop = load_stopword_file(ws, cfg.data) if cfg.stopwords else set()
    token_file = staging / "corpus.txt"  # removed below: the export holds the vectors, not the corpus
    with _Bars(cfg.method, show_progress, console) as bars:
        corpus = read_corpus(train, stop, token_file, seed, bars.reading(count_records(train), train.name))
        vocab_size = check_corpus(corpus, cfg.min_count, ws, train)
        trainer = train_glove_vectors if cfg.method == "glove" else train_gensim
        trained = trainer(cfg, corpus, seed, workers, bars)
    token_file.unlink()
    trained_at = time.perf_counter()
    kv = trained.vectors
    save_vectors(kv, staging, cfg.binary)
    evaluation = evaluate_vectors(kv, files, cfg.probes)
    finished = time.perf_counter()
    eff = settings(cfg, seed)
    losses = {"kind": trained.loss_kind, "initial": trained.initial_loss, "epochs": trained.losses}
    report = {
        "name": name, "method": cfg.method, "settings": eff,
        "corpus": {"source": ws.relative(train), **corpus.summary()},
        "vocab_size": len(kv), "vocab_size_min_count": vocab_size,
        "training": trained.stats,
        "seconds": {"read": round(corpus.seconds, 3), "train": round(trained_at - started - corpus.seconds, 3),
                    "export_evaluate": round(finished - trained_at, 3), "total": round(finished - started, 3)},
        "files": {"keyed_vectors": VECTORS, "word2vec_format": export_name(cfg.binary), "binary": cfg.binary,
                  "read_by_bigmodel": [SAFE_VECTORS, SAFE_WORDS]},
    }
    from bigmodel_cli.workspace.records import library_versions

    write_json(staging / "config.json", {"name": name, "method": cfg.method, "seed": seed, "workers": workers,
                                         "effective": eff, "config": dataclasses.asdict(cfg),
                                         "versions": library_versions()})
    write_json(staging / "losses.json", losses)
    write_json(staging / "evaluation.json", evaluation)
    write_json(staging / "report.json", report)
    return report, losses, evaluation


def _headline(report: dict, losses: dict, evaluation: dict) -> dict[str, Any]:
    final = losses["epochs"][-1]["loss"] if losses["epochs"] else None
    metrics = {"vocab_size": report["vocab_size"], "loss": round(final, 6) if final is not None else None,
               "tokens": report["corpus"]["tokens"]}
    if "words_per_s" in report["training"]:
        metrics["words_per_s"] = report["training"]["words_per_s"]
    if "analogies" in evaluation:
        metrics["analogy_accuracy"] = evaluation["analogies"]["accuracy"]
    if "pairs" in evaluation:
        metrics["pairs_spearman"] = evaluation["pairs"]["spearman"]
    return metrics


def _read_outputs(folder: Path) -> tuple[dict, dict, dict]:
    return tuple(read_json(folder / f) if (folder / f).exists() else {} for f in ("report.json", "losses.json", "evaluation.json"))


def evaluate_run(ws, name: str | None = None, *, analogies: Path | None = None, pairs: Path | None = None,
                 probes: Iterable[str] = ()) -> tuple[str, Path, dict[str, Any]]:
    """`bigmodel embed evaluate`: evaluate saved vectors; the result goes to embeddings/NAME/evaluate.json
    (evaluation.json stays the one recorded with the training run)."""
    name, folder = find_run(ws, name)
    files = EvalFiles.read(analogies, pairs)  # format errors before loading the vectors
    result = evaluate_vectors(load_vectors(folder), files, probes)
    write_json(folder / "evaluate.json", result)
    return name, folder, result


def lookup_neighbors(ws, word: str, name: str | None = None, topn: int = TOPN) -> tuple[str, bool, list[tuple[str, float]]]:
    """`bigmodel embed neighbors`: (run name, in vocabulary, neighbours)."""
    if topn < 1:
        raise UserError(f"--topn must be a positive integer, got {topn}")
    name, folder = find_run(ws, name)
    kv = load_vectors(folder)
    found = neighbors(kv, word, topn)
    if found is None:
        raise UserError(f"'{word}' is not in the vocabulary of embeddings/{name} ({len(kv):,} words)",
                        hint="check the spelling and segmentation, or lower --min-count when training")
    return name, word in kv.key_to_index, found


# -- progress -------------------------------------------------------------------------
class _Bars:
    """Rich progress bars (only on a terminal): reading the corpus, then the epochs with
    words/s (or pairs/s) and the loss."""

    def __init__(self, method: str, show: bool, console) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.method = method
        self.progress = Progress(TextColumn("[bold]embed {task.description}"), BarColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console, disable=not (show and (console is None or console.is_terminal)))
        self.task = None
        self.epochs = 0

    def __enter__(self) -> "_Bars":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def reading(self, total_records: int, name: str) -> Callable[[int], None]:
        task = self.progress.add_task("read", total=total_records, info=name)
        return lambda done: self.progress.update(task, completed=done)

    def start_training(self, epochs: int, words: int | None, unit: str) -> None:
        self.epochs, self.unit = epochs, unit
        self.task = self.progress.add_task(f"{self.method}", total=epochs * (words or 1), info=f"epoch 0/{epochs}")

    def epoch_done(self, epoch: int, amount: int, loss: float | None, rate: float) -> None:
        shown = "n/a" if loss is None else f"{loss:.4f}"
        self.progress.update(self.task, advance=amount, info=f"epoch {epoch}/{self.epochs}  {rate:,.0f} {self.unit}/s  loss {shown}")

    def glove_callback(self) -> Callable[..., None]:
        """Progress from bigmodel_cli.embeddings.glove: ("cooc", done=, total=) tokens counted, then
        ("epoch", epoch=, epochs=, loss=, pairs_per_s=) after every epoch."""
        cooc = None

        def update(stage: str, **info: Any) -> None:
            nonlocal cooc
            if stage == "cooc":
                if cooc is None:
                    cooc = self.progress.add_task("co-occurrence", total=info.get("total") or 1, info="tokens")
                self.progress.update(cooc, completed=info.get("done", 0))
            elif stage == "epoch":
                if self.task is None:
                    self.start_training(info.get("epochs", self.epochs), None, "pairs")
                self.progress.update(self.task, completed=info.get("epoch", 0),
                                     info=f"epoch {info.get('epoch')}/{self.epochs}  {info.get('pairs_per_s', 0):,.0f} "
                                          f"pairs/s  loss {info.get('loss', float('nan')):.4f}")

        return update
