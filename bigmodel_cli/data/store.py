"""The processed store: the one writer and the one reader of a dataset's train/dev/test splits.

A split is a Parquet file, `{split}.parquet`, of the records SCHEMA names (id, text, tokens,
lang, source, label; label null when unlabelled). Parquet because pyarrow is already a
dependency and the store has to scale: columnar (a reader that wants the tokens reads no
text), zstd-compressed, memory-mapped and streamed a row group at a time, so no stage holds
a split in memory to read it. Row groups hold a fixed number of rows, so that a file's bytes
depend only on its records, not on how preprocess chunked them (a sharded run's merge is
byte-identical to an unsharded run).

Folders written by older versions hold `{split}.jsonl` (one JSON record per line); they are
still read. pyarrow is imported only when a store is written or read: preprocess's forked
workers never touch it, and its main process leaves the writing to a process of its own
(data/store_process.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import InputError

ROW_GROUP = 4096  # rows per row group, whatever the chunking of the writes
BATCH_ROWS = 1024  # rows per batch a reader decodes at a time
LEGACY = ".jsonl"
REBUILD = "run `bigmodel preprocess --force` to rebuild it"


def schema():
    import pyarrow as pa

    return pa.schema([("id", pa.int64()), ("text", pa.string()), ("tokens", pa.list_(pa.string())),
                      ("lang", pa.string()), ("source", pa.string()), ("label", pa.string())])


def __getattr__(name: str):  # SCHEMA without importing pyarrow at import time
    if name == "SCHEMA":
        return schema()
    raise AttributeError(name)


class StoreWriter:
    """A split's Parquet file, written from the JSON-lines bytes that preprocess's workers
    make (DocProcessor.make_lines): `.write(blob)` takes whole lines, `.close()` finishes the
    file (a 0-row file with the schema when nothing was written). It works in the caller's
    thread; preprocess runs it in a process of its own (data/store_process.py)."""

    def __init__(self, path: Path):
        # The file opens, and pyarrow loads, at the first write.
        self.path = Path(path)
        self.writer = None
        self.closed = False
        self.pending: list = []  # tables not yet written, fewer than ROW_GROUP rows in all
        self.pending_rows = 0

    def _open(self) -> None:
        import pyarrow.parquet as pq

        self.schema = schema()
        self.writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")

    def write(self, blob: bytes) -> None:
        if not blob:
            return
        if self.writer is None:
            self._open()
        import pyarrow as pa
        import pyarrow.json as pj

        # block_size at least the blob: a block must hold a whole line, however long the document.
        # One block, so no threads: the parser's would only compete with the workers for the cores.
        table = pj.read_json(pa.BufferReader(blob),
                             read_options=pj.ReadOptions(block_size=max(len(blob) + 1, 1 << 20), use_threads=False),
                             parse_options=pj.ParseOptions(explicit_schema=self.schema))
        self.pending.append(table.select(self.schema.names))
        self.pending_rows += table.num_rows
        if self.pending_rows >= ROW_GROUP:
            self._flush(whole_groups_only=True)

    def _flush(self, whole_groups_only: bool) -> None:
        import pyarrow as pa

        table = pa.concat_tables(self.pending)
        start = 0
        while table.num_rows - start >= ROW_GROUP or (not whole_groups_only and start < table.num_rows):
            self._write_group(table.slice(start, ROW_GROUP))
            start += ROW_GROUP
        rest = table.slice(start)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def _write_group(self, group) -> None:
        import pyarrow as pa

        # One contiguous chunk per column: the pages, and so the bytes, then depend on the rows alone.
        try:
            group = group.combine_chunks()
        except pa.ArrowInvalid:  # over 2 GiB of text in one group: written as it is, the data unchanged
            pass
        self.writer.write_table(group, row_group_size=ROW_GROUP)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.writer is None:
            self._open()
        try:
            if self.pending:
                self._flush(whole_groups_only=False)
        finally:
            self.writer.close()
            self.writer = None


def split_file(folder: Path, split: str) -> Path | None:
    """A dataset's `{split}.parquet`, else the `{split}.jsonl` an older version wrote, else None."""
    for suffix in (".parquet", LEGACY):
        path = Path(folder) / f"{split}{suffix}"
        if path.is_file():
            return path
    return None


def read_records(path: Path, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The records of a split file, streamed (a record batch at a time from Parquet, a line at
    a time from a legacy .jsonl). `columns`: only those fields (Parquet reads no others).
    A file missing or damaged is an InputError naming it."""
    path = Path(path)
    if path.suffix == LEGACY:
        yield from _read_jsonl(path, columns)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path, memory_map=True).iter_batches(batch_size=BATCH_ROWS, columns=columns)
        for batch in batches:
            yield from batch.to_pylist()
    except FileNotFoundError:
        raise InputError(path, "file is missing", hint=REBUILD) from None
    except (pa.ArrowException, OSError) as error:
        raise InputError(path, f"not a processed split bigmodel can read ({_first_line(error)})", hint=REBUILD) from None


def _read_jsonl(path: Path, columns: list[str] | None) -> Iterator[dict[str, Any]]:
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "file is missing", hint=REBUILD) from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise InputError(path, "not a processed record (JSON)", line=number, hint=REBUILD) from None
            if not isinstance(record, dict):
                raise InputError(path, "not a processed record (a JSON object)", line=number, hint=REBUILD)
            yield record if columns is None else {c: record.get(c) for c in columns}


def count_records(path: Path) -> int:
    """The number of records of a split file: from the Parquet footer (cheap), or by counting
    the lines of a legacy .jsonl."""
    path = Path(path)
    if path.suffix == LEGACY:
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path, memory_map=True).metadata.num_rows
    except FileNotFoundError:
        raise InputError(path, "file is missing", hint=REBUILD) from None
    except (pa.ArrowException, OSError) as error:
        raise InputError(path, f"not a processed split bigmodel can read ({_first_line(error)})", hint=REBUILD) from None


def has_records(path: Path | None) -> bool:
    """Whether a split file exists and holds at least one record."""
    if path is None or not Path(path).is_file():
        return False
    if Path(path).suffix == LEGACY:
        return Path(path).stat().st_size > 0
    return count_records(path) > 0


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
