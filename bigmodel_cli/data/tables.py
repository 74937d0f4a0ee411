"""Parquet and Arrow files, and folders saved by Hugging Face `datasets`, read with pyarrow.

A file is read a record batch at a time, memory-mapped, only its text and label columns:
a table larger than memory streams like a text file. Each row is a record, named
"file:row" (rows counted from 1) as a line of a text file is "file:line".

`Dataset.save_to_disk` writes Arrow IPC stream files (data-00000-of-0000N.arrow) listed in
its state.json, and the features (a ClassLabel column's names) in dataset_info.json; a
`DatasetDict` writes one such folder per split, listed in dataset_dict.json. Both layouts
are read here without `datasets` itself.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Iterator

from bigmodel_cli.data.readers import Doc, Reject, _label, printable_name, read_error
from bigmodel_cli.errors import InputError

BATCH_ROWS = 1024
# A DatasetDict's split names -> bigmodel's splits, as --train/--dev/--test would give them.
SPLIT_NAMES = {"train": "train", "validation": "dev", "valid": "dev", "dev": "dev", "test": "test"}
NO_CLASS = -1  # how datasets marks a row without a label in a ClassLabel column


# -- saved datasets folders -------------------------------------------------------------
def _json_file(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise read_error(path, exc) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc})", hint="the saved dataset is damaged; save it again") from None


def saved_dataset_files(folder: Path) -> list[Path] | None:
    """The Arrow files of a folder written by `Dataset.save_to_disk`, in the order its
    state.json lists them; None when `folder` is not one (no state.json with data files)."""
    state_path = folder / "state.json"
    if not state_path.is_file():
        return None
    state = _json_file(state_path)
    entries = state.get("_data_files") if isinstance(state, dict) else None
    if entries is None:
        return None  # some other state.json: the folder is read as any other
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("filename"), str) for e in entries):
        raise InputError(state_path, "'_data_files' is not a list of {\"filename\": ...}",
                         hint="the saved dataset is damaged; save it again with Dataset.save_to_disk")
    files = [folder / e["filename"] for e in entries]
    for path in files:
        if not path.is_file():
            raise InputError(path, "listed in state.json but missing", hint="the saved dataset is incomplete; save it again")
    if not files:
        raise InputError(folder, "saved dataset lists no data files in state.json", hint="save a dataset with rows in it")
    return files


def is_dataset_dict(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file()


def dataset_dict_splits(folder: Path) -> dict[str, Path]:
    """bigmodel split -> split folder of a saved DatasetDict: train -> train, validation
    (or valid, or dev) -> dev, test -> test. Any other split is an error, so that none is
    left out unsaid; the user then names the folders with --train/--dev/--test."""
    info = _json_file(folder / "dataset_dict.json")
    names = info.get("splits") if isinstance(info, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(folder / "dataset_dict.json", "no 'splits' list", hint="the saved DatasetDict is damaged; save it again")
    hint = f"give the split folders to use as --train/--dev/--test, e.g. --train {printable_name(str(folder / (names or ['train'])[0]))}"
    unknown = [n for n in names if n not in SPLIT_NAMES]
    if unknown:
        raise InputError(folder, f"a saved DatasetDict with split(s) {', '.join(unknown)}, which match none of train, "
                                 "validation (or valid, dev) and test", hint=hint)
    splits: dict[str, Path] = {}
    for name in names:
        ours = SPLIT_NAMES[name]
        if ours in splits:
            raise InputError(folder, f"a saved DatasetDict with two dev splits ({splits[ours].name}, {name})", hint=hint)
        splits[ours] = folder / name
    if "train" not in splits:
        raise InputError(folder, f"a saved DatasetDict without a train split (splits: {', '.join(names) or 'none'})", hint=hint)
    return {s: splits[s] for s in ("train", "dev", "test") if s in splits}


def class_names(path: Path, schema) -> dict[str, list[str]]:
    """Column -> names of a ClassLabel column: from the dataset_info.json beside a saved
    dataset's file, else from the features datasets writes into the Arrow schema."""
    features = None
    info_path = path.parent / "dataset_info.json"
    if info_path.is_file() and (path.parent / "state.json").is_file():
        info = _json_file(info_path)
        features = info.get("features") if isinstance(info, dict) else None
    if features is None and schema.metadata and b"huggingface" in schema.metadata:
        try:
            features = json.loads(schema.metadata[b"huggingface"]).get("info", {}).get("features")
        except (ValueError, AttributeError):
            features = None
    if not isinstance(features, dict):
        return {}
    return {column: list(map(str, feature["names"])) for column, feature in features.items()
            if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list)}


