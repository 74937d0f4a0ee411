"""What a piece of preprocess's speed machinery is worth: the stage with and without it.

    python benchmarks/bench_machinery.py --piece read-ahead [--pairs 8]   # two workers
    python benchmarks/bench_machinery.py --piece gc [--pairs 8]           # one worker

A piece is kept only if it is worth at least 5% of its stage (issue #18).
* read-ahead: the helper (bigmodel_cli/data/read_ahead.py) that reads and cleans the first
  documents on the second core while the main process loads the dictionaries; switched
  off, the workers start at once and the main process reads everything;
* gc: the cyclic garbage collector's higher threshold during the stage (`_fewer_collections`);
  switched off, Python's default.
Each pair runs the stage twice in fresh interpreters, as shipped and with the piece
switched off, in alternating order, on the corpus of bench_preprocess.py. Prints the
median of the ratios within pairs and writes benchmarks/results/machinery-PIECE.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import chinese_corpus, machine, median, run_python, save  # noqa: E402

RUN = r"""
import json, sys, time
from pathlib import Path
from bigmodel_cli.workspace.config import PreprocessConfig
from bigmodel_cli.data import preprocess as stage
from bigmodel_cli.data.parallel import OrderedWorkers
from bigmodel_cli.workspace.layout import Workspace
corpus, folder, piece, on = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "on"
if piece == "read-ahead" and not on:
    def without_helper(ws, plan, cfg, label_required, processor, workers, staging):
        (staging / "shards").mkdir()
        processor.load()
        return OrderedWorkers(processor.make_lines, workers, staging / "shards"), None
    stage._start_workers = without_helper
if piece == "gc" and not on:
    import contextlib
    stage._fewer_collections = lambda young=10_000: contextlib.nullcontext()
ws, _ = Workspace.init(Path(folder), lang="zh")
t = time.perf_counter()
workers = 2 if piece == "read-ahead" else 1
result = stage.preprocess(ws, [Path(corpus)], config=PreprocessConfig(workers=workers), lang="zh", force=True)
print(json.dumps({"seconds": time.perf_counter() - t, "kept": result.report["documents"]["kept"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--piece", choices=("read-ahead", "gc"), required=True)
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-machinery-"))
    try:
        corpus = tmp / "corpus.txt"
        corpus.write_text("\n".join(chinese_corpus()) + "\n", encoding="utf-8")
        ratios, times = [], {"on": [], "off": []}
        for i in range(args.pairs):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            got = {}
            for helper in order:
                folder = tmp / f"ws-{i}-{helper}"
                got[helper] = run_python(RUN, str(corpus), str(folder), args.piece, helper)
                shutil.rmtree(folder)
            assert got["on"]["kept"] == got["off"]["kept"]
            for helper in order:
                times[helper].append(got[helper]["seconds"])
            ratios.append(got["off"]["seconds"] / got["on"]["seconds"])
            print(f"pair {i + 1}: with {got['on']['seconds']:.2f}s, without {got['off']['seconds']:.2f}s, "
                  f"{ratios[-1]:.3f}x", flush=True)
        gain = median(ratios)
        print(f"preprocess with {args.piece} against without it: {gain:.3f}x "
              f"(medians {median(times['on']):.2f}s and {median(times['off']):.2f}s; keep it if >= 1.05x)")
        save(f"machinery-{args.piece}", {"piece": args.piece, "pairs": args.pairs, "ratio": gain, "ratios": ratios, "seconds": times, "machine": machine()})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
