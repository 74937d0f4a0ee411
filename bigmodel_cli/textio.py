"""Reading corpora: file discovery, compression, encoding detection, and the four formats.

Every record carries its file and line so that a bad one can be reported exactly.
Files are read line by line in binary and decoded per line (all supported encodings but
UTF-16 are ASCII-compatible, so b"\\n" always ends a line): memory stays flat and a bad
byte is reported with its offset.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import itertools
import json
import lzma
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from bigmodel_cli.errors import InputError, UserError

FORMATS = ("txt", "jsonl", "csv", "tsv")
_EXTENSIONS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
               ".csv": "csv", ".tsv": "tsv", ".tab": "tsv"}
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
SAMPLE_BYTES = 1 << 20
FASTTEXT_LABEL = "__label__"
# A file is labelled when any of its first records carries a label: deciding on the first
# record alone would silently drop every label of a file whose first record lacks one.
LABEL_LOOKAHEAD = 1000


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
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    fmt = _EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise InputError(path, f"unsupported file type '{''.join(path.suffixes) or '(none)'}'",
                         hint="bigmodel reads .txt, .jsonl, .csv and .tsv (also .gz/.bz2/.xz); rename the file or pass --format")
    return fmt


def discover(paths: list[Path], fmt: str | None = None) -> list[Path]:
    """Expand folders into their readable files (sorted, hidden files skipped)."""
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise InputError(path, "no such file or folder", hint="check the path")
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and _readable(p, fmt)
            )
            if not found:
                raise InputError(path, "folder has no readable files",
                                 hint="put .txt, .jsonl, .csv or .tsv files in it (optionally .gz/.bz2/.xz)")
            files.extend(found)
        else:
            file_format(path, fmt)
            files.append(path)
    return files


def _readable(path: Path, fmt: str | None) -> bool:
    try:
        file_format(path, fmt)
        return True
    except UserError:
        return False


def open_binary(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(decompressed stream, raw file): the raw file's position measures progress."""
    raw = open(path, "rb")
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
    if best is None and _mostly_utf8(sample):
        # A UTF-8 file with a few corrupt lines: read as UTF-8, those lines are bad records
        # (skipped into rejects with their byte offsets, or fatal under --strict).
        return "utf-8"
    if best is None:
        raise InputError(path, "bytes are not UTF-8, UTF-16, GB18030/GBK or Big5", offset=first_bad,
                         hint="convert the file to UTF-8, or pass --encoding NAME if you know it")
    return best.encoding


def _mostly_utf8(sample: bytes, max_bad_share: float = 0.1) -> bool:
    lines = sample.split(b"\n")
    if len(sample) >= SAMPLE_BYTES:
        lines.pop()  # cut off mid-line by the sample size
    lines = [line for line in lines if line.strip()]
    bad = 0
    for line in lines:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad += 1
    return bool(lines) and bad <= max_bad_share * len(lines)


