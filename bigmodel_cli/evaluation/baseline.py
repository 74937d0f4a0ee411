"""The baseline every classification report stands beside: TF-IDF + LogisticRegression.

Features: word 1-2 grams over the same tokens the Transformer reads, plus character n-grams
for every language: 1-n grams of the text for Chinese documents (segmentation errors cost the
words, not the characters), and scikit-learn's `char_wb` 2-n grams (inside word boundaries,
padded with spaces, lowercased) for documents whose words are space-separated, so that
inflections, typos and words seen only inside longer words still match. Sublinear tf,
l2-normalised rows, words and characters as two blocks. The regularisation C is chosen on
dev macro-F1 from a grid that reaches 100 (a weak baseline flatters the model). scikit-learn fits the vocabulary, idf and the
model; the transform is this file's own few lines, so that a saved baseline is plain data:

    reports/_baseline/baseline.json   key (hashes of the splits + options), C grid, classes
    reports/_baseline/terms.json      the word and character n-grams, in column order
    reports/_baseline/weights.npz     idf, coef, intercept (numpy arrays, no pickle)

The cache is reused while the train and dev splits and the options are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import atomic_write, read_json, write_json
from bigmodel_cli.workspace.config import EvaluateConfig

FOLDER = "reports/_baseline"
SEP = " "  # joins the words of a bigram
WB_LOW = 2  # shortest char_wb n-gram
CACHE_VERSION = 2  # part of the cache key: raise it whenever the features change, so an older cache is retrained
_SPACES = re.compile(r"\s+")


@dataclass
class Doc:
    tokens: list[str]
    text: str
    lang: str


def word_ngrams(tokens: list[str], stopwords: frozenset[str] = frozenset()) -> list[str]:
    words = [t for t in tokens if t not in stopwords and t.strip()]
    return words + [a + SEP + b for a, b in zip(words, words[1:])]


def char_ngrams(text: str, n: int) -> list[str]:
    """Character 1..n grams of the text, spaces squeezed (as scikit-learn's 'char' analyzer)."""
    text = _SPACES.sub(" ", text)
    return [text[i:i + k] for k in range(1, n + 1) for i in range(len(text) - k + 1)]


def char_wb_ngrams(text: str, low: int, high: int) -> list[str]:
    """scikit-learn's 'char_wb' analyzer (lowercase, its default): the low..high grams of each
    word padded with one space either side; a word shorter than n counts once, whole."""
    grams = []
    for word in text.lower().split():
        padded = f" {word} "
        for n in range(low, high + 1):
            grams.extend(padded[i:i + n] for i in range(max(len(padded) - n + 1, 1)))
            if len(padded) <= n:
                break
    return grams


def char_terms(doc: Doc, char_n: int, char_wb: int) -> list[str]:
    """A document's character features: plain n-grams for Chinese (no spaces between words),
    char_wb n-grams for every other language."""
    if doc.lang == "zh":
        return char_ngrams(doc.text, char_n) if char_n else []
    return char_wb_ngrams(doc.text, WB_LOW, char_wb) if char_wb >= WB_LOW else []


class Baseline:
    """Fitted vocabularies, idf and the linear model; `predict_proba` on `Doc`s."""

    def __init__(self, classes: list[str], words: list[str], word_idf: np.ndarray, chars: list[str], char_idf: np.ndarray,
                 coef: np.ndarray, intercept: np.ndarray, char_n: int, stopwords: list[str], info: dict[str, Any],
                 char_wb: int = 0):
        self.classes, self.words, self.chars = classes, words, chars
        self.word_idf, self.char_idf = word_idf, char_idf
        self.coef, self.intercept, self.char_n, self.char_wb = coef, intercept, char_n, char_wb
        self.stopwords = frozenset(stopwords)
        self.info = info
        self._word_index = {t: i for i, t in enumerate(words)}
        self._char_index = {t: i for i, t in enumerate(chars)}

    # -- features ---------------------------------------------------------------------
    def features(self, docs: list[Doc]):
        import scipy.sparse as sp

        blocks = [_tfidf([word_ngrams(d.tokens, self.stopwords) for d in docs], self._word_index, self.word_idf)]
        if self.chars:
            blocks.append(_tfidf([char_terms(d, self.char_n, self.char_wb) for d in docs], self._char_index, self.char_idf))
        return sp.hstack(blocks, format="csr")

    def predict_proba(self, docs: list[Doc]) -> np.ndarray:
        scores = self.features(docs) @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:  # binary: scikit-learn's sigmoid of the one decision function
            p = 1 / (1 + np.exp(-scores[:, 0]))
            return np.stack([1 - p, p], axis=1)
        scores = scores - scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=1, keepdims=True)

    # -- storage ------------------------------------------------------------------------
    def save(self, folder: Path, key: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / "weights.npz", "wb") as handle:
            np.savez(handle, word_idf=self.word_idf, char_idf=self.char_idf, coef=self.coef, intercept=self.intercept)
        with atomic_write(folder / "terms.json") as handle:
            json.dump({"words": self.words, "chars": self.chars, "stopwords": sorted(self.stopwords)}, handle, ensure_ascii=False)
        write_json(folder / "baseline.json", {"key": key, "classes": self.classes, "char_n": self.char_n, "char_wb": self.char_wb,
                                              **self.info})

    @classmethod
    def load(cls, folder: Path) -> "Baseline":
        meta = read_json(folder / "baseline.json")
        terms = read_json(folder / "terms.json")
        with np.load(folder / "weights.npz", allow_pickle=False) as w:
            arrays = {k: w[k] for k in ("word_idf", "char_idf", "coef", "intercept")}
        info = {k: v for k, v in meta.items() if k not in ("key", "classes", "char_n", "char_wb")}
        return cls(meta["classes"], terms["words"], arrays["word_idf"], terms["chars"], arrays["char_idf"],
                   arrays["coef"], arrays["intercept"], meta["char_n"], terms["stopwords"], info, meta.get("char_wb", 0))


