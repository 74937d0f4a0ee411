"""preprocess's splits written by a process of their own.

Turning the workers' JSON lines into compressed Parquet (data/store.py's StoreWriter) costs
about a fifth of what segmenting them does. On a thread of preprocess's own process it
still slowed the segmentation, which holds the GIL; in a separate interpreter it takes
only the core the segmentation leaves free, and pyarrow is never loaded where workers are
forked. The main process hands each blob to a feeder thread, which writes it to the child's
stdin: `[split index: 1 byte][length: 8 bytes, little-endian][blob]`, ended by an END frame.

The child dies with its parent and ignores Ctrl-C (lifecycle.py): the parent alone ends it,
at `close()` (finish the files) or `abort()` (kill it; the staged files are discarded).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

from bigmodel_cli.lifecycle import python_module

END = 255  # the split index that ends the stream: finish the files and exit
HEADER = 9
QUEUED_BLOBS = 64  # blobs waiting for the feeder at most (each a chunk of a few hundred documents)


class SplitWriters:
    """The writers of FOLDER/{split}.parquet for `splits`; `files[split].write(blob)` as with
    StoreWriter. The process starts at the first write: after preprocess has forked its
    workers, so that none of them holds the pipe open."""

    def __init__(self, folder: Path, splits: list[str]):
        self.folder, self.splits = Path(folder), list(splits)
        self.files = {split: _Split(self, index) for index, split in enumerate(self.splits)}
        self.process: subprocess.Popen | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUED_BLOBS)
        self.feeder: threading.Thread | None = None
        self.broken = False  # the pipe closed under the feeder: the child has failed
        self.stderr: str | None = None  # what the child wrote there, once it has ended
        self.closed = False

    def send(self, index: int, blob: bytes) -> None:
        if not blob:
            return
        if self.closed:
            raise ValueError("write to closed SplitWriters")
        if self.process is None:
            self._start()
        if self.broken:
            self._fail()
        self.queue.put((index, blob))

    def close(self) -> None:
        """Finish the files: a split never written is a valid file with no records. An error
        in the child is raised here."""
        if self.closed:
            return
        self.closed = True
        if self.process is None:  # nothing written: empty files, no process needed
            from bigmodel_cli.data.store import StoreWriter

            for split in self.splits:
                StoreWriter(self.folder / f"{split}.parquet").close()
            return
        self.queue.put((END, b""))
        self.feeder.join()
        self._wait()
        if self.process.returncode != 0:
            self._fail()

    def abort(self) -> None:
        """Stop at once, the files left unfinished (preprocess discards its staging folder)."""
        self.closed = True
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self.broken = True
        while self.feeder.is_alive():  # it stops at its next write or at the None
            try:
                self.queue.put(None, timeout=0.1)
            except queue.Full:
                _drain(self.queue)
        self.process.stderr.close()

    def _start(self) -> None:
        self.process = subprocess.Popen(
            [*python_module("bigmodel_cli.data.store_process"), str(os.getpid()), str(self.folder),
             ",".join(self.splits)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self.feeder = threading.Thread(target=self._feed, name="store-feeder", daemon=True)
        self.feeder.start()

    def _feed(self) -> None:
        pipe = self.process.stdin
        try:
            while (item := self.queue.get()) is not None:
                index, blob = item
                pipe.write(bytes([index]) + len(blob).to_bytes(HEADER - 1, "little"))
                pipe.write(blob)
                if index == END:
                    break
            pipe.close()
        except (BrokenPipeError, OSError):
            self.broken = True
            _drain(self.queue)  # let a caller's pending put through; it fails at its next send

    def _wait(self) -> None:
        """Wait for the child, reading its stderr first: a child blocked on a full stderr
        pipe would never exit."""
        if self.stderr is None:
            self.stderr = self.process.stderr.read().decode("utf-8", "replace").strip()
            self.process.stderr.close()
        self.process.wait()

    def _fail(self) -> None:
        """Raise what the child reported (its one JSON line on stderr), as the in-process
        writer would have raised it."""
        self._wait()
        self.closed = True
        text = self.stderr
        try:
            report = json.loads(text.splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError(f"the writer of {self.folder} ended with exit code {self.process.returncode}"
                               + (f": {text}" if text else "")) from None
        if report.get("errno") is not None:
            raise OSError(report["errno"], report["message"], report.get("filename"))
        raise RuntimeError(f"the writer of {self.folder} failed: {report['type']}: {report['message']}")


class _Split:
    def __init__(self, writers: SplitWriters, index: int):
        self.writers, self.index = writers, index

    def write(self, blob: bytes) -> None:
        self.writers.send(self.index, blob)

    def close(self) -> None:
        self.writers.close()


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


# -- the child -------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    from bigmodel_cli.lifecycle import die_with_parent, ignore_interrupts

    parent, folder, splits = int(argv[0]), Path(argv[1]), argv[2].split(",")
    die_with_parent(parent)
    ignore_interrupts()
    from bigmodel_cli.data.store import StoreWriter

    writers = [StoreWriter(folder / f"{split}.parquet") for split in splits]
    stdin = sys.stdin.buffer
    try:
        while True:
            header = _read_exactly(stdin, HEADER)
            if header is None:  # the parent went away without END: leave the files unfinished
                return 1
            index, size = header[0], int.from_bytes(header[1:], "little")
            if index == END:
                break
            blob = _read_exactly(stdin, size)
            if blob is None:
                return 1
            writers[index].write(blob)
        for writer in writers:
            writer.close()
    except Exception as error:  # reported to the parent, which raises it
        report = {"type": type(error).__name__, "message": str(error).strip().splitlines()[0] if str(error).strip() else ""}
        if isinstance(error, OSError):
            filename = None if error.filename is None else str(error.filename)
            report.update(errno=error.errno, message=error.strerror or report["message"], filename=filename)
        sys.stderr.write(json.dumps(report) + "\n")
        return 1
    return 0


def _read_exactly(stream, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
