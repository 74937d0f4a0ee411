"""Reading corpora: file discovery, compression, encoding detection, and the formats.

Every record carries its file and line so that a bad one can be reported exactly.
Files are read line by line in binary and decoded per line (all supported encodings but
UTF-16 are ASCII-compatible, so b"\\n" always ends a line): memory stays flat and a bad
byte is reported with its offset. Parquet and Arrow files, and folders saved by Hugging
Face `datasets`, are read with pyarrow (tables.py); their rows stand for lines.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import errno
import gzip
import io
import itertools
import json
import lzma
import os
import re
import stat
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from bigmodel_cli.errors import InputError, UserError

FORMATS = ("txt", "jsonl", "csv", "tsv", "parquet", "arrow")
TABLE_FORMATS = ("parquet", "arrow")  # columnar: read by tables.py, row by row, neither decoded nor compressed here
_EXTENSIONS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
               ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".arrow": "arrow", ".feather": "arrow"}
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
SAMPLE_BYTES = 1 << 20
FASTTEXT_LABEL = "__label__"
# A file is labelled when any of its first records carries a label: deciding on the first
# record alone would silently drop every label of a file whose first record lacks one.
LABEL_LOOKAHEAD = 1000
# A CSV/TSV row whose quoted field runs over more lines than this (or to the end of the
# file) is taken for an unclosed quote: it is rejected and reading resumes on the line
# after it starts, so that one stray quote does not swallow the rows after it.
MAX_ROW_LINES = 100
CSV_FIELD_LIMIT = (1 << 31) - 1
# Share of lines in a sample that may fail to decode in the encoding chosen for the file;
# those lines become rejected records (with their byte offsets), the rest is read.
MAX_BAD_LINE_SHARE = 0.1
# Lone surrogates (a JSON escape such as "\ud800" with no partner) are not characters:
# nothing can encode them, so they cannot be written out as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
_STREAM_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)


@dataclass(slots=True)
class Doc:
    text: str
    label: str | None
    source: str  # "path:line"


@dataclass(slots=True)
class Reject:
    source: str
    reason: str
    raw: str | None = None
    missing_label: bool = False


def file_format(path: Path, override: str | None = None) -> str:
    if override:
        if override not in FORMATS:
            raise UserError(f"--format must be one of {', '.join(FORMATS)}, got '{override}'")
        return override
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] in _COMPRESSED
    if compressed:
        suffixes = suffixes[:-1]
    fmt = _EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise InputError(path, f"unsupported file type '{''.join(path.suffixes) or '(none)'}'",
                         hint="bigmodel reads .txt, .jsonl, .csv and .tsv (also .gz/.bz2/.xz), .parquet and .arrow; "
                              "rename the file or pass --format")
    if compressed and fmt in TABLE_FORMATS:
        raise InputError(path, f"a compressed {fmt} file", hint="decompress it: Parquet and Arrow compress their columns themselves")
    return fmt


def discover(paths: list[Path], fmt: str | None = None) -> list[Path]:
    """Expand folders into their readable files (sorted, hidden files skipped). A pipe,
    socket or device, given or inside a folder, is refused: every input is read twice
    (a sample to detect the encoding, then the records), and reading a pipe would hang."""
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise InputError(path, "no such file or folder", hint="check the path")
        if path.is_dir():
            found = _folder_files(path, fmt)
            for p in found:
                check_regular_file(p)
            if not found:
                raise InputError(path, "folder has no readable files",
                                 hint="put .txt, .jsonl, .csv or .tsv files in it (optionally .gz/.bz2/.xz), "
                                      ".parquet or .arrow files, or a folder saved by datasets")
            files.extend(found)
        else:
            file_format(path, fmt)
            check_regular_file(path)
            files.append(path)
    return files


def _folder_files(folder: Path, fmt: str | None) -> list[Path]:
    """The readable files under `folder` in sorted order, a folder saved by `datasets`
    (there, or as `folder` itself) standing for its Arrow files in its own order."""
    from bigmodel_cli.data.tables import saved_dataset_files

    dataset = saved_dataset_files(folder)
    if dataset is not None:
        return dataset
    entries = sorted(_walk(folder), key=lambda entry: entry[0])
    return [p for key, group in entries for p in group if p != key or _readable(p, fmt)]


def _walk(folder: Path) -> Iterator[tuple[Path, list[Path]]]:
    """(path, [path]) for every entry under `folder` but folders, hidden ones (and hidden
    folders' contents) left out, symbolic links to folders not followed; (folder, its
    Arrow files) for a folder saved by `datasets`, whose files keep its order. A folder
    that cannot be listed is an error: pathlib's rglob would pass over it, and its files
    would be lost unsaid. So is a saved DatasetDict below `folder`: its splits would be
    read as one corpus."""
    from bigmodel_cli.data.tables import is_dataset_dict, saved_dataset_files

    def refuse(exc: OSError) -> None:
        raise read_error(exc.filename, exc)

    for top, dirs, names in os.walk(folder, onerror=refuse):
        here = Path(top)
        if is_dataset_dict(here):
            where = "given with other inputs or as a split" if here == folder else "inside a folder of inputs"
            raise InputError(here, f"a saved DatasetDict {where}",
                             hint="give it as the only input (its train, validation and test splits become train, dev "
                                  "and test), or give its split folders with --train/--dev/--test")
        dataset = saved_dataset_files(here) if here != folder else None
        if dataset is not None:
            dirs[:] = []
            yield here, dataset
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if not name.startswith("."):
                path = Path(top, name)
                yield path, [path]


_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def check_regular_file(path: Path) -> None:
    """An InputError unless `path` is a regular file (or a link to one) that exists."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(path, "no such file" + (" (a broken symbolic link)" if path.is_symlink() else ""),
                         hint="check the path") from None
    except OSError as exc:
        raise read_error(path, exc) from None
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise InputError(path, f"{kind}, not a regular file",
                     hint="give a file: inputs are read twice (a sample for the encoding, then the records), "
                          "so save a pipe's output to a file first")