# -- files ------------------------------------------------------------------------------
class _Batches:
    """A file's record batches (the columns `wanted` that it has) after its first `skip`
    rows, and the share of the file read so far."""

    def __init__(self, path: Path, fmt: str, wanted: tuple[str, ...], skip: int):
        import pyarrow as pa

        self.path, self.fmt, self.read = path, fmt, 0.0
        self.rows: int | None = None  # known without reading the data for Parquet
        self._source = None
        try:
            if fmt == "parquet":
                self.schema, batches = self._parquet(wanted, skip)
            else:
                self._source = pa.memory_map(str(path))
                self.schema, batches = self._arrow()
                batches = _skip_rows(batches, skip)
        except (OSError, pa.ArrowException) as exc:
            self.close()
            raise self._failure(exc) from None
        self._batches = batches

    def _parquet(self, wanted: tuple[str, ...], skip: int):
        import pyarrow.parquet as pq

        self._source = handle = pq.ParquetFile(str(self.path), memory_map=True)
        schema, meta = handle.schema_arrow, handle.metadata
        self.rows = meta.num_rows
        start, groups = 0, []
        for group in range(handle.num_row_groups):  # whole row groups before `skip` are not read at all
            rows = meta.row_group(group).num_rows
            if start + rows <= skip and not groups:
                start += rows
            else:
                groups.append(group)
        total = max(meta.num_rows, 1)

        def batches() -> Iterator:
            done = start
            if not groups:
                return
            # One thread: the worker processes are the parallelism, and no pyarrow thread
            # pool is started in a process that forks them.
            for batch in handle.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, use_threads=False,
                                             columns=[c for c in wanted if c in schema.names]):
                done += batch.num_rows
                self.read = done / total
                yield batch

        return schema, _skip_rows(batches(), skip - start)

    def _arrow(self):
        import pyarrow as pa

        source = self._source
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            source.seek(0)
            reader = pa.ipc.open_stream(source)  # what datasets writes

            def streamed() -> Iterator:
                for batch in reader:
                    self.read = source.tell() / max(source.size(), 1)
                    yield batch
                self.read = 1.0  # the end-of-stream marker is not read

            return reader.schema, streamed()
        count = reader.num_record_batches

        def batches() -> Iterator:
            for index in range(count):
                yield reader.get_batch(index)
                self.read = (index + 1) / count

        return reader.schema, batches()

    def __iter__(self) -> Iterator:
        import pyarrow as pa

        try:
            yield from self._batches
        except (OSError, pa.ArrowException) as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: BaseException) -> InputError:
        """A read error from the system (it carries an errno), or a file pyarrow cannot parse."""
        if isinstance(exc, OSError) and exc.errno:
            return read_error(self.path, exc)
        return _not_a_table(self.path, self.fmt, exc)

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None


def _skip_rows(batches: Iterator, skip: int) -> Iterator:
    for batch in batches:
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        yield batch.slice(skip) if skip else batch
        skip = 0


def _not_a_table(path: Path, fmt: str, exc: BaseException) -> InputError:
    kind = "Parquet" if fmt == "parquet" else "Arrow IPC (file or stream)"
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InputError(path, f"cannot read as {kind} ({reason})", hint="check that the file is complete, or pass --format")


def _check_column(path: Path, names: list[str], column: str, option: str) -> None:
    if column not in names:
        raise InputError(path, f"no column '{column}'", hint=f"the columns are: {', '.join(names) or 'none'}; pass {option} NAME")


