"""Odd but valid input, and input the system will not let us read (issue #17): nothing is
lost, nothing hangs, no traceback. A file, pipe, folder or config that cannot be read is a
one-line error naming it (exit 2, earlier outputs untouched); a bad record inside a
readable file is one reject with its line, and the records around it are kept."""

from __future__ import annotations

import errno
import io
import json
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import assert_fails

GOOD = [f"__label__{'pos' if i % 2 else 'neg'} review number {i} reads fine" for i in range(12)]


@pytest.fixture
def done(ws, helpers, run_cli):
    """A workspace holding one successful run's output, and a snapshot of data/."""
    helpers.write_lines(ws.root / "good.txt", GOOD)
    result = run_cli(["preprocess", "good.txt", "-j", "1", "--lang", "en"], ws.root)
    assert result.exit_code == 0, result.output
    return ws, helpers.snapshot(ws.root / "data")


def fails_untouched(done, helpers, run_cli, args, *names) -> str:
    ws, before = done
    result = run_cli(["preprocess", *args, "-j", "1", "--lang", "en", "--force"], ws.root)
    line = assert_fails(result, *names)
    assert helpers.snapshot(ws.root / "data") == before
    assert not list((ws.root / "data").glob(".processed.staging-*"))
    return line


# -- files the system will not let us read -------------------------------------------
def test_unreadable_folder_inside_an_input_folder_is_an_error_not_skipped(done, helpers, run_cli, monkeypatch):
    # pathlib's rglob passes over a folder it may not list: its files were lost without a word.
    ws, _ = done
    helpers.write_lines(ws.root / "corpus" / "a.txt", GOOD)
    helpers.write_lines(ws.root / "corpus" / "locked" / "b.txt", GOOD)
    real = os.scandir

    def scandir(path="."):
        if not isinstance(path, int) and Path(os.fsdecode(path)).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    line = fails_untouched(done, helpers, run_cli, ["corpus"], "locked", "Permission denied")
    assert "permissions" in line


def test_unreadable_file_inside_an_input_folder(done, helpers, run_cli, monkeypatch):
    # Tests may run as root, whom permissions do not stop: the refusal is simulated.
    from bigmodel_cli.data import readers as textio

    ws, _ = done
    helpers.write_lines(ws.root / "corpus" / "a.txt", GOOD)
    secret = helpers.write_lines(ws.root / "corpus" / "secret.txt", GOOD)

    def refusing_open(path, *args, **kwargs):
        if Path(path).name == "secret.txt":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(textio, "open", refusing_open, raising=False)
    line = fails_untouched(done, helpers, run_cli, ["corpus"], str(Path("corpus") / secret.name), "Permission denied")
    assert "permissions" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_file_with_mode_000_inside_an_input_folder(done, helpers, run_cli):
    ws, _ = done
    helpers.write_lines(ws.root / "corpus" / "a.txt", GOOD)
    secret = helpers.write_lines(ws.root / "corpus" / "secret.txt", GOOD)
    secret.chmod(0)
    try:
        fails_untouched(done, helpers, run_cli, ["corpus"], "secret.txt", "Permission denied")
    finally:
        secret.chmod(0o644)


def _pipe(path: Path, stop: threading.Event) -> threading.Thread:
    """A FIFO at `path` with a writer that feeds any reader a line: were the FIFO read,
    the run would go on (and the test fail) instead of hanging."""
    os.mkfifo(path)

    def feed():
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.02)
                continue
            os.write(fd, b"__label__pos a line from the pipe\n__label__neg another line from the pipe\n")
            os.close(fd)
            time.sleep(0.5)  # the reader sees the end of the file before the next opening

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("inside_folder", [False, True])
def test_named_pipe_is_refused_not_read(done, helpers, run_cli, inside_folder):
    ws, _ = done
    folder = ws.root / "corpus"
    helpers.write_lines(folder / "a.txt", GOOD)
    stop = threading.Event()
    thread = _pipe(folder / "pipe.txt", stop)
    try:
        line = fails_untouched(done, helpers, run_cli, ["corpus" if inside_folder else "corpus/pipe.txt"], "pipe.txt",
                               "named pipe")
    finally:
        stop.set()
        thread.join(5)
    assert "regular file" in line