_READ_ADVICE = {
    errno.EACCES: "check its permissions (ls -l) or run as a user who may read it",
    errno.EPERM: "check its permissions (ls -l) or run as a user who may read it",
    errno.EIO: "the disk or network file system reported a read error; check it (dmesg) and retry",
}


def read_error(path: object, exc: OSError) -> InputError:
    """One line for an operating-system error while opening or reading `path`."""
    reason = exc.strerror or str(exc)
    problem = f"I/O error while reading ({reason})" if exc.errno == errno.EIO else f"cannot read ({reason})"
    return InputError(path, problem, hint=_READ_ADVICE.get(exc.errno, "check the file and the disk it is on"))


def _stream_error(path: Path, exc: BaseException) -> InputError:
    """A read error (it carries an errno) or a damaged compressed file (gzip, bz2 and lzma
    raise OSErrors without one, EOFError, LZMAError or zlib.error)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return read_error(path, exc)
    return InputError(path, f"cannot decompress ({exc})", hint="check that the file is complete")


def _readable(path: Path, fmt: str | None) -> bool:
    try:
        file_format(path, fmt)
        return True
    except UserError:
        return False


def open_binary(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(decompressed stream, raw file): the raw file's position measures progress."""
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise read_error(path, exc) from None
    opener = _COMPRESSED.get(path.suffix.lower())
    if opener is None:
        return raw, raw
    try:
        return opener(raw, "rb"), raw
    except Exception:
        raw.close()
        raise


_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def detect_encoding(path: Path, sample: bytes) -> str:
    """UTF-8 (BOM or not) and UTF-16 with BOM by inspection; else GB18030 or Big5, detected."""
    if not sample:
        raise InputError(path, "file is empty", hint="give a file with one document per line (or JSONL/CSV records)")
    for bom, name in _BOMS:
        if sample.startswith(bom):
            return name
    nul = sample.find(b"\x00")
    if nul >= 0:
        raise InputError(path, "looks like a binary file (NUL byte)", offset=nul,
                         hint="give a text file, or pass --encoding if it is UTF-16 without a BOM")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=len(sample) < SAMPLE_BYTES)
        return "utf-8"
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    from charset_normalizer import from_bytes

    best = from_bytes(sample, cp_isolation=["gb18030", "big5"]).best()
    if best is not None:
        return best.encoding
    # A file with a few corrupt lines: read in the encoding most of its lines decode in,
    # those lines are bad records (skipped into rejects with their byte offsets, or fatal
    # under --strict), as charset_normalizer gives up on the whole sample for one bad line.
    mostly = _mostly_decodable(sample)
    if mostly is None:
        raise InputError(path, "bytes are not UTF-8, UTF-16, GB18030/GBK or Big5", offset=first_bad,
                         hint="convert the file to UTF-8, or pass --encoding NAME if you know it")
    return mostly


