"""The processed store (data/store.py): Parquet splits written from preprocess's JSON lines,
read back record by record; legacy .jsonl splits still read; damaged files are one-line errors."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from bigmodel_cli.data import store
from bigmodel_cli.data.store_process import QUEUED_BLOBS, SplitWriters
from bigmodel_cli.errors import InputError


def lines(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def record(i: int, text: str, label: str | None = "pos") -> dict:
    r = {"id": i, "text": text, "tokens": text.split() or [text], "lang": "zh", "source": f"in.jsonl:{i + 1}"}
    if label is not None:
        r["label"] = label
    return r


ODD = ['he said "hi"', "back\\slash \\n not a newline", "emoji 😀👍🏽 and 中文", "ｆｕｌｌ－ｗｉｄｔｈ　ＡＢＣ",
       "x" * 100_000, "tab\tand control-free", "{\"json\": [1, 2]}"]


def write(path, blobs: list[bytes]):
    writer = store.StoreWriter(path)
    for blob in blobs:
        writer.write(blob)
    writer.close()
    return path


def test_round_trip_keeps_odd_text_and_unlabelled_rows(tmp_path):
    records = [record(i, text, label=None if i % 3 == 1 else f"l{i % 2}") for i, text in enumerate(ODD)]
    path = write(tmp_path / "train.parquet", [lines(records[:3]), lines(records[3:])])
    read = list(store.read_records(path))
    expected = [{**r, "label": r.get("label")} for r in records]
    assert read == expected
    assert read[1]["label"] is None and read[4]["text"] == "x" * 100_000
    assert store.count_records(path) == len(records)
    assert pq.read_schema(path).equals(store.SCHEMA)
    assert list(store.read_records(path, columns=["tokens"]))[0] == {"tokens": records[0]["tokens"]}


def test_a_long_document_in_a_large_blob_is_parsed(tmp_path):
    records = [record(i, "字" * 50_000 + f" {i}") for i in range(40)]  # 6 MB of JSON in one write
    path = write(tmp_path / "train.parquet", [lines(records)])
    assert [r["text"] for r in store.read_records(path)] == [r["text"] for r in records]


def test_fixed_row_groups_give_the_same_bytes_whatever_the_chunking(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "ROW_GROUP", 64)
    records = [record(i, f"document {i} " + "词 " * (i % 7), label=None if i % 5 == 0 else str(i % 3)) for i in range(300)]
    one = write(tmp_path / "one.parquet", [lines(records)])
    many = write(tmp_path / "many.parquet", [lines(records[:5]), *[lines(records[i:i + 23]) for i in range(5, 300, 23)]])
    single = write(tmp_path / "single.parquet", [lines([r]) for r in records])
    assert one.read_bytes() == many.read_bytes() == single.read_bytes()
    meta = pq.ParquetFile(one).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [64, 64, 64, 64, 44]
    assert meta.row_group(0).column(1).compression == "ZSTD"


def test_the_writer_process_writes_the_same_bytes_as_the_writer_in_process(tmp_path):
    records = [record(i, text) for i, text in enumerate(ODD * 30)]
    blobs = [lines(records[i:i + 17]) for i in range(0, len(records), 17)]
    here = write(tmp_path / "here.parquet", blobs)
    (tmp_path / "process").mkdir()
    writers = SplitWriters(tmp_path / "process", ["train", "dev"])
    for blob in blobs:
        writers.files["train"].write(blob)
    writers.files["dev"].write(lines(records[:3]))
    writers.close()
    assert (tmp_path / "process" / "train.parquet").read_bytes() == here.read_bytes()
    assert [r["text"] for r in store.read_records(tmp_path / "process" / "dev.parquet")] == ODD[:3]
    assert writers.process.returncode == 0


def test_splits_never_written_are_empty_files_and_start_no_process(tmp_path):
    writers = SplitWriters(tmp_path, ["train", "dev", "test"])
    writers.close()
    assert writers.process is None
    assert [store.count_records(tmp_path / f"{s}.parquet") for s in ("train", "dev", "test")] == [0, 0, 0]


def test_a_blob_the_writer_process_cannot_parse_fails_the_caller_and_never_hangs(tmp_path):
    # The error must come back to the caller (at a later write or at close), even with more
    # writes than the queue and the pipe hold.
    writers = SplitWriters(tmp_path, ["train"])
    writers.files["train"].write(b"this is not JSON\n")
    with pytest.raises(RuntimeError, match="JSON parse error"):
        for i in range(QUEUED_BLOBS * 20):
            writers.files["train"].write(lines([record(i, "doc " * 2000)]))
        writers.close()
    writers.close()  # closed once: a second close does nothing
    assert writers.process.returncode == 1 and not writers.feeder.is_alive()


def test_an_os_error_in_the_writer_process_is_raised_as_that_os_error(tmp_path):
    writers = SplitWriters(tmp_path / "no such folder", ["train"])
    writers.files["train"].write(lines([record(0, "a b")]))
    with pytest.raises(FileNotFoundError):
        writers.close()


def test_abort_ends_the_writer_process_at_once(tmp_path):
    writers = SplitWriters(tmp_path, ["train"])
    for i in range(50):
        writers.files["train"].write(lines([record(i, "a b")]))
    writers.abort()
    assert writers.process.poll() is not None and not writers.feeder.is_alive()
    writers.close()  # nothing more to do
    with pytest.raises(ValueError):
        writers.files["train"].write(lines([record(0, "a b")]))


def test_an_empty_split_is_a_valid_file_with_the_schema(tmp_path):
    path = write(tmp_path / "test.parquet", [])
    assert list(store.read_records(path)) == []
    assert store.count_records(path) == 0 and not store.has_records(path)
    assert pq.read_schema(path).equals(store.SCHEMA)


def test_split_file_prefers_parquet_then_a_legacy_jsonl(tmp_path):
    assert store.split_file(tmp_path, "train") is None
    legacy = tmp_path / "train.jsonl"
    legacy.write_text(json.dumps(record(0, "old")) + "\n\n" + json.dumps(record(1, "older", None)) + "\n", encoding="utf-8")
    assert store.split_file(tmp_path, "train") == legacy
    assert [r["text"] for r in store.read_records(legacy)] == ["old", "older"]
    assert store.count_records(legacy) == 2 and store.has_records(legacy)
    assert list(store.read_records(legacy, columns=["label"])) == [{"label": "pos"}, {"label": None}]
    write(tmp_path / "train.parquet", [lines([record(0, "new")])])
    assert store.split_file(tmp_path, "train") == tmp_path / "train.parquet"


@pytest.mark.parametrize("content", [b"", b"PAR1 not really", b"{\"id\": 1}\n"])
def test_a_damaged_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "train.parquet"
    path.write_bytes(content)
    for read in (lambda: list(store.read_records(path)), lambda: store.count_records(path)):
        with pytest.raises(InputError) as caught:
            read()
        message = caught.value.one_line()
        assert "\n" not in message and str(path) in message and "preprocess --force" in message


def test_a_cut_parquet_file_is_a_one_line_error(tmp_path):
    path = write(tmp_path / "train.parquet", [lines([record(i, f"text {i}") for i in range(100)])])
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(InputError, match="train.parquet: not a processed split"):
        list(store.read_records(path))


def test_a_missing_file_and_a_bad_legacy_line_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="missing"):
        list(store.read_records(tmp_path / "dev.parquet"))
    legacy = tmp_path / "dev.jsonl"
    legacy.write_text(json.dumps(record(0, "fine")) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"dev.jsonl:2: not a processed record"):
        list(store.read_records(legacy))


def test_the_readers_of_the_stages_turn_a_damaged_split_into_a_one_line_error(tmp_path):
    from bigmodel_cli.data.tokenizer import WordEncoder
    from bigmodel_cli.data.vocab import Vocab
    from bigmodel_cli.embeddings.embed import read_corpus
    from bigmodel_cli.training.classify_data import read_split
    from bigmodel_cli.training.lm_data import encode_blocks

    path = write(tmp_path / "train.parquet", [lines([record(i, f"text {i}") for i in range(10)])])
    path.write_bytes(path.read_bytes()[:-30])
    encoder = WordEncoder(vocab=Vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "text"], [0] * 6))
    for read in (lambda: read_split(path), lambda: encode_blocks(path, encoder, 8),
                 lambda: read_corpus(path, set(), None, seed=1)):
        with pytest.raises(InputError, match=r"train.parquet: not a processed split .*preprocess --force"):
            read()


def test_the_writer_process_ignores_modules_in_the_current_folder(tmp_path, monkeypatch):
    here = tmp_path / "cwd"
    here.mkdir()
    for name in ("json", "pyarrow", "bigmodel_cli"):
        (here / f"{name}.py").write_text(f'raise SystemExit("imported {name}.py from the current folder")\n')
    monkeypatch.chdir(here)
    writers = SplitWriters(tmp_path, ["train"])
    writers.files["train"].write(lines([record(0, "a b")]))
    writers.close()
    assert [r["text"] for r in store.read_records(tmp_path / "train.parquet")] == ["a b"]