def read_sample(path: Path) -> bytes:
    stream, raw = open_binary(path)
    try:
        return stream.read(SAMPLE_BYTES)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise InputError(path, f"cannot decompress ({exc})", hint="check that the file is complete") from None
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
    """

    def __init__(self, path: Path, fmt: str, encoding: str, text_field: str, label_field: str,
                 label_required: bool = False, name: str | None = None, skip_lines: int = 0,
                 labelled: bool | None = None):
        self.path, self.fmt, self.encoding = path, fmt, encoding
        self.name = name or str(path)  # how records name their file: "name:line"
        self.text_field, self.label_field, self.label_required = text_field, label_field, label_required
        self.labelled = False
        self.resume_line: int | None = None
        self._skip, self._known_labelled = skip_lines, labelled
        self._stream, self._raw = open_binary(path)

    def position(self) -> int:
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
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
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise InputError(self.path, f"cannot decompress ({exc})", hint="check that the file is complete") from None

    # -- records ------------------------------------------------------------------
    def __iter__(self) -> Iterator[Doc | Reject]:
        if self.fmt == "txt":
            return self._txt()
        if self.fmt == "jsonl":
            return self._jsonl()
        return self._table()

    def _txt(self) -> Iterator[Doc | Reject]:
        lines = ((n, line) for n, line in self.lines(self._skip) if isinstance(line, Reject) or line.strip())
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
            label = None
            if self.labelled:
                if line.startswith(FASTTEXT_LABEL):
                    tag, _, line = line.partition(" ")
                    label = tag[len(FASTTEXT_LABEL):]
                else:
                    yield Reject(f"{self.name}:{number}", f"no {FASTTEXT_LABEL} prefix in a labelled file", line, True)
                    continue
            yield Doc(line, label, f"{self.name}:{number}")

    def _json_records(self) -> Iterator[tuple[int, str, str, dict | Reject]]:
        """(line number, location, line, parsed object or a Reject) for each non-blank line."""
        for number, line in self.lines(self._skip):
            if isinstance(line, Reject):
                yield number, line.source, "", line
                continue
            if not line.strip():
                continue
            where = f"{self.name}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, where, line, Reject(where, f"not valid JSON ({exc.msg} at column {exc.colno})", line)
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
            if isinstance(record, Reject):
                yield record
                continue
            text = record.get(self.text_field)
            if not isinstance(text, str):
                problem = (f"no field '{self.text_field}' (fields: {', '.join(record) or 'none'}); pass --text-field"
                           if text is None else f"field '{self.text_field}' is a {type(text).__name__}, not a string")
                yield Reject(where, problem, line)
                continue
            label = _label(record.get(self.label_field)) if self.labelled else None
            if self.labelled and label is None:
                yield Reject(where, f"no label in field '{self.label_field}'", line, True)
                continue
            yield Doc(text, label, where)

    def _table(self) -> Iterator[Doc | Reject]:
        fmt = self.fmt
        delimiter = "\t" if fmt == "tsv" else ","
        decoded: list[Reject] = []

        # Taking over after line `skip`: the header still comes from line 1, and the csv
        # module's line numbers, which count the lines it was given, are shifted back.
        skip = self._skip
        shift = max(skip - 1, 0)

        def text_lines() -> Iterator[str]:
            for number, line in self.lines():
                if 1 < number <= skip:
                    continue
                if isinstance(line, Reject):
                    decoded.append(line)
                    yield ""
                else:
                    yield line + "\n"

        reader = csv.reader(text_lines(), delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(self.path, "file is empty") from None
        # A header over several lines (a quoted newline in a column name) would make the
        # line arithmetic of taking over wrong: such a file is read from its start.
        resumable = reader.line_num == 1
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
        try:
            for row in reader:
                # Undecodable lines read along with this row: not a place to take over,
                # since the row itself is still to come.
                self.resume_line = None
                while decoded:
                    yield decoded.pop(0)
                if not row or not any(cell.strip() for cell in row):
                    continue
                line = reader.line_num + shift
                where = f"{self.name}:{line}"
                self.resume_line = line if resumable else None  # a record may span lines: the one yielded next ends there
                if len(row) != len(header):
                    yield Reject(where, f"{len(row)} fields where the header has {len(header)}", delimiter.join(row))
                    continue
                label = _label(row[label_col]) if label_col is not None else None
                if label_col is not None and label is None:
                    yield Reject(where, f"empty label in column '{self.label_field}'", delimiter.join(row), True)
                    continue
                yield Doc(row[text_col], label, where)
        except csv.Error as exc:
            raise InputError(self.path, f"malformed {fmt.upper()} ({exc})", line=reader.line_num + shift,
                             hint="check the quoting on that line") from None
        self.resume_line = None
        while decoded:
            yield decoded.pop(0)


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
    if not path.is_file():
        raise InputError(path, "no such file", hint="check the path")
    enc = detect_encoding(path, read_sample(path)) if encoding == "auto" else check_encoding(path, encoding)
    reader = Reader(path, fmt, enc, text_field, "label")
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