def _sample_lines(sample: bytes) -> list[bytes]:
    lines = sample.split(b"\n")
    if len(sample) >= SAMPLE_BYTES:
        lines.pop()  # cut off mid-line by the sample size
    return [line for line in lines if line.strip()]


def _decodes(line: bytes, encoding: str) -> bool:
    try:
        line.decode(encoding)
        return True
    except UnicodeDecodeError:
        return False


def _mostly_decodable(sample: bytes) -> str | None:
    """UTF-8, GB18030 or Big5 when all but a few of the sample's non-ASCII lines decode in
    it (UTF-8 first: other bytes seldom pass as UTF-8, while GB18030 takes most byte
    pairs); the Chinese encodings told apart on the lines both decode, as charset_normalizer
    would tell a clean file."""
    lines = [line for line in _sample_lines(sample) if not line.isascii()]
    if not lines:
        return None
    fits = {}
    for encoding in ("utf-8", "gb18030", "big5"):
        fits[encoding] = [_decodes(line, encoding) for line in lines]
        if encoding == "utf-8" and fits[encoding].count(False) <= MAX_BAD_LINE_SHARE * len(lines):
            return "utf-8"
    candidates = [e for e in ("gb18030", "big5") if fits[e].count(False) <= MAX_BAD_LINE_SHARE * len(lines)]
    if len(candidates) < 2:
        return candidates[0] if candidates else None
    both = b"\n".join(line for line, a, b in zip(lines, fits["gb18030"], fits["big5"]) if a and b)
    from charset_normalizer import from_bytes

    best = from_bytes(both, cp_isolation=candidates).best()
    return best.encoding if best is not None else "gb18030"


def read_sample(path: Path) -> bytes:
    stream, raw = open_binary(path)
    try:
        return stream.read(SAMPLE_BYTES)
    except _STREAM_ERRORS as exc:
        raise _stream_error(path, exc) from None
    finally:
        stream.close()
        raw.close()


