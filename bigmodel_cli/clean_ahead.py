"""Cleaning the first documents in a helper while the dictionaries load.

With several workers, the main process loads the segmentation dictionaries (about 0.2 s
for jieba's) before the workers fork from it, and the other cores have nothing to do
meanwhile. So a short-lived helper, forked first, reads and cleans the corpus from its
start in that time and spools the results; the main process, once the workers are
ready, stops it, reads those documents as usual but takes their clean text from the
spool instead of cleaning them again.

Nothing depends on how far the helper got: it writes whole batches, the main process
uses the batches that are complete and cleans the rest itself. Each result carries the
hash of its raw text, and a mismatch (which would mean the two read differently) makes
the main process clean everything itself from there on.
"""

from __future__ import annotations

import marshal
import multiprocessing as mp
import struct
from pathlib import Path
from typing import Callable, Iterable

Clean = Callable[[str], tuple]
BATCH_DOCS = 256
MAX_SPOOL_BYTES = 64 << 20  # a slow load (a large user dictionary) does not spool the whole corpus
_LENGTH = struct.Struct("<I")


def _helper(texts: Callable[[], Iterable[str]], clean: Clean, spool: str, stop) -> None:
    try:
        with open(spool, "wb") as out:
            batch, written = [], 0
            for text in texts():
                batch.append((hash(text), clean(text)))  # forked, so the same str hashes as the parent's
                if len(batch) == BATCH_DOCS:
                    blob = marshal.dumps(batch)
                    out.write(_LENGTH.pack(len(blob)) + blob)
                    out.flush()
                    batch, written = [], written + len(blob)
                    if stop.is_set() or written > MAX_SPOOL_BYTES:
                        return
            if batch:
                blob = marshal.dumps(batch)
                out.write(_LENGTH.pack(len(blob)) + blob)
    except BaseException:  # noqa: BLE001 - a bad record stops the helper; the main process meets it itself
        return


class CleanAhead:
    """`clean_ahead(text)` gives `clean(text)`, from the helper's spool where it has it.

    `texts` must yield the raw text of every document in the order the main process will
    ask for them; `stop()` is called once the main process is ready to clean for itself.
    """

    def __init__(self, texts: Callable[[], Iterable[str]], clean: Clean, spool: Path):
        self._clean, self._spool = clean, spool
        self._batch: list = []
        self._at = 0
        self._reader = None
        self._process = None
        if "fork" in mp.get_all_start_methods():  # the helper needs the parent's state as is
            ctx = mp.get_context("fork")
            self._stop = ctx.Event()
            self._process = ctx.Process(target=_helper, args=(texts, clean, str(spool), self._stop), daemon=True)
            self._process.start()

    def stop(self) -> None:
        """Tell the helper to finish its batch, wait for it, and open what it spooled."""
        if self._process is not None:
            self._stop.set()
            self._process.join()
            self._process = None
        try:
            self._reader = open(self._spool, "rb")
        except OSError:  # no helper (no fork here), or it never started writing
            self._reader = None

    def __call__(self, text: str) -> tuple:
        if self._at == len(self._batch):
            self._batch, self._at = self._next_batch(), 0
            if not self._batch:
                return self._clean(text)
        expected, result = self._batch[self._at]
        self._at += 1
        if expected != hash(text):  # read differently from the helper: trust neither from here
            self.close()
            return self._clean(text)
        return result

    def _next_batch(self) -> list:
        if self._reader is None:
            return []
        head = self._reader.read(_LENGTH.size)
        blob = self._reader.read(_LENGTH.unpack(head)[0]) if len(head) == _LENGTH.size else b""
        try:
            batch = marshal.loads(blob) if blob else []
        except (EOFError, ValueError, TypeError):  # a batch cut short: the helper was killed mid-write
            batch = []
        if not batch:
            self.close()
        return batch

    def close(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join()
            self._process = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._batch, self._at = [], 0