def _tfidf(docs: list[list[str]], index: dict[str, int], idf: np.ndarray):
    """scikit-learn's TfidfVectorizer(sublinear_tf=True).transform for a fixed vocabulary and idf."""
    import scipy.sparse as sp

    rows, cols = [], []
    for row, terms in enumerate(docs):
        found = [index[t] for t in terms if t in index]
        rows.extend([row] * len(found))
        cols.extend(found)
    counts = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(docs), len(index)), dtype=np.float64)
    counts.sum_duplicates()
    counts.data = (1 + np.log(counts.data)) * idf[counts.indices]
    norms = np.sqrt(np.asarray(counts.multiply(counts).sum(axis=1)).ravel())
    norms[norms == 0] = 1
    return sp.csr_matrix(sp.diags(1 / norms) @ counts)


def _fit_vocab(docs: list[list[str]]) -> tuple[list[str], np.ndarray]:
    """Vocabulary (min_df 2) and smoothed idf, from scikit-learn's TfidfVectorizer."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not any(docs):
        return [], np.zeros(0)
    vectorizer = TfidfVectorizer(analyzer=lambda terms: terms, min_df=2 if len(docs) >= 50 else 1, sublinear_tf=True)
    try:
        vectorizer.fit(docs)
    except ValueError:  # nothing survives min_df
        return [], np.zeros(0)
    terms = [None] * len(vectorizer.vocabulary_)
    for term, i in vectorizer.vocabulary_.items():
        terms[i] = term
    return terms, vectorizer.idf_.astype(np.float64)


def train(train_docs: list[Doc], train_y: list[str], dev_docs: list[Doc], dev_y: list[str], cfg: EvaluateConfig,
          stopwords: Iterable[str] = ()) -> Baseline:
    """Fit on train; pick C by dev macro-F1 (train macro-F1 when there is no dev split)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    started = time.perf_counter()
    classes = sorted(set(train_y))
    stop = frozenset(stopwords) if cfg.baseline_stopwords else frozenset()
    words, word_idf = _fit_vocab([word_ngrams(d.tokens, stop) for d in train_docs])
    char_n, char_wb = cfg.baseline_char_ngrams, cfg.baseline_char_wb
    chars, char_idf = _fit_vocab([char_terms(d, char_n, char_wb) for d in train_docs])
    shell = Baseline(classes, words, word_idf, chars, char_idf, np.zeros((1, 0)), np.zeros(1), char_n, sorted(stop), {}, char_wb)
    x_train = shell.features(train_docs)
    index = {c: i for i, c in enumerate(classes)}
    y_train = np.array([index[y] for y in train_y])
    known = [i for i, y in enumerate(dev_y) if y in index]
    x_dev = shell.features([dev_docs[i] for i in known]) if known else x_train
    y_dev = np.array([index[dev_y[i]] for i in known]) if known else y_train
    scores, best = {}, None
    for c in cfg.baseline_c:
        model = LogisticRegression(C=float(c), max_iter=2000)
        model.fit(x_train, y_train)
        score = float(f1_score(y_dev, model.predict(x_dev), labels=list(range(len(classes))), average="macro", zero_division=0))
        scores[repr(float(c))] = round(score, 6)
        if best is None or score > best[0]:
            best = (score, float(c), model)
    _, c, model = best
    info = {"C": c, "selected_on": "dev" if known else "train (no dev split)", "dev_macro_f1_by_C": scores,
            "features": {"words": len(words), "chars": len(chars)}, "train_docs": len(train_docs),
            "seconds": round(time.perf_counter() - started, 3)}
    return Baseline(classes, words, word_idf, chars, char_idf, model.coef_.astype(np.float64),
                    model.intercept_.astype(np.float64), char_n, sorted(stop), info, char_wb)