def check_encoding(path: Path, encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise UserError(f"--encoding '{encoding}' is not a known encoding", hint="try utf-8, gb18030, big5 or utf-16") from None


class Reader:
    """Yields `Doc` and `Reject` objects from one file; `position()` is the raw byte offset.

    `resume_line` is where another reader could take over: after it yields a record, the
    last line of the file that record came from, when every record from the lines up to
    there has been yielded (None otherwise). `Reader(..., skip_lines=n, labelled=x)` then
    yields the records after line n, as this one would have, given `labelled` as this one
    decided it from the file's first records (see read_ahead).

    `blank_lines`: a blank line (or CSV row) is yielded as a Doc with empty text, so that
    it is counted (preprocess drops it as blank); otherwise it is passed over.
    `surrogates`: a JSON text or label holding a lone surrogate is a Reject ("reject") or
    has it replaced by U+FFFD ("replace").

    Parquet and Arrow files (TABLE_FORMATS) are read by tables.TableRows: a row stands for
    a line (`skip_lines` rows are skipped, `resume_line` is a row), `encoding` is not used
    (their strings are UTF-8), and the file is labelled when it has the label column.
    """

    def __init__(self, path: Path, fmt: str, encoding: str, text_field: str, label_field: str,
                 label_required: bool = False, name: str | None = None, skip_lines: int = 0,
                 labelled: bool | None = None, blank_lines: bool = False, surrogates: str = "reject"):
        self.path, self.fmt, self.encoding = path, fmt, encoding
        self.name = printable_name(name or str(path))  # how records name their file: "name:line"
        self.text_field, self.label_field, self.label_required = text_field, label_field, label_required
        self.blank_lines, self.surrogates = blank_lines, surrogates
        self.labelled = False
        self.resume_line: int | None = None
        self._skip, self._known_labelled = skip_lines, labelled
        self._table_rows = None
        if fmt in TABLE_FORMATS:
            from bigmodel_cli.data.tables import TableRows

            self._table_rows = TableRows(path, fmt, text_field, label_field, label_required, self.name, skip_lines)
            self.labelled = self._table_rows.labelled
            return
        self._stream, self._raw = open_binary(path)

    def position(self) -> int:
        if self._table_rows is not None:
            return self._table_rows.position()
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        if self._table_rows is not None:
            self._table_rows.close()
            return
        self._stream.close()
        self._raw.close()

    # -- lines --------------------------------------------------------------------
    def lines(self, skip: int = 0) -> Iterator[tuple[int, str | Reject]]:
        """(line number, decoded line without its newline, or a Reject for undecodable bytes),
        after the first `skip` lines (not decoded, in the ASCII-compatible encodings)."""
        if self.encoding.replace("_", "-").lower().startswith("utf-16"):
            text = io.TextIOWrapper(self._stream, encoding=self.encoding, newline=None)
            try:
                for _ in itertools.islice(text, skip):
                    pass
                for number, line in enumerate(text, skip + 1):
                    yield number, line.rstrip("\n")
            except UnicodeDecodeError as exc:
                raise InputError(self.path, f"cannot decode as {self.encoding} ({exc.reason})",
                                 hint="pass --encoding with the file's real encoding") from None
            except _STREAM_ERRORS as exc:
                raise _stream_error(self.path, exc) from None
            return
        decode = codecs.getdecoder(self.encoding)
        try:
            offset = sum(map(len, itertools.islice(self._stream, skip)))
            for number, raw in enumerate(self._stream, skip + 1):
                try:
                    line = decode(raw)[0]
                except UnicodeDecodeError as exc:
                    yield number, Reject(f"{self.name}:{number}",
                                         f"bytes not valid {self.encoding} at byte {offset + exc.start}",
                                         raw.decode(self.encoding, errors="replace").rstrip("\r\n"))
                else:
                    if number == 1 and line.startswith("\ufeff"):
                        line = line[1:]
                    yield number, line.rstrip("\r\n")
                offset += len(raw)
        except _STREAM_ERRORS as exc:
            raise _stream_error(self.path, exc) from None

    # -- records ------------------------------------------------------------------
    def __iter__(self) -> Iterator[Doc | Reject]:
        if self._table_rows is not None:
            return self._rows()
        if self.fmt == "txt":
            return self._txt()
        if self.fmt == "jsonl":
            return self._jsonl()
        return self._table()

    def _rows(self) -> Iterator[Doc | Reject]:
        table = self._table_rows
        for item in table:
            self.resume_line = table.resume_line
            yield item

    def _txt(self) -> Iterator[Doc | Reject]:
        blank = self.blank_lines
        lines = ((n, line) for n, line in self.lines(self._skip) if blank or isinstance(line, Reject) or line.strip())
        # fastText's format: "__label__pos some text" marks a labelled file.
        if self._known_labelled is None:
            head, lines = _lookahead(lines)
            self.labelled = any(isinstance(line, str) and line.startswith(FASTTEXT_LABEL) for _, line in head)
        else:
            self.labelled = self._known_labelled
        for number, line in lines:
            self.resume_line = number  # one record per line: the one yielded next ends there
            if isinstance(line, Reject):
                yield line
                continue
            if blank and not line.strip():
                yield Doc("", None, f"{self.name}:{number}")
                continue
            label = None
            if self.labelled:
                if line.startswith(FASTTEXT_LABEL):
                    tag, _, line = line.partition(" ")
                    label = tag[len(FASTTEXT_LABEL):]
                else:
                    yield Reject(f"{self.name}:{number}", f"no {FASTTEXT_LABEL} prefix in a labelled file", line, True)
                    continue
            yield Doc(line, label, f"{self.name}:{number}")

    def _json_records(self) -> Iterator[tuple[int, str, str, dict | Reject | None]]:
        """(line number, location, line, parsed object, a Reject, or None for a blank line
        when blank lines are counted) for each line."""
        for number, line in self.lines(self._skip):
            if isinstance(line, Reject):
                yield number, line.source, "", line
                continue
            if not line.strip():
                if self.blank_lines:
                    yield number, f"{self.name}:{number}", line, None
                continue
            where = f"{self.name}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, where, line, Reject(where, f"not valid JSON ({exc.msg} at column {exc.colno})", line)
                continue
            except (ValueError, RecursionError) as exc:
                # valid JSON that Python will not hold: a number of over 4,300 digits, or
                # arrays nested thousands deep
                problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
                yield number, where, line, Reject(where, f"cannot read this JSON ({problem})", line)
                continue
            if not isinstance(record, dict):
                yield number, where, line, Reject(where, f"a JSON {type(record).__name__}, not an object", line)
                continue
            yield number, where, line, record

    def _jsonl(self) -> Iterator[Doc | Reject]:
        if self._known_labelled is None:
            head, records = _lookahead(self._json_records())
            self.labelled = self.label_required or any(isinstance(r, dict) and self.label_field in r for *_, r in head)
        else:
            records, self.labelled = self._json_records(), self._known_labelled
        for number, where, line, record in records:
            self.resume_line = number  # one record per line: the one yielded next ends there
            if record is None:
                yield Doc("", None, where)
                continue
            if isinstance(record, Reject):
                yield record
                continue
            text = record.get(self.text_field)
            if not isinstance(text, str):
                problem = (f"no field '{self.text_field}' (fields: {', '.join(record) or 'none'}); pass --text-field"
                           if text is None else f"field '{self.text_field}' is a {type(text).__name__}, not a string")
                yield Reject(where, without_surrogates(problem), line)
                continue
            label = _label(record.get(self.label_field)) if self.labelled else None
            if self.labelled and label is None:
                yield Reject(where, f"no label in field '{self.label_field}'", line, True)
                continue
            if "\\ud" in line or "\\uD" in line:  # only a JSON escape (\ud800-\udfff) can make a lone surrogate
                fixed = self._surrogates(where, line, text, label)
                if isinstance(fixed, Reject):
                    yield fixed
                    continue
                text, label = fixed
            yield Doc(text, label, where)

    def _surrogates(self, where: str, line: str, text: str, label: str | None) -> tuple[str, str | None] | Reject:
        for name, value in ((self.text_field, text), (self.label_field, label)):
            if value is not None and _SURROGATE.search(value):
                if self.surrogates != "replace":
                    return Reject(where, f"field '{name}' holds a lone surrogate (an escape such as \\ud800 with no "
                                         f"partner), which is not a character", line)
        if self.surrogates != "replace":
            return text, label
        return without_surrogates(text), None if label is None else without_surrogates(label)

    def _table(self) -> Iterator[Doc | Reject]:
        fmt = self.fmt
        delimiter = "\t" if fmt == "tsv" else ","
        # Taking over after line `skip`: the header still comes from line 1.
        skip = self._skip
        # A cell as long as a txt line may be: csv's default limit (131,072 characters)
        # made a long review a malformed row; --max-chars judges its length instead.
        csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
        lines = self.lines()
        feed = _RowFeed(((n, line) for n, line in lines if not 1 < n <= skip) if skip > 1 else lines)
        reader = csv.reader(feed, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(self.path, "file is empty") from None
        except csv.Error as exc:
            raise InputError(self.path, f"malformed {fmt.upper()} header ({exc})", line=1,
                             hint="check the quoting on that line") from None
        if feed.bad:
            raise InputError(feed.bad[0].source, f"the header: {feed.bad[0].reason}", hint="pass --encoding with the file's real encoding")
        if feed.unclosed:
            raise InputError(self.path, "the header opens a quoted field that is not closed", line=1,
                             hint="check the quoting on that line")
        # A header over several lines (a quoted newline in a column name) would make the
        # line arithmetic of taking over wrong: such a file is read from its start.
        resumable = feed.taken[-1][0] == 1
        header = [h.strip() for h in header]
        if self.text_field not in header:
            raise InputError(self.path, f"no column '{self.text_field}'", line=1,
                             hint=f"the columns are: {', '.join(header)}; pass --text-field NAME")
        text_col = header.index(self.text_field)
        if self.label_required and self.label_field not in header:
            raise InputError(self.path, f"no column '{self.label_field}'", line=1,
                             hint=f"the columns are: {', '.join(header)}; pass --label-field NAME")
        label_col = header.index(self.label_field) if self.label_field in header else None
        self.labelled = label_col is not None
        width, name, taken = len(header), self.name, feed.taken
        while True:
            taken.clear()
            feed.unclosed = feed.cut = False
            error = None
            try:
                row = next(reader)
            except StopIteration:
                row = None
            except csv.Error as exc:
                row, error = [], f"malformed {fmt.upper()} ({exc})"
            # Most rows: one line, the header's width, a text and (if any) a label.
            if (error is None and row is not None and len(taken) == 1 and len(row) == width and not feed.unclosed
                    and not feed.bad and row[text_col].strip()):
                number = taken[0][0]
                self.resume_line = number if resumable else None
                label = (row[label_col].strip() or None) if label_col is not None else None
                if label is not None or label_col is None:
                    yield Doc(row[text_col], label, f"{name}:{number}")
                    continue
            if row is not None and not feed.taken:
                row = None
            if row is not None:
                first, last = feed.taken[0][0], feed.taken[-1][0]
                if error is None and feed.unclosed:
                    error = (f"a quoted field opened on this line is not closed within {MAX_ROW_LINES} lines" if feed.cut
                             else "a quoted field opened on this line is not closed before the end of the file")
                elif error is None and last > first and len(row) != len(header):
                    error = f"{len(row)} fields where the header has {len(header)}, over lines {first}-{last}"
                if error is not None:
                    raw = feed.resync()  # read on from the line after this row's first: the rows it swallowed come back
            # Undecodable lines read along with this row: not a place to take over,
            # since the row itself is still to come.
            self.resume_line = None
            while feed.bad:
                yield feed.bad.popleft()
            if row is None:
                break
            where = f"{self.name}:{first}"
            if error is not None:
                self.resume_line = first if resumable else None
                yield Reject(where, f"{error}; the lines after it are read again", raw)
                reader = csv.reader(feed, delimiter=delimiter)
                continue
            self.resume_line = last if resumable else None  # a record may span lines: the one yielded next ends there
            if not row or not any(cell.strip() for cell in row):
                if self.blank_lines:
                    yield Doc("", None, where)
                continue
            if len(row) != len(header):
                yield Reject(where, f"{len(row)} fields where the header has {len(header)}", feed.raw())
                continue
            label = _label(row[label_col]) if label_col is not None else None
            if label_col is not None and label is None:
                yield Reject(where, f"empty label in column '{self.label_field}'", feed.raw(), True)
                continue
            yield Doc(row[text_col], label, where)
        self.resume_line = None


class _RowFeed:
    """Lines for csv.reader, with their numbers: `taken` holds the current row's lines.

    The reader empties `taken` (in place) and clears `unclosed` and `cut` before each row.
    A row may take at most MAX_ROW_LINES lines: asked for more, or at the end of the file
    inside a quoted field, the feed ends the row (`unclosed`), and `resync()` puts its lines
    after the first back to be read again. An undecodable line at the start of a row goes
    to `bad` (a Reject, yielded before the row); inside a quoted field it is read as an
    empty line and its Reject goes to `bad` as well.
    """

    def __init__(self, lines: Iterator[tuple[int, str | Reject]]):
        self._lines = lines
        self._pending: deque[tuple[int, str | Reject]] = deque()
        self.taken: list[tuple[int, str | Reject]] = []
        self.bad: deque[Reject] = deque()
        self.unclosed = self.cut = False

    def __iter__(self) -> Iterator[str]:
        # A generator, fresh for each csv.reader: one whose row was cut ends, and the
        # reader made after resync() takes a new one (the lines themselves go on).
        taken, bad, pending, lines, limit = self.taken, self.bad, self._pending, self._lines, MAX_ROW_LINES
        while True:
            if len(taken) >= limit:
                self.unclosed = self.cut = True
                return
            if pending:
                item = pending.popleft()
            else:
                item = next(lines, None)
                if item is None:
                    self.unclosed = bool(taken)  # csv.reader asks for more only inside a quoted field
                    return
            line = item[1]
            if type(line) is str:
                taken.append(item)
                yield line + "\n"
            else:
                bad.append(line)
                if taken:
                    taken.append(item)
                    yield "\n"

    def raw(self) -> str:
        return "\n".join(line for _, line in self.taken if isinstance(line, str))

    def resync(self) -> str:
        """Put the current row's lines after its first back; the first line's text."""
        rest = self.taken[1:]
        again = {id(line) for _, line in rest if isinstance(line, Reject)}
        keep = [r for r in self.bad if id(r) not in again]  # those are met again when re-read
        self.bad.clear()
        self.bad.extend(keep)
        self._pending.extendleft(reversed(rest))
        first = self.taken[0][1]
        return first if isinstance(first, str) else ""


def printable_name(name: str) -> str:
    """A file name fit to write as UTF-8: bytes that are not UTF-8 (which Python keeps as
    lone surrogates) shown as \\xNN."""
    if not _SURROGATE.search(name):
        return name
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def without_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text) if not text.isascii() else text


def _lookahead(items: Iterator, n: int = LABEL_LOOKAHEAD) -> tuple[list, Iterator]:
    """The first `n` items, and an iterator over all of them (those first `n` included)."""
    head = list(itertools.islice(items, n))
    return head, itertools.chain(head, items)


def _label(value: object) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


def read_texts(path: Path, limit: int | None = None, text_field: str = "text", encoding: str = "auto") -> list[str]:
    """The texts of one file, read as preprocess reads it (format by extension, encoding
    detected), for predict and explain. A bad record is a one-line error naming its line."""
    fmt = file_format(path)
    check_regular_file(path)
    enc = input_encoding(path, fmt, encoding)
    reader = Reader(path, fmt, enc, text_field, "label", surrogates="replace")
    texts: list[str] = []
    try:
        for item in reader:
            if isinstance(item, Reject):
                raise InputError(item.source, item.reason, hint="fix the record or remove it")
            texts.append(item.text)
            if limit and len(texts) >= limit:
                break
    finally:
        reader.close()
    if not texts:
        raise InputError(path, "holds no text", hint="give a file with one text per line (txt) or records with a text field")
    return texts


def input_encoding(path: Path, fmt: str, encoding: str = "auto") -> str:
    """The encoding to read `path` in: detected ("auto") or checked; Parquet and Arrow hold
    UTF-8 strings, so there is nothing to detect."""
    if fmt in TABLE_FORMATS:
        return "utf-8"
    return detect_encoding(path, read_sample(path)) if encoding == "auto" else check_encoding(path, encoding)


def read_lines(path: Path, encoding: str = "auto") -> list[str]:
    """The non-blank lines of a plain text file, stripped, read as preprocess reads files
    (compressed or not, encoding detected); a line that does not decode is an error. A
    Parquet or Arrow file gives the texts of its `text` column instead."""
    if _readable(path, None) and file_format(path) in TABLE_FORMATS:
        lines = [text.strip() for text in read_texts(path) if text.strip()]
        if not lines:
            raise InputError(path, "holds no text", hint="give a file whose 'text' column holds the sentences")
        return lines
    check_regular_file(path)
    enc = detect_encoding(path, read_sample(path)) if encoding == "auto" else check_encoding(path, encoding)
    reader = Reader(path, "txt", enc, "text", "label")
    lines = []
    try:
        for _, line in reader.lines():
            if isinstance(line, Reject):
                raise InputError(line.source, line.reason, hint="fix that line, or pass the file's real encoding")
            if line.strip():
                lines.append(line.strip())
    finally:
        reader.close()
    if not lines:
        raise InputError(path, "file is empty")
    return lines
