"""Reading and cleaning the first documents in a helper while the dictionaries load.

With several workers, the main process loads the segmentation dictionaries (about 0.25 s
for jieba's) before the workers fork from it, and the other cores would have nothing to do
meanwhile. So a short-lived helper, forked first, reads the corpus from its start in that
time, cleans each document and spools whole batches of records: a document's label,
source and clean text, or a bad record's reject. Once the workers are ready, the main
process stops it, takes the spooled records instead of reading and cleaning them itself,
and reads each file on from the line after the helper's last whole batch (`Reader`'s
`skip_lines`).

Nothing depends on how far the helper got: a batch cut short (the helper stopped or
killed mid-write) is not used, and a file the helper did not reach is read as usual.
"""

from __future__ import annotations

import marshal
import multiprocessing as mp
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from bigmodel_cli.data.readers import Reader, Reject
from bigmodel_cli.lifecycle import die_with_parent, forking, ignore_interrupts

Clean = Callable[[str], tuple]
OpenReader = Callable[[int], "Reader | None"]  # the reader of the plan's file `index`; None past the end
BATCH_DOCS = 256
MAX_SPOOL_BYTES = 64 << 20  # a slow load (a large user dictionary) does not spool the whole corpus
_LENGTH = struct.Struct("<I")


@dataclass(slots=True)
class CleanDoc:
    """A document the helper read and cleaned; `clean` is `clean(text)`'s result."""

    label: str | None
    source: str
    clean: tuple


@dataclass(frozen=True)
class Batch:
    file: int  # index in the plan
    resume_line: int  # the file's records up to this line are in this batch or earlier ones
    labelled: bool  # what the reader decided from the file's first records
    position: int  # the reader's raw byte offset, for progress
    last: bool  # the file's last batch: the main process need not open it
    records: list


def _helper_process(parent: int, *args) -> None:
    die_with_parent(parent)
    ignore_interrupts()  # Ctrl-C is the parent's to handle: it ends the helper (close)
    _helper(*args)


def _helper(open_reader: OpenReader, clean: Clean, spool: str, stop) -> None:
    written = 0

    def flush(out, index: int, reader: Reader, entries: list, last: bool) -> bool:
        nonlocal written
        blob = marshal.dumps((index, reader.resume_line or 0, reader.labelled, reader.position(), last, entries))
        out.write(_LENGTH.pack(len(blob)) + blob)
        out.flush()
        written += len(blob)
        return stop.is_set() or written > MAX_SPOOL_BYTES

    try:
        with open(spool, "wb") as out:
            index = 0
            while (reader := open_reader(index)) is not None:
                try:
                    entries: list = []
                    for item in reader:
                        if isinstance(item, Reject):
                            entries.append((item.source, item.reason, item.raw, item.missing_label))
                        else:
                            entries.append((item.label, item.source, clean(item.text)))
                        # A batch ends only where another reader can take over the file;
                        # a file with no such place (see Reader) is left to the main process.
                        if len(entries) >= BATCH_DOCS:
                            if reader.resume_line is not None:
                                if flush(out, index, reader, entries, last=False):
                                    return
                                entries = []
                            elif len(entries) >= 4 * BATCH_DOCS:
                                return
                    if flush(out, index, reader, entries, last=True):
                        return
                finally:
                    reader.close()
                index += 1
    except BaseException:  # noqa: BLE001 - a bad file stops the helper; the main process meets it itself
        return


class ReadAhead:
    """The helper's process and, once stopped, its spool.

    For each file of the plan in turn, `batches(index)` gives the spooled batches of that
    file; then `resume(index)` says how to read the rest: None (from the start), "done"
    (nothing left), or `(skip_lines, labelled)` for `Reader`.
    """

    def __init__(self, open_reader: OpenReader, clean: Clean, spool: Path):
        self._spool = spool
        self._reader = None
        self._pending: Batch | None = None
        self._resume: dict[int, tuple[int, bool] | str] = {}
        self._process = None
        if "fork" in mp.get_all_start_methods():  # the helper needs the parent's state as is
            ctx = mp.get_context("fork")
            self._stop = ctx.Event()
            self._process = ctx.Process(target=_helper_process, daemon=True,
                                        args=(os.getpid(), open_reader, clean, str(spool), self._stop))
            with forking():
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

    def batches(self, index: int) -> Iterator[Batch]:
        while (batch := self._peek()) is not None and batch.file == index:
            self._pending = None
            self._resume[index] = "done" if batch.last else (batch.resume_line, batch.labelled)
            yield batch

    def resume(self, index: int) -> tuple[int, bool] | str | None:
        return self._resume.get(index)

    @staticmethod
    def records(batch: Batch) -> list[CleanDoc | Reject]:
        return [CleanDoc(*entry) if len(entry) == 3 else Reject(*entry) for entry in batch.records]

    def _peek(self) -> Batch | None:
        if self._pending is None and self._reader is not None:
            head = self._reader.read(_LENGTH.size)
            blob = self._reader.read(_LENGTH.unpack(head)[0]) if len(head) == _LENGTH.size else b""
            try:
                self._pending = Batch(*marshal.loads(blob)) if blob else None
            except (EOFError, ValueError, TypeError):  # a batch cut short: the helper was killed mid-write
                self._pending = None
            if self._pending is None:
                self.close()
        return self._pending

    def close(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join()
            self._process = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
