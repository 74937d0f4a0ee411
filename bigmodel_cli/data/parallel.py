"""Ordered, bounded, multi-process map for preprocess: workers write, the main process copies.

Each chunk of documents is turned into output lines (bytes, per split), a little per-doc
information, and token lists to count. With `workers` processes in all:

* `workers - 1` child processes (forked after the dictionaries are loaded) append their
  lines to shard files of their own and keep their token counts to themselves; per chunk
  they report only where the lines went (byte spans) and the per-doc information, so
  almost nothing crosses a pipe. Counts come back near the end (`ship_counts`) and at
  the end.
* the main process keeps the children fed, works a chunk itself whenever they have
  enough queued, and emits chunks in input order, copying each one's byte spans into the
  final files.

A bounded number of chunks is in flight, so memory does not grow with the corpus.
"""

from __future__ import annotations

import gc
import marshal
import multiprocessing as mp
import os
import queue
import sys
import traceback
from collections import Counter
from itertools import repeat
from operator import add
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from bigmodel_cli.lifecycle import die_with_parent, forking, ignore_interrupts

SHIP = "ship counts"  # a task: send the counts so far (see OrderedWorkers.ship_counts)
Work = Callable[[Any], tuple[dict[str, bytes], Any, dict[str, list[str]]]]
_WORK: Work | None = None


def _child(index: int, tasks, results, shard_dir: str, parent: int) -> None:
    die_with_parent(parent)
    ignore_interrupts()
    files: dict[str, BinaryIO] = {}
    counts: dict[str, Counter] = {}
    shipped = 0
    try:
        while (task := tasks.get()) is not None:
            if task == SHIP:  # the counts so far go now, while the main process has time to merge them
                path = Path(shard_dir) / f"w{index}.counts.{shipped}"
                _dump_counts(counts, path)
                counts, shipped = {}, shipped + 1
                results.put((SHIP, index, str(path), None))
                continue
            number, payload = task
            blobs, info, tokens = _WORK(payload)
            spans = {}
            for split, blob in blobs.items():
                handle = files.get(split) or files.setdefault(split, open(Path(shard_dir) / f"w{index}.{split}", "wb"))
                start = handle.tell()
                handle.write(blob)
                spans[split] = (start, start + len(blob))
            for handle in files.values():
                handle.flush()
            for split, words in tokens.items():
                counts.setdefault(split, Counter()).update(words)
            results.put((number, index, spans, info))
        _dump_counts(counts, Path(shard_dir) / f"w{index}.counts")
        results.put(("done", index, None, None))
    except BaseException:  # noqa: BLE001 - reported to the main process, which re-raises
        results.put(("error", index, traceback.format_exc(), None))
    finally:
        for handle in files.values():
            handle.close()


def _dump_counts(counts: dict[str, Counter], path: Path) -> None:
    with open(path, "wb") as handle:
        # Tokens and counts as two lists, marshal version 2 (no object references):
        # both ends take half the time they took with a dict in version 4.
        marshal.dump({split: (list(c), list(c.values())) for split, c in counts.items()}, handle, 2)


