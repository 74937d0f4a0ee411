"""The ordered worker map behind preprocess: order, counts, and the end of the input."""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import time
from collections import Counter

import pytest

from bigmodel_cli.data.parallel import OrderedWorkers, add_counts

needs_fork = pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="workers need fork")
MAIN = os.getpid()


def _work(payload):
    """A chunk: its lines, who worked it, and its words to count per split."""
    number, words, child_delay = payload
    if os.getpid() != MAIN:
        time.sleep(child_delay)
    lines = "".join(f"{number}:{w}\n" for w in words).encode()
    split = "train" if number % 3 else "dev"
    return {split: lines}, (number, os.getpid()), {split: words}


def _run(workers: int, chunks, tmp_path):
    runner = OrderedWorkers(_work, workers, tmp_path / f"shards{workers}")
    files = {"train": io.BytesIO(), "dev": io.BytesIO()}
    metas, infos = [], []
    try:
        for meta, info, write in runner.map(iter(chunks)):
            write(files)
            metas.append(meta)
            infos.append(info)
    finally:
        runner.close()
    return metas, infos, {k: f.getvalue() for k, f in files.items()}, runner.counts


@needs_fork
@pytest.mark.parametrize("workers", [2, 3])
def test_several_workers_give_one_workers_output_in_order(tmp_path, workers):
    chunks = [(f"meta{i}", (i, [f"w{(i * 7 + j) % 23}" for j in range(i % 5 + 1)], 0.002 * (i % 4))) for i in range(60)]
    metas1, infos1, files1, counts1 = _run(1, chunks, tmp_path)
    metas, infos, files, counts = _run(workers, chunks, tmp_path)
    assert metas == metas1 == [f"meta{i}" for i in range(60)]
    assert [number for number, _ in infos] == list(range(60))
    assert files == files1 and files["train"].startswith(b"1:w7\n")
    assert counts == counts1
    assert counts["train"] + counts["dev"] == Counter(w for _, (_, words, _) in chunks for w in words)
    assert len({pid for _, pid in infos}) > 1  # the children did work


@needs_fork
def test_chunks_a_busy_child_has_not_started_are_worked_by_the_main_process(tmp_path):
    # Chunks 0-3 are queued for the child, which sleeps a second on each; 4-9 the main
    # process works (the child's queue is full). At the end of the input, the queued
    # chunks the child has not started are taken back rather than waited for: the child
    # works one at most, and the child still gets its end mark.
    chunks = [(i, (i, [f"w{i}"], 1.0)) for i in range(10)]
    metas, infos, files, counts = _run(2, chunks, tmp_path)
    assert metas == list(range(10))
    pids = [pid for _, pid in infos]
    assert pids[4:] == [MAIN] * 6
    assert sum(pid != MAIN for pid in pids) <= 1  # not waited for: the child worked one chunk at most, not four
    assert sum(counts["train"].values()) + sum(counts["dev"].values()) == 10


def test_add_counts_sums_like_counter_update_and_keeps_its_order():
    counter = Counter({"a": 2, "b": 1})
    expected = Counter(counter)
    expected.update({"b": 3, "c": 5, "a": 1, "d": 2})
    add_counts(counter, ["b", "c", "a", "d"], [3, 5, 1, 2])
    assert counter == expected == Counter({"b": 4, "c": 5, "a": 3, "d": 2})
    assert list(counter) == list(expected) == ["a", "b", "c", "d"]


def _run_shipping(chunks, tmp_path, ship_after: int):
    """As _run with two workers, asking for the children's counts after chunk `ship_after`."""
    runner = OrderedWorkers(_work, 2, tmp_path / "shards")

    def feed():
        for i, chunk in enumerate(chunks):
            yield chunk
            if i == ship_after:
                runner.ship_counts()

    files = {"train": io.BytesIO(), "dev": io.BytesIO()}
    infos = []
    try:
        for _, info, write in runner.map(feed()):
            write(files)
            infos.append(info)
    finally:
        runner.close()
    return infos, {k: f.getvalue() for k, f in files.items()}, runner.counts


@needs_fork
def test_counts_shipped_before_the_end_are_merged_once(tmp_path):
    chunks = [(f"meta{i}", (i, [f"w{(i * 7 + j) % 23}" for j in range(i % 5 + 1)], 0.002 * (i % 4))) for i in range(60)]
    _, _, files1, counts1 = _run(1, chunks, tmp_path)
    infos, files, counts = _run_shipping(chunks, tmp_path, ship_after=10)
    shipped = tmp_path / "shards" / "w0.counts.0"
    assert shipped.stat().st_size > 0  # the child sent its counts midway
    assert counts == counts1 and files == files1
    child_words = Counter(w for (i, pid), (_, (_, words, _)) in zip(infos, chunks) if pid != MAIN for w in words)
    assert sum(child_words.values()) > 0


@needs_fork
def test_a_ship_request_the_child_never_reached_is_dropped(tmp_path):
    # The child sleeps on chunk 0 while 1-3 and the request wait in its queue; at the end
    # of the input they are taken back, the request with them, and its counts come with
    # its end mark instead.
    chunks = [(i, (i, [f"w{i}"], 0.5)) for i in range(10)]
    infos, _, counts = _run_shipping(chunks, tmp_path, ship_after=9)
    assert [number for number, _ in infos] == list(range(10))
    assert not (tmp_path / "shards" / "w0.counts.0").exists()
    assert counts["train"] + counts["dev"] == Counter(f"w{i}" for i in range(10))
    assert sum(pid != MAIN for _, pid in infos) <= 1  # taken back, not waited for: the child worked chunk 0 at most