def test_discover_refuses_devices_and_broken_links(tmp_path):
    from bigmodel_cli.data.readers import discover
    from bigmodel_cli.errors import InputError

    with pytest.raises(InputError, match="character device"):
        discover([Path("/dev/null")], "txt")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    with pytest.raises(InputError, match="broken symbolic link"):
        discover([tmp_path / "c"])


def test_config_with_a_byte_that_is_not_utf8(done, helpers, run_cli):
    ws, _ = done
    text = (ws.root / "bigmodel.toml").read_bytes()
    line_no = text.count(b"\n") + 1
    (ws.root / "bigmodel.toml").write_bytes(text + b"# caf\xe9 au lait\n")
    line = fails_untouched(done, helpers, run_cli, ["good.txt"], f"bigmodel.toml:{line_no}", "not UTF-8")
    assert f"byte {len(text) + 5}" in line


class _FailingStream(io.RawIOBase):
    """A file whose first `good` bytes read, then the disk fails (EIO)."""

    def __init__(self, data: bytes, good: int):
        self.data, self.good, self.pos = data, good, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.pos >= self.good:
            raise OSError(errno.EIO, "Input/output error")
        n = min(len(buffer), self.good - self.pos)
        buffer[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def test_read_error_midway_names_the_file_and_says_io_error(done, helpers, run_cli, monkeypatch):
    from bigmodel_cli.data import readers as textio

    ws, _ = done
    path = helpers.write_lines(ws.root / "disk.txt", GOOD * 50)
    data = path.read_bytes()
    calls = []

    def flaky_open(p):
        calls.append(p)
        # the sample reads fine; the records fail a third of the way in
        stream = io.BufferedReader(_FailingStream(data, len(data) if len(calls) == 1 else len(data) // 3), 64)
        return stream, stream

    monkeypatch.setattr(textio, "open_binary", flaky_open)
    line = fails_untouched(done, helpers, run_cli, ["disk.txt"], "disk.txt", "I/O error", "Input/output error")
    assert "decompress" not in line and "dmesg" in line


# -- odd characters ------------------------------------------------------------------
SURROGATE_LINE = '{"text": "half an emoji \\ud83d here", "label": "pos"}'


def test_lone_surrogate_in_jsonl_is_a_reject_in_preprocess(ws, helpers, run_cli, out):
    lines = [json.dumps({"text": f"review {i} is fine", "label": "ab"[i % 2]}) for i in range(10)]
    lines[3] = SURROGATE_LINE
    lines[7] = '{"text": "an upper-case escape", "label": "\\uDC00"}'
    helpers.write_lines(ws.root / "s.jsonl", lines)
    result = run_cli(["preprocess", "s.jsonl", "-j", "1", "--lang", "en"], ws.root)
    assert result.exit_code == 0, result.output
    reject, label_reject = out.rejects()
    assert reject["source"] == "s.jsonl:4" and "lone surrogate" in reject["reason"]
    assert reject["raw"] == SURROGATE_LINE
    assert label_reject["source"] == "s.jsonl:8" and "field 'label'" in label_reject["reason"]
    assert out.report()["documents"]["kept"] == 8
    assert "half an emoji" not in "".join(out.texts())


def test_json_python_cannot_hold_is_a_reject(ws, helpers, run_cli, out):
    lines = [json.dumps({"text": f"review {i} is fine", "label": "ab"[i % 2]}) for i in range(10)]
    lines[2] = '{"text": "deep", "label": "a", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    lines[5] = '{"text": "big", "label": "b", "n": ' + "9" * 5000 + "}"
    helpers.write_lines(ws.root / "odd.jsonl", lines)
    result = run_cli(["preprocess", "odd.jsonl", "-j", "1", "--lang", "en"], ws.root)
    assert result.exit_code == 0, (result.output, repr(result.exception))
    rejects = out.rejects()
    assert [r["source"] for r in rejects] == ["odd.jsonl:3", "odd.jsonl:6"]
    assert "nested too deeply" in rejects[0]["reason"] and "4300 digits" in rejects[1]["reason"]
    assert out.report()["documents"]["kept"] == 8


def test_lone_surrogate_becomes_a_replacement_character_in_predict(tmp_path):
    from bigmodel_cli.inference.predict import read_items

    path = tmp_path / "in.jsonl"
    path.write_text(SURROGATE_LINE + "\n" + '{"text": "a whole \\ud83d\\ude00 emoji", "label": "neg"}\n', encoding="utf-8")
    items = list(read_items(path, None, "text", "label"))
    assert [i.text for i in items] == ["half an emoji \ufffd here", "a whole \U0001F600 emoji"]
    assert items[0].gold == "pos"
    for item in items:
        item.text.encode("utf-8")  # writable


@pytest.fixture
def clf_ws(ws, save_run):
    """A workspace with a tiny (untrained) English classifier run 'clf'."""
    import torch

    from bigmodel_cli.data.vocab import SPECIAL_TOKENS
    from bigmodel_cli.model.transformer import ModelConfig, Transformer

    words = list(SPECIAL_TOKENS) + ["review", "fine", "emoji", "here", "the"]
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=len(words), layers=1, dim=16, heads=2, ffn=32, max_positions=20,
                                    num_labels=2, labels=["neg", "pos"], lm_head=False))
    save_run(ws, "clf", model.eval(), words)
    return ws


def test_predict_input_with_a_lone_surrogate_and_control_characters(clf_ws, run_cli, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(SURROGATE_LINE + "\n" + json.dumps({"text": "csi \u009b31m and esc \u001b[2J here", "label": "neg"}) + "\n",
                    encoding="utf-8")
    result = run_cli(["predict", "--run", "clf", "--input", path], clf_ws.root)
    assert result.exit_code == 0, (result.output, repr(result.exception))
    assert "\x1b" not in result.stdout and "\x9b" not in result.stdout
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in records] == ["half an emoji \ufffd here", "csi \u009b31m and esc \u001b[2J here"]


def test_predict_cuts_a_huge_document_before_segmenting_it(clf_ws, monkeypatch):
    from bigmodel_cli.data.tokenizer import TextPipeline
    from bigmodel_cli.inference import predict as predict_module

    seen = []
    tokens = TextPipeline.tokens
    monkeypatch.setattr(TextPipeline, "tokens", lambda self, text: seen.append(len(text)) or tokens(self, text))
    predictor = predict_module.Predictor(clf_ws.root / "runs" / "clf")
    short = predictor.probabilities(["review fine " * 10])
    huge = predictor.probabilities(["review fine " * 10 + "x" * 5_000_000])
    assert seen == [120, predict_module.MAX_CHARS]
    assert huge.shape == short.shape


def test_terminal_escapes_in_labels_and_names_are_not_echoed_raw(ws, helpers, run_cli):
    lines = [f"__label__\x1b[31mred review {i} reads fine" if i % 2 else f"__label__\x9b2Jblue review {i} reads fine"
             for i in range(12)] + ["no label on this line"]
    helpers.write_lines(ws.root / "evil\x1b]0;owned\x07.txt", lines)
    result = run_cli(["preprocess", "evil\x1b]0;owned\x07.txt", "-j", "1", "--lang", "en"], ws.root)
    assert result.exit_code == 0, result.output
    for control in ("\x1b", "\x9b", "\x07"):
        assert control not in result.stdout
    assert "\\x1b[31mred" in result.stdout and "\\x9b2Jblue" in result.stdout  # shown, spelled out
    assert "evil\\x1b]0;owned\\x07.txt:13" in result.stdout  # the rejected line, named safely


def test_file_name_that_is_not_utf8(ws, helpers, run_cli, out):
    # A GBK-named file from a Windows archive: Python keeps the bytes as lone surrogates,
    # which no JSON output (records, report, run record) could be written with.
    folder = ws.root / "corpus"
    folder.mkdir()
    with open(os.fsencode(folder) + b"/" + "评论".encode("gbk") + b".txt", "wb") as handle:
        handle.write("\n".join(GOOD).encode())
    result = run_cli(["preprocess", "corpus", "-j", "1", "--lang", "en"], ws.root)
    assert result.exit_code == 0, (result.output, repr(result.exception))
    name = "corpus/" + "".join(f"\\x{b:02x}" for b in "评论".encode("gbk")) + ".txt"
    assert sorted(d["source"] for d in out.docs())[0] == f"{name}:1"
    assert out.report()["files"][0]["path"].endswith(name)


def test_user_dictionary_that_is_not_utf8(done, helpers, run_cli, tmp_path):
    ws, _ = done
    data = "自然语言 10\n".encode() + "处理器 5\n".encode("gbk")
    (ws.root / "terms.txt").write_bytes(data)
    fails_untouched(done, helpers, run_cli, ["good.txt", "--user-dict", "terms.txt"], "terms.txt:2",
                    f"byte {len('自然语言 10'.encode()) + 1}", "not UTF-8")
    assert_fails(run_cli(["segment", "我爱自然语言处理", "--user-dict", ws.root / "terms.txt"], tmp_path),
                    "terms.txt:2", "not UTF-8")


# -- encodings ---------------------------------------------------------------------------
ZH = ["这家酒店的房间很干净，服务也很热情", "质量太差了，再也不买了", "物流很快，包装完好", "味道不错，下次还来"]
TW = ["這家酒店的房間很乾淨，服務也很熱情", "品質太差了，再也不買了", "物流很快，包裝完好", "味道不錯，下次還來"]


@pytest.mark.parametrize("encoding, texts", [("gb18030", ZH), ("gbk", ZH), ("big5", TW)])
def test_chinese_encoding_with_one_bad_line_keeps_the_others(ws, helpers, run_cli, out, encoding, texts):
    lines = [f"{texts[i % 4]}第{i}条".encode(encoding) if encoding != "big5" else f"{texts[i % 4]}第{i}條".encode(encoding)
             for i in range(40)]
    lines[6] = b"\xff\xfe broken \x81"
    data = b"\n".join(lines) + b"\n"
    helpers.write_bytes(ws.root / "zh.txt", data)
    result = run_cli(["preprocess", "zh.txt", "-j", "1", "--lang", "zh"], ws.root)
    assert result.exit_code == 0, result.output
    [reject] = out.rejects()
    offset = data.index(b"\xff")
    assert reject["source"] == "zh.txt:7" and f"byte {offset}" in reject["reason"]
    assert out.report()["documents"]["kept"] == 39
    assert out.report()["files"][0]["encoding"] in (("big5",) if encoding == "big5" else ("gb18030", "gbk"))
    assert texts[0][:5] in "".join(out.texts())


def test_segment_input_reads_encodings_as_preprocess_does(helpers, run_cli, tmp_path):
    path = helpers.write_lines(tmp_path / "gbk.txt", ["我爱自然语言处理", "", "今天天气很好"] * 5, encoding="gbk")
    result = run_cli(["segment", "--input", path, "--lang", "zh"], tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == ["我 / 爱 / 自然语言 / 处理", "今天天气 / 很 / 好"]
    gz = helpers.write_lines(tmp_path / "big5.txt.gz", ["我愛自然語言處理"] * 3, encoding="big5")
    result = run_cli(["segment", "--input", gz, "--lang", "zh"], tmp_path)
    assert result.exit_code == 0, result.output
    assert "語言" in result.stdout


def test_segment_input_line_that_does_not_decode(helpers, run_cli, tmp_path):
    data = "".join(f"第{i}行文字\n" for i in range(20)).encode() + b"bad \xff line\n"
    (tmp_path / "u.txt").write_bytes(data)
    offset = data.index(b"\xff")
    assert_fails(run_cli(["segment", "--input", "u.txt", "--lang", "zh"], tmp_path), "u.txt:21", f"byte {offset}")


# -- CSV quoting ---------------------------------------------------------------------
def _csv(helpers, path, bad_rows: dict[int, str], n: int = 33):
    rows = [f"review number {i} reads fine,{'ab'[i % 2]}" for i in range(n)]
    for at, row in bad_rows.items():
        rows[at] = row
    return helpers.write_lines(path, ["text,label", *rows])


def test_csv_unclosed_quote_does_not_swallow_the_rows_after_it(ws, helpers, run_cli, out):
    _csv(helpers, ws.root / "q.csv", {3: '"an unclosed quote, and on,a'})
    result = run_cli(["preprocess", "q.csv", "-j", "1", "--lang", "en"], ws.root)
    assert result.exit_code == 0, result.output
    [reject] = out.rejects()
    assert reject["source"] == "q.csv:5" and "not closed" in reject["reason"]
    assert reject["raw"] == '"an unclosed quote, and on,a'
    report = out.report()
    assert report["documents"]["kept"] == 32 and report["documents"]["rejected"] == 1
    assert "review number 32 reads fine" in out.texts()


def test_csv_quote_closed_rows_later_rejects_the_row_and_keeps_the_rest(corpus_dir, helpers, run_pre, out):
    # The stray quote on line 5 is "closed" by the quote on line 9: csv reads lines 5-9 as
    # one row of the wrong width. That row is rejected; lines 6-9 are read again.
    _csv(helpers, corpus_dir / "q.csv", {3: '"a stray quote,a', 7: '"quoted, fine",b'})
    report = run_pre([corpus_dir / "q.csv"], lang="en").report
    [reject] = out.rejects()
    assert reject["source"].endswith("/q.csv:5") and "over lines 5-9" in reject["reason"]
    assert report["documents"]["kept"] == 32
    assert "quoted, fine" in out.texts()


def test_csv_quote_open_for_too_many_lines_is_cut_and_reread(corpus_dir, helpers, run_pre, out, monkeypatch):
    from bigmodel_cli.data import readers as textio

    monkeypatch.setattr(textio, "MAX_ROW_LINES", 5)
    _csv(helpers, corpus_dir / "q.csv", {3: '"never closed,a', 20: '"closed much later",b'})
    report = run_pre([corpus_dir / "q.csv"], lang="en").report
    [reject] = out.rejects()
    assert reject["source"].endswith("/q.csv:5") and "within 5 lines" in reject["reason"]
    assert report["documents"]["kept"] == 32


def test_csv_cell_longer_than_csvs_default_limit_is_judged_by_max_chars(corpus_dir, helpers, run_pre):
    long = "a long review " * 12_000  # 168,000 characters: csv's default limit is 131,072
    path = helpers.write_table(corpus_dir / "long.csv", ["text", "label"], [["short one", "a"], [long, "b"], ["two", "a"]])
    documents = run_pre([path], lang="en").report["documents"]
    assert documents["rejected"] == 0 and documents["dropped"] == {"longer than --max-chars": 1}
    assert run_pre([path], lang="en", max_chars=0).report["documents"]["kept"] == 3


def test_csv_multiline_field_still_one_record(corpus_dir, helpers, run_pre, out):
    (corpus_dir / "m.csv").write_text('text,label\n"line one\nline two",a\nplain row,b\n', encoding="utf-8")
    report = run_pre([corpus_dir / "m.csv"], lang="en", min_count=1).report
    assert report["documents"]["kept"] == 2 and report["documents"]["rejected"] == 0
    assert sorted(d["source"].rsplit("/", 1)[1] for d in out.docs()) == ["m.csv:2", "m.csv:4"]


@pytest.mark.slow
def test_csv_resync_gives_the_same_output_with_two_workers(corpus_dir, helpers, run_pre, out, monkeypatch):
    from bigmodel_cli.data import read_ahead

    monkeypatch.setattr(read_ahead, "MAX_SPOOL_BYTES", 1)  # the helper stops after one batch
    _csv(helpers, corpus_dir / "q.csv", {100: '"unclosed,a', 600: '"another unclosed,b'}, n=900)
    names = ["train.parquet", "dev.parquet", "test.parquet", "rejects.jsonl"]
    run_pre([corpus_dir / "q.csv"], lang="en", workers=1)
    expected = {n: (out.dir / n).read_bytes() for n in names}
    report = run_pre([corpus_dir / "q.csv"], lang="en", workers=2).report
    assert report["workers"] == 2 and report["documents"]["rejected"] == 2 and report["documents"]["kept"] == 898
    assert {n: (out.dir / n).read_bytes() for n in names} == expected


# -- counting ------------------------------------------------------------------------
def _assert_adds_up(documents: dict) -> None:
    assert documents["kept"] + sum(documents["dropped"].values()) + documents["rejected"] == documents["read"]


def test_blank_lines_are_read_and_dropped_as_blank(corpus_dir, helpers, run_pre, out):
    lines = [f"review number {i} reads fine" for i in range(15)]
    lines[4:4] = [""]
    lines[10:10] = ["   "]
    path = helpers.write_lines(corpus_dir / "b.txt", lines)
    assert len(path.read_text().splitlines()) == 17
    documents = run_pre([path], lang="en").report["documents"]
    assert documents["read"] == 17 and documents["kept"] == 15 and documents["dropped"] == {"blank": 2}
    _assert_adds_up(documents)


def test_blank_lines_in_jsonl_and_csv_and_labelled_txt(corpus_dir, helpers, run_pre):
    helpers.write_lines(corpus_dir / "j.jsonl", [json.dumps({"text": f"doc {i} here", "label": "ab"[i % 2]})
                                                 for i in range(6)] + ["", "{oops"])
    helpers.write_lines(corpus_dir / "c.csv", ["text,label", "csv doc one,a", "", ",", "csv doc two,b"])
    helpers.write_lines(corpus_dir / "f.txt", ["__label__a fast one", "", "__label__b fast two"])
    documents = run_pre([corpus_dir], lang="en").report["documents"]
    assert documents["dropped"]["blank"] == 4 and documents["rejected"] == 1 and documents["kept"] == 10
    assert documents["read"] == 15
    _assert_adds_up(documents)


def test_documents_over_max_chars_dropped_by_default(corpus_dir, helpers, run_pre, out):
    from bigmodel_cli.workspace.config import PreprocessConfig

    assert PreprocessConfig().max_chars == 100_000
    path = helpers.write_lines(corpus_dir / "long.txt", ["a short review here", "word " * 30_000, "another short one"])
    documents = run_pre([path], lang="en").report["documents"]
    assert documents["kept"] == 2 and documents["dropped"] == {"longer than --max-chars": 1}
    assert run_pre([path], lang="en", max_chars=0).report["documents"]["kept"] == 3


def test_a_huge_line_is_dropped_without_a_list_of_its_words():
    # Collapsing the spaces of a line of two million words made two million strings
    # (about 12 bytes of memory per character of the line) only to drop it as too long.
    import tracemalloc

    from bigmodel_cli.data.cleaning import CleanOptions
    from bigmodel_cli.data.preprocess import DocProcessor
    from bigmodel_cli.data.segment import SegmentOptions

    text = "word " * 2_000_000
    processor = DocProcessor(CleanOptions(), SegmentOptions(lang="en"), 1, 100_000)
    tracemalloc.start()
    try:
        assert processor.clean_doc(text) == (None, "longer than --max-chars")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(text)


def test_max_chars_from_config_and_command_line(ws, helpers, run_cli, out):
    helpers.write_lines(ws.root / "c.txt", ["a short review here", "a much longer review " * 5, "another short one"])
    config = ws.root / "bigmodel.toml"
    config.write_text(config.read_text().replace("max_chars = 100000", "max_chars = 50"))
    result = run_cli(["preprocess", "c.txt", "-j", "1", "--lang", "en"], ws.root)
    assert result.exit_code == 0, result.output
    assert out.report()["documents"]["dropped"] == {"longer than --max-chars": 1}
    result = run_cli(["preprocess", "c.txt", "-j", "1", "--lang", "en", "--max-chars", "0"], ws.root)
    assert result.exit_code == 0, result.output
    assert out.report()["documents"]["kept"] == 3


# -- options -------------------------------------------------------------------------
def test_lowercase_reaches_abbreviations_and_contractions(corpus_dir, helpers, run_pre, out):
    path = helpers.write_lines(corpus_dir / "en.txt", ["Dr. Smith DON'T like the U.S. at all, see www.Example.com"])
    run_pre([path], lang="en", lowercase=True)
    [doc] = out.docs()
    assert doc["tokens"] == ["dr.", "smith", "do", "n't", "like", "the", "u.s.", "at", "all", ",", "see", "[URL]"]
    run_pre([path], lang="en", lowercase=True, stem=True)
    assert "u.s." in out.docs()[0]["tokens"] and "dr." in out.docs()[0]["tokens"]


def test_worker_count_capped_at_twice_the_cores_and_the_chunks(monkeypatch):
    from bigmodel_cli.data import preprocess

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert preprocess.worker_count(0, None) == (3, None)
    assert preprocess.worker_count(6, None) == (6, None)
    workers, warning = preprocess.worker_count(500, None)
    assert workers == 6 and "--workers 500" in warning and "3 cores" in warning
    assert preprocess.worker_count(500, 2)[0] == 2
    assert preprocess.worker_count(3, 1) == (1, None)


def test_many_workers_on_a_small_input_start_one_with_a_warning(ws, helpers, run_cli, out):
    helpers.write_lines(ws.root / "c.txt", GOOD)
    result = run_cli(["preprocess", "c.txt", "-j", "500", "--lang", "en"], ws.root)
    assert result.exit_code == 0, result.output
    assert out.report()["workers"] == 1
    warnings = [line for line in result.stdout.splitlines() if "--workers 500" in line]
    assert len(warnings) == 1 and "cores" in warnings[0]