class OrderedWorkers:
    def __init__(self, work: Work, workers: int, shard_dir: Path, queue_per_child: int = 4):
        global _WORK
        _WORK = work
        self.work = work
        self.shard_dir = shard_dir
        self.counts: dict[str, Counter] = {}
        self.children: list = []
        self.readers: dict[tuple[int, str], BinaryIO] = {}
        self.queue_per_child = queue_per_child
        self.window = 4 * workers + 8
        # Children inherit the loaded dictionaries by forking; where there is no fork
        # (Windows), everything runs in this process.
        if workers > 1 and "fork" in mp.get_all_start_methods():
            ctx = mp.get_context("fork")
            self.results = ctx.Queue()
            shard_dir.mkdir(parents=True, exist_ok=True)
            gc.freeze()  # children's collector would otherwise touch, and so copy, every inherited page
            with forking():
                for index in range(workers - 1):
                    tasks = ctx.Queue()
                    # At exit Python joins the thread that feeds a queue's pipe. After an
                    # interrupt the child may be gone with that pipe full, and the join would
                    # never return. Nothing is lost by not joining: a child reports "done"
                    # only after it has read every task, up to its end mark.
                    tasks.cancel_join_thread()
                    process = ctx.Process(target=_child, args=(index, tasks, self.results, str(shard_dir), os.getpid()),
                                          daemon=True)
                    process.start()
                    self.children.append((process, tasks))
            gc.unfreeze()

    # -- the map ----------------------------------------------------------------------
    def map(self, chunks: Iterator[tuple[Any, Any]]) -> Iterator[tuple[Any, Any, Callable[[dict[str, BinaryIO]], None]]]:
        """Yields (meta, info, write) in chunk order; `write(files)` puts the chunk's lines
        into the open binary files of its splits."""
        if not self.children:
            for meta, payload in chunks:
                blobs, info, tokens = self.work(payload)
                self._count(tokens)
                yield meta, info, _writer(blobs)
            return
        switch = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)  # the queue's feeder thread needs the GIL to send tasks
        try:
            yield from self._map_parallel(chunks)
        finally:
            sys.setswitchinterval(switch)

    def _map_parallel(self, chunks):
        metas: dict[int, Any] = {}
        ready: dict[int, tuple[Any, Callable]] = {}
        queued = [0] * len(self.children)
        emitted = 0
        number = 0

        def emit():  # the chunks that are ready, in order
            nonlocal emitted
            while emitted in ready:
                info, write = ready.pop(emitted)
                yield metas.pop(emitted), info, write
                emitted += 1

        for meta, payload in chunks:
            metas[number] = meta
            child = min(range(len(self.children)), key=queued.__getitem__)
            if queued[child] < self.queue_per_child:
                self.children[child][1].put((number, payload))
                queued[child] += 1
            else:  # the children have enough to do: work this chunk here rather than wait
                self._work_here(number, payload, ready)
            number += 1
            self._collect(ready, queued, block=False)
            yield from emit()
            while number - emitted >= self.window:
                self._collect(ready, queued, block=True)
                yield from emit()
        # The input is done, and the children may still have several chunks queued each.
        # Each gets its end mark now (so that it writes its counts as soon as it is done),
        # and what it has not started is taken back and worked here, so that the
        # processes finish together rather than this one waiting out the queues.
        finished = 0  # children done (their counts written)
        for index, (_, tasks) in enumerate(self.children):
            tasks.put(None)
            while True:
                try:
                    # A short wait, not none: what was put last may still be on its way
                    # into the pipe (the queue's feeder thread writes it).
                    stolen = tasks.get(timeout=0.01)
                except queue.Empty:
                    break
                if stolen is None:  # nothing left before the end mark: give it back
                    tasks.put(None)
                    break
                if stolen == SHIP:  # not needed: the end mark makes it send all its counts
                    continue
                queued[index] -= 1
                self._work_here(*stolen, ready)
                finished += self._collect(ready, queued, block=False)
                yield from emit()
        while emitted < number or finished < len(self.children):
            yield from emit()
            if emitted < number or finished < len(self.children):
                finished += self._collect(ready, queued, block=True)
        for index in range(len(self.children)):
            self._merge_counts(self.shard_dir / f"w{index}.counts")

    def ship_counts(self) -> None:
        """Ask the children for their counts so far. Called near the end of the input:
        merging them then overlaps the children's last chunks, and what is left to merge
        after the last chunk (when the other cores are idle) is the counts of a few
        chunks, not of the children's whole share."""
        for _, tasks in self.children:
            tasks.put(SHIP)

    def _merge_counts(self, path: Path) -> None:
        with open(path, "rb") as handle:
            # loads(read()): marshal.load on a file object reads item by item, far slower
            for split, (tokens, numbers) in marshal.loads(handle.read()).items():
                add_counts(self.counts.setdefault(split, Counter()), tokens, numbers)

    def _work_here(self, number: int, payload: Any, ready: dict) -> None:
        blobs, info, tokens = self.work(payload)
        self._count(tokens)
        ready[number] = (info, _writer(blobs))

    def _collect(self, ready: dict, queued: list[int], block: bool) -> int:
        """Take results off the queue (at least one if `block`); returns children finished."""
        finished = 0
        while True:
            try:
                item = self.results.get(timeout=60) if block else self.results.get_nowait()
            except queue.Empty:
                if block:
                    self._check_alive()
                    continue
                return finished
            block = False
            number, index, spans, info = item
            if number == "error":
                raise RuntimeError(f"preprocess worker {index} failed:\n{spans}")
            if number == "done":
                finished += 1
                continue
            if number == SHIP:
                self._merge_counts(Path(spans))
                continue
            queued[index] -= 1
            ready[number] = (info, self._copier(index, spans))

    def _check_alive(self) -> None:
        """Called after a minute with no result: a dead child would otherwise be waited for forever."""
        for process, _ in self.children:
            if not process.is_alive() and process.exitcode not in (0, None):
                raise RuntimeError(f"a preprocess worker died (exit code {process.exitcode})")
        if not any(process.is_alive() for process, _ in self.children):
            raise RuntimeError("the preprocess workers ended without reporting all their results")

    def _copier(self, index: int, spans: dict[str, tuple[int, int]]) -> Callable[[dict[str, BinaryIO]], None]:
        def write(files: dict[str, BinaryIO]) -> None:
            for split, (start, end) in spans.items():
                reader = self.readers.get((index, split))
                if reader is None:
                    reader = self.readers[(index, split)] = open(self.shard_dir / f"w{index}.{split}", "rb")
                reader.seek(start)
                files[split].write(reader.read(end - start))
        return write

    def _count(self, tokens: dict[str, list[str]]) -> None:
        for split, words in tokens.items():
            self.counts.setdefault(split, Counter()).update(words)

    def close(self, abort: bool = False) -> None:
        """Wait for the children, or with `abort` (an error or Ctrl-C here) end them now."""
        for reader in self.readers.values():
            reader.close()
        if abort:
            for process, _ in self.children:
                process.terminate()
        for process, tasks in self.children:
            process.join(timeout=1 if abort else 10)
            if process.is_alive():
                process.kill()
                process.join()
            tasks.close()
        if self.children:
            self.results.close()
        self.children = []


def add_counts(counter: Counter, tokens: list[str], numbers: list[int]) -> None:
    """counter[token] += number for each pair (the tokens distinct), in new tokens'
    order, as Counter.update does; but with C loops rather than update's Python loop
    over a mapping, so 40% faster on 80,000 types."""
    dict.update(counter, zip(tokens, map(add, map(counter.get, tokens, repeat(0)), numbers)))


def _writer(blobs: dict[str, bytes]) -> Callable[[dict[str, BinaryIO]], None]:
    def write(files: dict[str, BinaryIO]) -> None:
        for split, blob in blobs.items():
            files[split].write(blob)
    return write