def cache_key(ws, cfg: EvaluateConfig, data: Path) -> str:
    from bigmodel_cli.data.store import split_file

    paths = [split_file(data, s) for s in ("train", "dev")]
    hashes = [h["sha256"] for h in ws.hash_paths([p for p in paths if p is not None])]
    options = [CACHE_VERSION, cfg.baseline_c, cfg.baseline_char_ngrams, cfg.baseline_char_wb, cfg.baseline_stopwords]
    return hashlib.sha256(json.dumps([hashes, options]).encode()).hexdigest()


def load_or_train(ws, cfg: EvaluateConfig, data: Path | None = None) -> tuple[Baseline, bool]:
    """The baseline of a dataset (`data`, default data/processed/): from the cache when its
    key matches, else trained on its train split and saved. Returns (baseline, whether it
    came from the cache)."""
    from bigmodel_cli.data.store import split_file
    from bigmodel_cli.training.classify_data import read_split

    folder = ws.root / FOLDER
    data = data or ws.processed
    key = cache_key(ws, cfg, data)
    if (folder / "baseline.json").exists():
        try:
            if read_json(folder / "baseline.json").get("key") == key:
                return Baseline.load(folder), True
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt
    train_path, dev_path = split_file(data, "train") or data / "train.parquet", split_file(data, "dev")
    records = read_split(train_path)
    if not any(r["label"] is not None for r in records):
        raise UserError(f"{ws.relative(train_path)} has no labels, so no baseline can be trained",
                        hint="preprocess a labelled corpus: bigmodel preprocess FILE --label-field NAME --force")
    records = [r for r in records if r["label"] is not None]
    dev = [r for r in read_split(dev_path) if r["label"] is not None] if dev_path is not None else []
    stopwords = _stopwords(data) if cfg.baseline_stopwords else []
    baseline = train(docs(records), [r["label"] for r in records], docs(dev), [r["label"] for r in dev], cfg, stopwords)
    baseline.save(folder, key)
    return baseline, False


def docs(records: list[dict[str, Any]]) -> list[Doc]:
    return [Doc(r["tokens"], r.get("text", ""), r.get("lang", "")) for r in records]


def _stopwords(data: Path) -> list[str]:
    path = data / "stopwords.txt"
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def size_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.glob("*") if p.is_file()) / 1e6, 2) if folder.exists() else math.nan
