"""The read-ahead helper, and the reader's taking over a file from a given line."""

from __future__ import annotations

import csv
import gzip
import json
import os
import threading
from pathlib import Path

import pytest

import bigmodel_cli.data.read_ahead as read_ahead
from bigmodel_cli.data.read_ahead import BATCH_DOCS, CleanDoc, ReadAhead, _helper
from bigmodel_cli.data.readers import Doc, Reader, Reject

needs_fork = pytest.mark.skipif("fork" not in read_ahead.mp.get_all_start_methods(), reason="the helper needs fork")


def _records(reader: Reader) -> list[tuple]:
    out = []
    try:
        for item in reader:
            out.append(("doc", item.text, item.label, item.source) if isinstance(item, Doc) else
                       ("reject", item.source, item.reason, item.raw, item.missing_label))
    finally:
        reader.close()
    return out


def _corpus(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A small file of each kind, with what a reader must get right across a take-over:
    blank lines, bad records, undecodable bytes, a BOM, labels, records over several lines."""
    if kind == "txt":
        lines = [f"__label__{'pos' if i % 3 else 'neg'} 第{i}条评论" if i % 7 else f"no label {i}" for i in range(60)]
        lines[5:5] = ["", "   "]
        data = ("\ufeff" + "\n".join(lines) + "\n").encode("utf-8")
        data = data.replace("第20条".encode(), b"\xff\xfe bad")  # undecodable bytes on one line
        path = tmp_path / "c.txt"
        path.write_bytes(data)
        return path, "txt"
    if kind == "jsonl.gz":
        lines = [json.dumps({"text": f"文本{i}", "label": "a" if i % 2 else "b"}, ensure_ascii=False) for i in range(60)]
        lines[10], lines[11], lines[30] = "{not json", json.dumps({"body": "x"}), ""
        path = tmp_path / "c.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return path, "jsonl"
    if kind in ("csv", "tsv"):
        path = tmp_path / f"c.{kind}"
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="," if kind == "csv" else "\t")
            writer.writerow(["text", "label"])
            for i in range(60):
                if i % 9 == 4:
                    writer.writerow([f"第{i}行\n跨两行", "pos"])  # a record over two lines
                elif i % 11 == 5:
                    writer.writerow([f"no label {i}", ""])
                elif i == 17:
                    writer.writerow(["three", "fields", "here"])
                else:
                    writer.writerow([f"文本 {i}", "neg" if i % 2 else "pos"])
        data = path.read_bytes().replace("文本 40".encode(), b"\xff bad")
        path.write_bytes(data)
        return path, kind
    path = tmp_path / "c.utf16.txt"  # UTF-16: not read line by line in binary
    path.write_text("\n".join(f"第{i}条" if i % 5 else "" for i in range(40)) + "\n", encoding="utf-16")
    return path, "txt"


@pytest.mark.parametrize("kind", ["txt", "jsonl.gz", "csv", "tsv", "utf16"])
def test_a_reader_takes_over_after_any_resume_line_and_gives_the_rest(tmp_path, kind):
    path, fmt = _corpus(tmp_path, kind)
    encoding = "utf-16" if kind == "utf16" else "utf-8"

    def reader(**kw):
        return Reader(path, fmt, encoding, "text", "label", name="c", **kw)

    full = _records(reader())
    assert any(r[0] == "reject" for r in full) or kind == "utf16"
    first = reader()
    points = []
    for k, _ in enumerate(first):
        if first.resume_line is not None:
            points.append((k + 1, first.resume_line, first.labelled))
    first.close()
    assert len(points) >= len(full) - 3  # nearly every record is a place to take over
    for done, line, labelled in points:
        assert full[:done] + _records(reader(skip_lines=line, labelled=labelled)) == full, (kind, done, line)


def _plan_readers(paths: list[tuple[Path, str]]):
    def open_reader(index: int):
        if index >= len(paths):
            return None
        path, fmt = paths[index]
        return Reader(path, fmt, "utf-8", "text", "label", name=path.name)
    return open_reader


def _read_all(ahead: ReadAhead, paths, clean) -> tuple[list, list]:
    """What preprocess's document stream does: spooled records first, then each file on
    from where the helper stopped. Returns the records and where each one came from."""
    got, where = [], []
    for index, (path, fmt) in enumerate(paths):
        for batch in ahead.batches(index):
            for record in ahead.records(batch):
                if isinstance(record, CleanDoc):
                    got.append(("doc", record.clean[0], record.label, record.source))
                    where.append(record.clean[1])
                else:
                    got.append(("reject", record.source, record.reason, record.raw, record.missing_label))
                    where.append("ahead")
        resume = ahead.resume(index)
        if resume == "done":
            continue
        skip, labelled = resume or (0, None)
        for record in _records(Reader(path, fmt, "utf-8", "text", "label", name=path.name, skip_lines=skip,
                                      labelled=labelled)):
            if record[0] == "doc":
                text, source = clean(record[1])[0], record[3]
                record = ("doc", text, record[2], source)
            got.append(record)
            where.append("here")
    return got, where


def _expected(paths, clean) -> list:
    out = []
    for path, fmt in paths:
        for record in _records(Reader(path, fmt, "utf-8", "text", "label", name=path.name)):
            out.append(("doc", clean(record[1])[0], record[2], record[3]) if record[0] == "doc" else record)
    return out


def _big_files(tmp_path: Path) -> list[tuple[Path, str]]:
    txt = tmp_path / "a.txt"
    txt.write_text("".join(f"__label__{'x' if i % 2 else 'y'} Text {i} ＡＢＣ\n" for i in range(2 * BATCH_DOCS + 40)),
                   encoding="utf-8")
    table = tmp_path / "b.csv"
    with open(table, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([f"Row {i}\nSECOND LINE" if i % 5 == 0 else f"Row {i}", "p"] for i in range(BATCH_DOCS + 9))
    return [(txt, "txt"), (table, "csv")]


def lower_marked(text: str) -> tuple[str, int]:
    """A stand-in for DocProcessor.clean_doc that says which process ran it."""
    return text.lower(), os.getpid()


@needs_fork
def test_the_helper_reads_and_cleans_every_file_in_its_own_process(tmp_path):
    paths = _big_files(tmp_path)
    ahead = ReadAhead(_plan_readers(paths), lower_marked, tmp_path / "spool")
    ahead._process.join(timeout=60)  # let it reach the end of the plan (it stops there by itself)
    ahead.stop()
    got, where = _read_all(ahead, paths, lower_marked)
    ahead.close()
    assert [r[:4] for r in got] == [r[:4] for r in _expected(paths, lower_marked)]
    assert "here" not in where and os.getpid() not in where
    assert ahead.resume(0) == ahead.resume(1) == "done"


def _spool(tmp_path: Path, paths, stop_after_first_batch: bool, open_reader=None) -> Path:
    stop = threading.Event()
    if stop_after_first_batch:
        stop.set()
    spool = tmp_path / "spool"
    _helper(open_reader or _plan_readers(paths), lambda t: (t.lower(), "ahead"), str(spool), stop)
    return spool


def _no_fork(monkeypatch) -> None:
    monkeypatch.setattr(read_ahead.mp, "get_all_start_methods", lambda: ["spawn"])


def _take_over(paths, spool: Path) -> tuple[ReadAhead, list]:
    """Read the plan as preprocess does from `spool`; checks the records are one reader's,
    and returns where each came from."""
    ahead = ReadAhead(_plan_readers(paths), None, spool)
    ahead.stop()
    clean = lambda t: (t.lower(), "here")  # noqa: E731
    got, where = _read_all(ahead, paths, clean)
    assert got == _expected(paths, clean)
    return ahead, where


def test_stopped_early_the_main_process_reads_on_from_the_last_whole_batch(tmp_path, monkeypatch):
    _no_fork(monkeypatch)
    paths = _big_files(tmp_path)
    ahead, where = _take_over(paths, _spool(tmp_path, paths, stop_after_first_batch=True))
    assert where == ["ahead"] * BATCH_DOCS + ["here"] * (len(where) - BATCH_DOCS)
    assert ahead.resume(0) == (BATCH_DOCS, True) and ahead.resume(1) is None


def test_a_batch_cut_short_is_not_used(tmp_path, monkeypatch):
    _no_fork(monkeypatch)
    paths = _big_files(tmp_path)
    spool = _spool(tmp_path, paths, stop_after_first_batch=False)
    whole = spool.read_bytes()
    spool.write_bytes(whole[: len(whole) * 2 // 3])  # as if the helper was killed mid-write
    _, where = _take_over(paths, spool)
    assert where[0] == "ahead" and where[-1] == "here"
    assert where == sorted(where)  # every "ahead" before every "here": a prefix was used, no more
    assert where.count("ahead") % BATCH_DOCS == 0


def test_an_error_in_the_helper_leaves_what_it_finished(tmp_path, monkeypatch):
    _no_fork(monkeypatch)
    paths = _big_files(tmp_path)

    def failing(index):
        reader = _plan_readers(paths)(index)
        if reader is None:
            return None
        records = iter(reader)

        def some_then_fail():
            for n, record in enumerate(records):
                if n == BATCH_DOCS + 5:
                    raise OSError("the disk went away")
                yield record

        wrapped = _Wrapped(reader, some_then_fail())
        return wrapped

    _, where = _take_over(paths, _spool(tmp_path, paths, stop_after_first_batch=False, open_reader=failing))
    assert where == ["ahead"] * BATCH_DOCS + ["here"] * (len(where) - BATCH_DOCS)


class _Wrapped:
    """A reader whose records come from `records` (to fail midway), its state from `reader`."""

    def __init__(self, reader: Reader, records):
        self._reader, self._records = reader, records

    def __iter__(self):
        return self._records

    def __getattr__(self, name):
        return getattr(self._reader, name)


def test_without_a_helper_everything_is_read_here(tmp_path, monkeypatch):
    _no_fork(monkeypatch)
    paths = _big_files(tmp_path)
    _, where = _take_over(paths, tmp_path / "spool")
    assert set(where) == {"here"}
    assert not (tmp_path / "spool").exists()


def test_a_reject_is_spooled_as_a_reject(tmp_path, monkeypatch):
    _no_fork(monkeypatch)
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "ok"}\n{broken\n{"text": "fine"}\n', encoding="utf-8")
    spool = _spool(tmp_path, [(path, "jsonl")], stop_after_first_batch=False)
    ahead = ReadAhead(_plan_readers([(path, "jsonl")]), None, spool)
    ahead.stop()
    records = [r for batch in ahead.batches(0) for r in ahead.records(batch)]
    assert [type(r) for r in records] == [CleanDoc, Reject, CleanDoc]
    assert records[1].source == "r.jsonl:2" and records[1].raw == "{broken"
    assert records[2].clean == ("fine", "ahead")


def test_a_csv_whose_header_spans_lines_is_left_to_the_main_process(tmp_path, monkeypatch):
    _no_fork(monkeypatch)
    path = tmp_path / "h.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label\n(pos or neg)"])
        writer.writerows([f"Row {i}", "p"] for i in range(5 * BATCH_DOCS))
    reader = Reader(path, "csv", "utf-8", "text", "label", name="h.csv")
    assert all(reader.resume_line is None for _ in reader)  # nowhere to take over
    reader.close()
    paths = [(path, "csv")]
    _, where = _take_over(paths, _spool(tmp_path, paths, stop_after_first_batch=False))
    assert set(where) == {"here"}  # the helper gave up, holding nothing