class TableRows:
    """The rows of a Parquet or Arrow file as `Doc`/`Reject` records, after the first
    `skip_rows` (as `Reader` takes over a file after a line). The text must be a string (a
    null or another type is a Reject); a label may be a string or an integer, and a
    ClassLabel's integer stands for its name."""

    def __init__(self, path: Path, fmt: str, text_field: str, label_field: str, label_required: bool, name: str,
                 skip_rows: int = 0):
        self.path, self.name, self.text_field, self.label_field = path, name, text_field, label_field
        self.resume_line: int | None = None
        self._row = skip_rows
        self._size = path.stat().st_size
        if not self._size:
            raise InputError(path, "file is empty", hint=f"give a {fmt} file with a '{text_field}' column")
        self._batches = _Batches(path, fmt, (text_field, label_field), skip_rows)
        try:
            names = list(self._batches.schema.names)
            _check_column(path, names, text_field, "--text-field")
            if label_required:
                _check_column(path, names, label_field, "--label-field")
            self.labelled = label_field in names
            self.rows = self._batches.rows
            self._classes = class_names(path, self._batches.schema).get(label_field) if self.labelled else None
        except BaseException:
            self.close()
            raise

    def position(self) -> int:
        return int(self._size * min(self._batches.read, 1.0))

    def close(self) -> None:
        self._batches.close()

    def __iter__(self) -> Iterator[Doc | Reject]:
        text_field, label_field, labelled, name = self.text_field, self.label_field, self.labelled, self.name
        for batch in _pieces(self._batches):
            texts = batch.column(batch.schema.get_field_index(text_field)).to_pylist()
            labels = (batch.column(batch.schema.get_field_index(label_field)).to_pylist() if labelled
                      else itertools.repeat(None))
            for text, raw_label in zip(texts, labels):
                self._row += 1
                self.resume_line = self._row  # one record per row: the one yielded next ends there
                where = f"{name}:{self._row}"
                if type(text) is not str:
                    problem = "is null" if text is None else f"holds a {type(text).__name__}, not a string"
                    yield Reject(where, f"column '{text_field}' {problem}", _raw(text_field, text, label_field, raw_label))
                    continue
                if not labelled:
                    yield Doc(text, None, where)
                    continue
                label, problem = self._label(raw_label)
                if label is None:
                    yield Reject(where, problem, _raw(text_field, text, label_field, raw_label), problem.startswith("no label"))
                    continue
                yield Doc(text, label, where)

    def _label(self, value: object) -> tuple[str | None, str]:
        """(label, "") or (None, why not)."""
        missing = f"no label in column '{self.label_field}'"
        if isinstance(value, float) and value != value:  # NaN: how pandas writes a missing number
            return None, missing
        if self._classes is None or type(value) is not int:
            label = _label(value)
            return (label, "") if label is not None else (None, missing)
        if value == NO_CLASS:
            return None, missing
        if not 0 <= value < len(self._classes):
            return None, (f"label {value} in column '{self.label_field}' is not one of its {len(self._classes)} "
                          "ClassLabel classes")
        return self._classes[value], ""


def _pieces(batches: Iterator) -> Iterator:
    """Batches of at most BATCH_ROWS rows: an Arrow file may hold its whole table in one
    batch, and only a slice (a view of the memory-mapped file) is turned into Python objects."""
    for batch in batches:
        if batch.num_rows <= BATCH_ROWS:
            yield batch
            continue
        for start in range(0, batch.num_rows, BATCH_ROWS):
            yield batch.slice(start, BATCH_ROWS)


def _raw(text_field: str, text: object, label_field: str, label: object) -> str:
    """A rejected row as the rejects file shows it: its text and label, as JSON."""
    return json.dumps({text_field: text, label_field: label}, ensure_ascii=False, default=repr)


def check_table(path: Path, fmt: str, text_field: str, label_field: str, label_required: bool) -> int | None:
    """Open `path` and check its columns (a one-line error naming them if the text column,
    or a required label column, is not there); the number of rows when the file's
    metadata gives it without reading the data (Parquet), else None."""
    rows = TableRows(path, fmt, text_field, label_field, label_required, printable_name(str(path)))
    try:
        return rows.rows
    finally:
        rows.close()


def dataset_info_files(paths: list[Path]) -> list[Path]:
    """The dataset_info.json of each saved dataset folder among the parents of `paths`:
    its ClassLabel names make the labels, so it is an input as much as the data files."""
    found = []
    for folder in dict.fromkeys(p.parent for p in paths):
        info = folder / "dataset_info.json"
        if info.is_file() and (folder / "state.json").is_file():
            found.append(info)
    return found
