"""Bad input to `bigmodel preprocess` (issue #2): a one-line error naming the file (and
line, field or byte offset where there is one) and what to do, exit code 2, no traceback,
and the previous output untouched; a few bad records are skipped into rejects.jsonl, or
fail the run under --strict."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import assert_fails

from bigmodel_cli.data.store import count_records

GOOD = ["__label__pos the screen is bright and sharp", "__label__neg the battery died after a day",
        "__label__pos fast delivery and well packed", "__label__neg stopped working in a week",
        "__label__pos great value for the money", "__label__neg the case cracked on day one"]


@pytest.fixture
def done(ws, helpers, run_cli):
    """A workspace holding the output of one successful run, and a snapshot of data/."""
    helpers.write_lines(ws.root / "good.txt", GOOD)
    result = run_cli(["preprocess", "good.txt", "-j", "1", "--lang", "en"], ws.root)
    assert result.exit_code == 0, result.output
    assert count_records(ws.processed / "train.parquet") > 0
    return ws, helpers.snapshot(ws.root / "data")


def assert_untouched(ws, helpers, before) -> None:
    assert helpers.snapshot(ws.root / "data") == before
    assert not list((ws.root / "data").glob(".processed.staging-*"))


def fail_run(done, helpers, run_cli, args, *names):
    ws, before = done
    result = run_cli(["preprocess", *args, "-j", "1", "--lang", "en"], ws.root)
    line = assert_fails(result, *names)
    assert_untouched(ws, helpers, before)
    return line


# -- whole-file problems ------------------------------------------------------------
def test_missing_path(done, helpers, run_cli):
    line = fail_run(done, helpers, run_cli, ["nowhere.txt"], "nowhere.txt")
    assert "no such file" in line


def test_folder_with_no_readable_files(done, helpers, run_cli):
    ws, _ = done
    folder = ws.root / "scans"
    helpers.write_bytes(folder / "page1.png", b"\x89PNG\r\n\x1a\n\x00\x00")
    helpers.write_bytes(folder / "notes.docx", b"PK\x03\x04")
    helpers.write_lines(folder / ".hidden.txt", ["hidden files are not read"])
    line = fail_run(done, helpers, run_cli, ["scans"], "scans", "no readable files")
    assert ".txt" in line  # says what to put there


def test_empty_folder(done, helpers, run_cli):
    (done[0].root / "empty_dir").mkdir()
    fail_run(done, helpers, run_cli, ["empty_dir"], "empty_dir", "no readable files")


def test_empty_file(done, helpers, run_cli):
    helpers.write_bytes(done[0].root / "empty.txt", b"")
    fail_run(done, helpers, run_cli, ["empty.txt"], "empty.txt", "empty")


def test_empty_compressed_file(done, helpers, run_cli):
    helpers.write_bytes(done[0].root / "empty.jsonl.gz", b"")
    fail_run(done, helpers, run_cli, ["empty.jsonl.gz"], "empty.jsonl.gz", "empty")


def test_binary_file(done, helpers, run_cli):
    helpers.write_bytes(done[0].root / "image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
    line = fail_run(done, helpers, run_cli, ["image.txt"], "image.txt", "binary", "byte 8")
    assert "--encoding" in line  # the way out if it is UTF-16 without a BOM


def test_corrupt_compressed_file(done, helpers, run_cli):
    data = gzip.compress(b"text\n" * 1000)
    (done[0].root / "cut.txt.gz").write_bytes(data[: len(data) // 2])  # as is, not compressed again
    fail_run(done, helpers, run_cli, ["cut.txt.gz"], "cut.txt.gz", "decompress")


def test_undecodable_bytes(done, helpers, run_cli):
    helpers.write_lines(done[0].root / "latin.txt", ["café crème brûlée", "naïve façade"], encoding="latin-1")
    line = fail_run(done, helpers, run_cli, ["latin.txt"], "latin.txt", "byte 3")
    assert "UTF-8" in line and "--encoding" in line


def test_unsupported_file_type(done, helpers, run_cli):
    helpers.write_lines(done[0].root / "notes.md", ["# a markdown file"])
    line = fail_run(done, helpers, run_cli, ["notes.md"], "notes.md", "unsupported")
    assert "--format" in line


def test_unknown_encoding_option(done, helpers, run_cli):
    fail_run(done, helpers, run_cli, ["good.txt", "--encoding", "klingon", "--force"], "klingon")


# -- records: JSONL, CSV, labels ----------------------------------------------------
def test_jsonl_lines_not_json(done, helpers, run_cli):
    helpers.write_lines(done[0].root / "broken.jsonl", ["this is not json", "{'single': 'quotes'}"])
    line = fail_run(done, helpers, run_cli, ["broken.jsonl"], "broken.jsonl:1", "not valid JSON")
    assert "every record" in line


def test_jsonl_without_text_field(done, helpers, run_cli):
    helpers.write_jsonl(done[0].root / "reviews.jsonl", [{"review": "good", "stars": 5}, {"review": "bad", "stars": 1}])
    line = fail_run(done, helpers, run_cli, ["reviews.jsonl"], "reviews.jsonl:1", "'text'", "review, stars")
    assert "--text-field" in line


def test_jsonl_named_text_field_missing(done, helpers, run_cli):
    helpers.write_jsonl(done[0].root / "r.jsonl", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}])
    fail_run(done, helpers, run_cli, ["r.jsonl", "--text-field", "body"], "r.jsonl:1", "'body'", "text, label")


@pytest.mark.parametrize("name", ["reviews.csv", "reviews.tsv"])
def test_table_without_the_named_column(done, helpers, run_cli, name):
    helpers.write_table(done[0].root / name, ["id", "review", "stars"], [[1, "good", 5], [2, "bad", 1]])
    line = fail_run(done, helpers, run_cli, [name], f"{name}:1", "no column 'text'")
    assert "id, review, stars" in line and "--text-field" in line


def test_csv_without_the_named_label_column(done, helpers, run_cli):
    helpers.write_table(done[0].root / "reviews.csv", ["text", "rating"], [["good", 5], ["bad", 1]])
    line = fail_run(done, helpers, run_cli, ["reviews.csv", "--label-field", "stars"], "reviews.csv:1", "'stars'")
    assert "text, rating" in line


def test_bad_file_after_good_ones_leaves_no_partial_output(done, helpers, run_cli):
    ws, _ = done
    helpers.write_lines(ws.root / "batch" / "a.txt", [f"a good document number {i}" for i in range(300)])
    helpers.write_table(ws.root / "batch" / "b.csv", ["review"], [["text in the wrong column"]])
    fail_run(done, helpers, run_cli, ["batch"], "b.csv:1", "no column 'text'", "review")


def test_labels_in_only_some_jsonl_records(done, helpers, run_cli):
    records = [{"text": f"review {i} text", "label": "pos"} if i % 2 else {"text": f"review {i} text"} for i in range(10)]
    helpers.write_jsonl(done[0].root / "half.jsonl", records)
    # The first record has no label: the labels of the others must not be dropped silently.
    line = fail_run(done, helpers, run_cli, ["half.jsonl"], "half.jsonl:1", "labels in only some records")
    assert "5 of 10" in line


def test_labels_in_only_some_fasttext_lines(done, helpers, run_cli):
    lines = ["plain line one", "plain line two"] + [f"__label__pos labelled line {i}" for i in range(6)]
    helpers.write_lines(done[0].root / "ft.txt", lines)
    fail_run(done, helpers, run_cli, ["ft.txt"], "ft.txt:1", "labels in only some records", "2 of 8")


def test_labels_in_only_some_csv_rows(done, helpers, run_cli):
    helpers.write_table(done[0].root / "l.csv", ["text", "label"],
                        [["good one", "pos"], ["no label", ""], ["bad one", "neg"], ["none here", ""]])
    fail_run(done, helpers, run_cli, ["l.csv"], "l.csv:3", "labels in only some records")


def test_labelled_and_unlabelled_files_mixed(done, helpers, run_cli):
    ws, _ = done
    helpers.write_jsonl(ws.root / "mix" / "a.jsonl", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}])
    helpers.write_lines(ws.root / "mix" / "b.txt", ["no label here", "nor here"])
    fail_run(done, helpers, run_cli, ["mix"], "b.txt:1", "labels in only some records")


def test_labelled_train_with_unlabelled_dev(done, helpers, run_cli):
    ws, _ = done
    helpers.write_lines(ws.root / "t.txt", GOOD)
    helpers.write_lines(ws.root / "d.txt", ["an unlabelled dev document"])
    fail_run(done, helpers, run_cli, ["--train", "t.txt", "--dev", "d.txt"], "d.txt:1", "labels in only some records")


# -- a few bad records: skip (default) or --strict ---------------------------------
def _few_bad_jsonl(path, helpers):
    records = [json.dumps({"text": f"review number {i} is fine", "label": "ab"[i % 2]}) for i in range(20)]
    records[4] = '{"text": "unterminated'
    records[9] = json.dumps({"body": "no text field", "label": "a"})
    return helpers.write_lines(path, records)


def test_few_bad_jsonl_lines_skipped_into_rejects(ws, helpers, run_cli, out):
    _few_bad_jsonl(ws.root / "few.jsonl", helpers)
    result = run_cli(["preprocess", "few.jsonl", "-j", "1", "--lang", "en"], ws.root)
    assert result.exit_code == 0, result.output
    rejects = out.rejects()
    assert [r["source"] for r in rejects] == ["few.jsonl:5", "few.jsonl:10"]
    assert "not valid JSON" in rejects[0]["reason"]
    assert rejects[0]["raw"] == '{"text": "unterminated'  # nothing is lost
    assert "no field 'text'" in rejects[1]["reason"]
    report = out.report()
    assert report["documents"]["rejected"] == 2 and report["documents"]["kept"] == 18
    assert report["documents"]["read"] == 20
    assert report["rejects"]["count"] == 2
    assert report["rejects"]["first"][0].startswith("few.jsonl:5: not valid JSON")
    assert "few.jsonl:5" in result.stdout and "few.jsonl:10" in result.stdout
    assert "2 bad records" in result.stdout


@pytest.mark.parametrize("flag", [["--strict"], ["--on-error", "fail"]])
def test_few_bad_jsonl_lines_fail_when_strict(done, helpers, run_cli, flag):
    _few_bad_jsonl(done[0].root / "few.jsonl", helpers)
    line = fail_run(done, helpers, run_cli, ["few.jsonl", *flag], "few.jsonl:5", "not valid JSON")
    assert "--strict" in line


def test_few_lines_with_bad_bytes_skipped_with_offset(ws, helpers, run_cli, out):
    good = [f"line {i} is plain UTF-8 text, 中文也可以" for i in range(19)]
    data = "".join(line + "\n" for line in good[:7]).encode() + b"corrupt \xff\xfe byte\n" + \
        "".join(line + "\n" for line in good[7:]).encode()
    helpers.write_bytes(ws.root / "bytes.txt", data)
    offset = data.index(b"\xff")
    result = run_cli(["preprocess", "bytes.txt", "-j", "1"], ws.root)
    assert result.exit_code == 0, result.output
    [reject] = out.rejects()
    assert reject["source"] == "bytes.txt:8"
    assert f"byte {offset}" in reject["reason"]
    assert out.report()["documents"]["kept"] == 19

    before = helpers.snapshot(ws.root / "data")
    result = run_cli(["preprocess", "bytes.txt", "-j", "1", "--strict", "--force"], ws.root)
    assert_fails(result, "bytes.txt:8", f"byte {offset}")
    assert_untouched(ws, helpers, before)


def test_few_missing_labels_skipped(ws, helpers, run_cli, out):
    lines = [f"__label__{'ab'[i % 2]} labelled line {i}" for i in range(19)] + ["a line without its label"]
    helpers.write_lines(ws.root / "ft.txt", lines)
    result = run_cli(["preprocess", "ft.txt", "-j", "1", "--lang", "en"], ws.root)
    assert result.exit_code == 0, result.output
    [reject] = out.rejects()
    assert reject["source"] == "ft.txt:20" and "__label__" in reject["reason"]
    assert reject["raw"] == "a line without its label"


def test_record_without_text_field_fails_when_strict(done, helpers, run_cli):
    records = [{"text": "first review"}, {"text": "second review"}, {"body": "third review"}, {"text": "fourth"}]
    helpers.write_jsonl(done[0].root / "r.jsonl", records)
    fail_run(done, helpers, run_cli, ["r.jsonl", "--strict"], "r.jsonl:3", "no field 'text'", "body")


def test_missing_label_fails_when_strict(done, helpers, run_cli):
    lines = [f"__label__{'ab'[i % 2]} labelled line {i}" for i in range(19)] + ["a line without its label"]
    helpers.write_lines(done[0].root / "ft.txt", lines)
    fail_run(done, helpers, run_cli, ["ft.txt", "--strict"], "ft.txt:20", "__label__")


def test_every_record_rejected_is_an_error(done, helpers, run_cli):
    helpers.write_lines(done[0].root / "arrays.jsonl", ["[1, 2]", "[3, 4]"])
    fail_run(done, helpers, run_cli, ["arrays.jsonl"], "arrays.jsonl:1", "every record was rejected")


# -- options and workspace --------------------------------------------------------
def test_outside_any_workspace(tmp_path, helpers, run_cli):
    helpers.write_lines(tmp_path / "c.txt", ["some text"])
    result = run_cli(["preprocess", "c.txt"], tmp_path)
    line = assert_fails(result, "no bigmodel workspace", "bigmodel init")
    assert str(tmp_path.resolve()) in line
    assert not (tmp_path / "data").exists()


def test_workspace_option_not_a_workspace(tmp_path, helpers, run_cli):
    (tmp_path / "plain").mkdir()
    result = run_cli(["preprocess", "-w", "plain", "c.txt"], tmp_path)
    assert_fails(result, "plain", "not a bigmodel workspace")


@pytest.mark.parametrize("args, words", [
    (["--split", "0.9,0.2,0.1"], ["--split", "0.9,0.2,0.1"]),
    (["--urls", "hide"], ["--urls", "hide"]),
    (["--min-chars", "10", "--max-chars", "5"], ["--max-chars"]),
    (["--user-dict", "missing_dict.txt"], ["missing_dict.txt"]),
    (["--stopwords", "missing_stop.txt"], ["missing_stop.txt"]),
])
def test_bad_options(done, helpers, run_cli, args, words):
    fail_run(done, helpers, run_cli, ["good.txt", "--force", *args], *words)


def test_dev_without_train(done, helpers, run_cli):
    fail_run(done, helpers, run_cli, ["--dev", "good.txt"], "--train")


def test_no_documents_kept(done, helpers, run_cli):
    helpers.write_lines(done[0].root / "tags.txt", ["<br>", "<p></p>"])
    fail_run(done, helpers, run_cli, ["tags.txt"], "tags.txt", "no documents kept", "empty after cleaning")
