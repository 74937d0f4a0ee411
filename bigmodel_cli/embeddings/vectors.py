"""Evaluating and exporting word vectors: nearest neighbours, analogies (3CosAdd, the
questions-words.txt format), word-pair similarity (Spearman, Pearson, OOV share), and the
.kv and word2vec formats that gensim loads.

bigmodel itself reads vectors back only from vectors.safetensors and vectors.json:
gensim's .kv file is a pickle, and a workspace may come from someone else."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from bigmodel_cli.errors import InputError, UserError

TOPN = 10
TOP_PROBES = 5  # the most frequent words whose neighbours are listed after training
RESTRICT_VOCAB = 300_000  # analogies and pairs: the most frequent words searched (as gensim)
VECTORS = "vectors.kv"  # for users: gensim's own format (a pickle, never read by bigmodel; words only for fastText)
SAFE_VECTORS, SAFE_WORDS = "vectors.safetensors", "vectors.json"


# -- evaluation -----------------------------------------------------------------------
def _read_lines(path: Path) -> Iterable[tuple[int, str]]:
    if not path.is_file():
        raise UserError(f"{path}: no such file", hint="check the path")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                raise InputError(path, "not UTF-8 text", line=number, hint="convert the file to UTF-8") from None


def read_analogies(path: Path) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    """Sections of `a b c d` questions (a is to b as c is to d), questions-words.txt format:
    `: section` lines, then four words per line; blank lines and `#` comments skipped."""
    sections: list[tuple[str, list]] = []
    for number, line in _read_lines(path):
        if not line or line.startswith("#"):
            continue
        if line.startswith(":"):
            sections.append((line[1:].strip() or f"line {number}", []))
            continue
        words = line.split()
        if len(words) != 4:
            raise InputError(path, f"expected 4 words (a b c d: a is to b as c is to d) or a ': section' line, "
                                   f"got {len(words)} field(s)", line=number, hint="use the questions-words.txt format")
        if not sections:
            sections.append(("questions", []))
        sections[-1][1].append(tuple(words))
    if not any(qs for _, qs in sections):
        raise InputError(path, "no analogy questions", hint="use the questions-words.txt format (': section', then 'a b c d' lines)")
    return sections


def read_pairs(path: Path) -> list[tuple[str, str, float]]:
    """`word<TAB>word<TAB>score` lines (wordsim353.tsv format); `#` comments skipped."""
    pairs = []
    for number, line in _read_lines(path):
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise InputError(path, f"expected word<TAB>word<TAB>score, got {len(parts)} tab-separated field(s)", line=number,
                             hint="one pair per line; comment lines start with #")
        try:
            score = float(parts[2])
        except ValueError:
            score = float("nan")
        if not math.isfinite(score):
            raise InputError(path, f"the score '{parts[2].strip()}' is not a number", line=number,
                             hint="a header line must start with #")
        pairs.append((parts[0].strip(), parts[1].strip(), score))
    if not pairs:
        raise InputError(path, "no word pairs", hint="one word<TAB>word<TAB>score line per pair")
    return pairs


def _case_index(kv, restrict: int) -> dict[str, int]:
    """Upper-cased word -> index among the `restrict` most frequent words; the most
    frequent spelling wins (as gensim's case_insensitive evaluation)."""
    keys = kv.index_to_key[:restrict]
    return {keys[i].upper(): i for i in range(len(keys) - 1, -1, -1)}


def evaluate_analogies(kv, sections, restrict: int = RESTRICT_VOCAB, batch: int = 512) -> dict[str, Any]:
    """3CosAdd analogy accuracy as gensim's `evaluate_word_analogies` computes it
    (case-insensitive, among the `restrict` most frequent words, a, b and c excluded from
    the answers), batched in numpy. Questions with a word outside that vocabulary are OOV."""
    import numpy as np

    ok = _case_index(kv, restrict)
    unit = kv.get_normed_vectors()[: min(restrict, len(kv))]
    spellings: dict[str, list[int]] = {}
    for i, key in enumerate(kv.index_to_key[: len(unit)]):
        spellings.setdefault(key.upper(), []).append(i)
    rows, total = [], {"questions": 0, "answered": 0, "correct": 0}
    for name, questions in sections:
        upper = [tuple(w.upper() for w in q) for q in questions]
        known = [q for q in upper if all(w in ok for w in q)]
        correct = 0
        for start in range(0, len(known), batch):
            part = known[start:start + batch]
            ids = np.array([[ok[w] for w in q] for q in part], dtype=np.int64)
            query = unit[ids[:, 1]] - unit[ids[:, 0]] + unit[ids[:, 2]]
            scores = query @ unit.T
            for r, q in enumerate(part):
                for w in q[:3]:
                    scores[r, spellings[w]] = -np.inf
            best = scores.argmax(axis=1)
            correct += sum(kv.index_to_key[b].upper() == q[3] for b, q in zip(best, part))
        rows.append({"section": name, "questions": len(questions), "answered": len(known), "correct": int(correct),
                     "accuracy": round(correct / len(known), 4) if known else None})
        total["questions"] += len(questions)
        total["answered"] += len(known)
        total["correct"] += int(correct)
    oov = total["questions"] - total["answered"]
    return {**total, "accuracy": round(total["correct"] / total["answered"], 4) if total["answered"] else None,
            "oov_questions": oov, "oov_ratio": round(oov / total["questions"], 4), "sections": rows}


def evaluate_pairs(kv, pairs, restrict: int = RESTRICT_VOCAB) -> dict[str, Any]:
    """Spearman and Pearson correlation of cosine similarity with the scores, as gensim's
    `evaluate_word_pairs` (case-insensitive); pairs with an OOV word are counted and left out."""
    import numpy as np
    from scipy import stats

    ok = _case_index(kv, restrict)
    known = [(ok[a.upper()], ok[b.upper()], s) for a, b, s in pairs if a.upper() in ok and b.upper() in ok]
    oov = len(pairs) - len(known)
    result: dict[str, Any] = {"pairs": len(pairs), "used": len(known), "oov_pairs": oov,
                              "oov_ratio": round(oov / len(pairs), 4), "spearman": None, "spearman_p": None,
                              "pearson": None, "pearson_p": None}
    if len(known) >= 3:
        unit = kv.get_normed_vectors()
        a, b, gold = (np.array(x) for x in zip(*known))
        sims = np.einsum("ij,ij->i", unit[a].astype(np.float64), unit[b].astype(np.float64))
        if np.ptp(sims) > 0 and np.ptp(gold) > 0:
            spearman, pearson = stats.spearmanr(gold, sims), stats.pearsonr(gold, sims)
            result.update(spearman=round(float(spearman[0]), 4), spearman_p=float(spearman[1]),
                          pearson=round(float(pearson[0]), 4), pearson_p=float(pearson[1]))
    return result


def neighbors(kv, word: str, topn: int = TOPN) -> list[tuple[str, float]] | None:
    """Nearest neighbours by cosine; None when the word has no vector (fastText builds one
    from character n-grams for any word)."""
    if word not in kv.key_to_index and not hasattr(kv, "vectors_ngrams"):
        return None
    try:
        return [(w, round(float(s), 4)) for w, s in kv.most_similar(word, topn=topn)]
    except KeyError:
        return None


@dataclass
class EvalFiles:
    """Evaluation files, read (and checked) before any training starts."""

    analogies: Path | None = None
    pairs: Path | None = None
    sections: list = field(default_factory=list)
    pair_list: list = field(default_factory=list)

    @classmethod
    def read(cls, analogies: Path | None, pairs: Path | None) -> "EvalFiles":
        for option, path in (("--analogies", analogies), ("--pairs", pairs)):
            if path is not None and not Path(path).is_file():
                raise UserError(f"{option} {path}: no such file", hint="check the path")
        return cls(Path(analogies) if analogies else None, Path(pairs) if pairs else None,
                   read_analogies(Path(analogies)) if analogies else [], read_pairs(Path(pairs)) if pairs else [])


def evaluate_vectors(kv, files: EvalFiles | None = None, probes: Iterable[str] = (), topn: int = TOPN) -> dict[str, Any]:
    """Neighbours of the most frequent words and of `probes`, analogies and word pairs."""
    frequent = [w for w in kv.index_to_key[:200] if any(ch.isalnum() for ch in w)][:TOP_PROBES]  # not punctuation
    words = list(dict.fromkeys([*frequent, *probes]))
    result: dict[str, Any] = {"neighbors": {}, "probes_oov": []}
    for word in words:
        found = neighbors(kv, word, topn)
        if found is None:
            result["probes_oov"].append(word)
        else:
            result["neighbors"][word] = found
    if files is not None and files.analogies is not None:
        result["analogies"] = {"file": str(files.analogies), **evaluate_analogies(kv, files.sections)}
    if files is not None and files.pairs is not None:
        result["pairs"] = {"file": str(files.pairs), **evaluate_pairs(kv, files.pair_list)}
    return result


# -- export ---------------------------------------------------------------------------
def export_name(binary: bool) -> str:
    return "vectors.bin" if binary else "vectors.txt"


def save_vectors(kv, folder: Path, binary: bool) -> None:
    """gensim's KeyedVectors format (vectors.kv, with .npy files beside it for large arrays)
    and the word2vec format (text or binary), most frequent words first; and the same
    vectors as safetensors + JSON, which is what bigmodel reads back.

    fastText's n-gram matrix (buckets x dim, 800 MB at the defaults) is stored once, in
    vectors.safetensors: vectors.kv then holds the words' vectors as plain KeyedVectors
    (gensim always stores a FastTextKeyedVectors with its n-grams), and `load_vectors` gives
    the FastTextKeyedVectors back."""
    word_vectors(kv).save(str(folder / VECTORS))
    save_safe_vectors(kv, folder)
    if binary:
        kv.save_word2vec_format(str(folder / export_name(binary)), binary=True)
    else:
        write_word2vec_text(kv, folder / export_name(binary))


def word_vectors(kv):
    """`kv` without fastText's n-grams: plain KeyedVectors of the words' full vectors and counts."""
    if not hasattr(kv, "vectors_ngrams"):
        return kv
    from gensim.models import KeyedVectors

    plain = KeyedVectors(kv.vector_size, count=0, dtype=kv.vectors.dtype)
    plain.add_vectors(list(kv.index_to_key), kv.vectors)
    if "count" in kv.expandos:  # add_vectors(extras=) fails in gensim 4.4 (it iterates the dict's keys as pairs)
        plain.expandos["count"] = kv.expandos["count"].copy()
    return plain


def write_word2vec_text(kv, path: Path) -> None:
    """The word2vec text format: `count dim`, then `word v1 ... vdim` per line, in index
    order (most frequent first, as gensim writes it). Nine significant digits give back
    every float32 exactly; one %-format per row is 8x faster than gensim's str() per value."""
    row_format = " ".join(["%.9g"] * kv.vector_size)
    with open(path, "w", encoding="utf-8") as out:
        out.write(f"{len(kv)} {kv.vector_size}\n")
        for word, row in zip(kv.index_to_key, kv.vectors.tolist()):
            out.write(f"{word} {row_format % tuple(row)}\n")


def save_safe_vectors(kv, folder: Path) -> None:
    """vectors.safetensors (the arrays) and vectors.json (words, counts and, for fastText,
    the n-gram settings), enough to rebuild the KeyedVectors without a pickle."""
    import numpy as np
    from safetensors.numpy import save_file

    arrays = {"vectors": np.ascontiguousarray(kv.vectors, dtype=np.float32)}
    meta: dict[str, Any] = {"kind": "word2vec", "dim": int(kv.vector_size), "words": list(kv.index_to_key),
                            "counts": kv.expandos["count"].tolist() if "count" in kv.expandos else [0] * len(kv)}
    if hasattr(kv, "vectors_ngrams"):  # FastTextKeyedVectors: out-of-vocabulary words need the n-grams
        arrays["vectors_vocab"] = np.ascontiguousarray(kv.vectors_vocab, dtype=np.float32)
        arrays["vectors_ngrams"] = np.ascontiguousarray(kv.vectors_ngrams, dtype=np.float32)
        meta.update(kind="fasttext", min_n=int(kv.min_n), max_n=int(kv.max_n), bucket=int(kv.bucket))
    save_file(arrays, str(folder / SAFE_VECTORS))
    (folder / SAFE_WORDS).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def load_vectors(folder: Path):
    """The KeyedVectors (FastTextKeyedVectors for fastText) that save_safe_vectors wrote."""
    import numpy as np
    from gensim.models import KeyedVectors
    from gensim.models.fasttext import FastTextKeyedVectors
    from safetensors.numpy import load_file

    if not (folder / SAFE_VECTORS).is_file() or not (folder / SAFE_WORDS).is_file():
        raise UserError(f"{folder.name}: no {SAFE_VECTORS} (the run predates it; "
                        f"the older {VECTORS} is a pickle, which bigmodel does not load)",
                        hint=f"train the run again: bigmodel embed --name {folder.name} --force")
    meta = json.loads((folder / SAFE_WORDS).read_text(encoding="utf-8"))
    arrays = load_file(str(folder / SAFE_VECTORS))
    words, dim = meta["words"], meta["dim"]
    if arrays["vectors"].shape != (len(words), dim):
        raise InputError(folder / SAFE_VECTORS, f"holds {arrays['vectors'].shape} vectors but {SAFE_WORDS} lists "
                         f"{len(words)} words of {dim} dimensions", hint=f"train the run again: bigmodel embed --name {folder.name} --force")
    if meta["kind"] == "fasttext":
        kv = FastTextKeyedVectors(dim, meta["min_n"], meta["max_n"], meta["bucket"], count=len(words))
        kv.vectors_vocab, kv.vectors_ngrams = arrays["vectors_vocab"], arrays["vectors_ngrams"]
    else:
        kv = KeyedVectors(dim, count=len(words))
    kv.index_to_key = list(words)
    kv.key_to_index = {w: i for i, w in enumerate(words)}
    kv.vectors = arrays["vectors"]
    if any(meta["counts"]):
        kv.expandos["count"] = np.asarray(meta["counts"], dtype=np.int64)
    if meta["kind"] == "fasttext":
        kv.recalc_char_ngram_buckets()
    return kv


def vector_dim(folder: Path) -> int | None:
    """The dimension of a run's vectors, from its metadata (None if it has none)."""
    try:
        return int(json.loads((folder / SAFE_WORDS).read_text(encoding="utf-8"))["dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_run(ws, name: str | None) -> tuple[str, Path]:
    """The run called `name`, or the most recent successful one."""
    root = ws.root / "embeddings"
    if name is None:
        runs = [(r["run_id"], key.split(":", 1)[1]) for key in ws.stage_keys() if key.startswith("embed:")
                for r in [ws.last_record(key)] if r is not None and (root / key.split(":", 1)[1] / VECTORS).is_file()]
        if not runs:
            raise UserError("no embeddings in this workspace yet", hint="run `bigmodel embed` first")
        name = max(runs)[1]
    folder = root / name
    if not (folder / VECTORS).is_file():
        known = sorted(p.name for p in root.iterdir() if (p / VECTORS).is_file()) if root.is_dir() else []
        raise UserError(f"no embeddings named '{name}' in {ws.relative(root)}/",
                        hint=f"known: {', '.join(known)}" if known else "run `bigmodel embed` first")
    return name, folder
