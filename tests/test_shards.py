"""`preprocess --shard K/N` and `--merge N` (data/shards.py): the merged dataset is, byte for
byte, what one unsharded run writes; shards run in any order; a missing shard or one made
with other options or inputs is one line, exit 2, and nothing is written to data/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from classify_fixtures import reviews
from conftest import assert_fails, dead_pid, snapshot, write_jsonl, write_lines

from bigmodel_cli.data import shards
from bigmodel_cli.data.parallel import OrderedWorkers
from bigmodel_cli.data.preprocess import prepare, preprocess
from bigmodel_cli.data.shards import check_shards, merge_shards, parse_shard, run_shard
from bigmodel_cli.data.store import count_records
from bigmodel_cli.errors import UserError
from bigmodel_cli.workspace.config import PreprocessConfig

# Timings, and the fields that say how the work was spread: all else in report.json is equal.
HOW_RUN = ("seconds", "throughput", "workers", "shards")
ENGLISH = ["The delivery was fast and the box was intact.", "Terrible service, never again!",
           "Great value for the price.", "The screen cracked after two days."]


def labelled_records() -> list[dict]:
    records = [{"text": t, "label": label} for t, label in reviews(60)]
    records += [{"text": t, "label": "pos" if i % 2 else "neg"} for i, t in enumerate(ENGLISH)]
    records += records[5:25]  # exact duplicates, spread over every shard
    records.append({"text": records[30]["text"], "label": "other"})  # a duplicate with another label
    records.append({"text": "   ", "label": "pos"})  # blank after cleaning
    return records


@pytest.fixture
def labelled(tmp_path) -> Path:
    path = write_jsonl(tmp_path / "reviews.jsonl", labelled_records())
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("{not json\n")  # a reject
    return path


def outputs(ws, name: str = "processed") -> dict[str, bytes]:
    folder = ws.root / "data" / name
    files = snapshot(folder)
    report = json.loads(files.pop("report.json"))
    for key in HOW_RUN:
        report.pop(key, None)
    report.get("tokenizer", {}).pop("seconds", None)
    return {**files, "report.json": json.dumps(report, sort_keys=True).encode()}


def sharded(ws, inputs, n: int, order, dataset=None, **options):
    """Run the shards in `order`, then the merge (forced: the unsharded run left a record)."""
    lang = options.pop("lang", "zh")
    job = prepare(ws, inputs, config=PreprocessConfig(**options), lang=lang, dataset=dataset)
    for k in order:
        run_shard(ws, job, k, n)
    return merge_shards(ws, job, n, force=True)


def test_three_shards_merged_equal_one_unsharded_run(make_ws, labelled):
    ws = make_ws("zh")
    options = dict(workers=1, min_count=1)
    preprocess(ws, [labelled], config=PreprocessConfig(**options), lang="zh", force=True)
    expected = outputs(ws)
    assert {"train.parquet", "dev.parquet", "test.parquet", "vocab.txt", "stopwords.txt", "rejects.jsonl", "meta.json"} <= set(expected)
    report = json.loads(expected["report.json"])
    assert report["duplicates"] == 21 and report["label_conflicts"]["count"] == 1 and report["documents"]["rejected"] == 1
    assert set(report["labels"]["train"]) == {"neg", "pos"} and report["splits"]["dev"] > 0

    result = sharded(ws, [labelled], 3, [3, 1, 2], **options)
    assert not result.skipped and result.report["shards"] == 3
    assert outputs(ws) == expected
    status = ws.last_record("preprocess")
    assert status["run_id"] == result.record["run_id"]  # the merge is the stage's record


def test_shards_in_another_order_with_workers_and_a_skip(make_ws, labelled, monkeypatch):
    ws = make_ws("zh")
    preprocess(ws, [labelled], config=PreprocessConfig(workers=1, min_count=1), lang="zh", force=True)
    expected = outputs(ws)
    # Chunks of 16 documents: enough of them that each shard forks a worker process.
    monkeypatch.setattr(shards, "CHUNK_DOCS", 16)
    started = []
    monkeypatch.setattr(shards, "OrderedWorkers", lambda work, n, folder: started.append(n) or OrderedWorkers(work, n, folder))
    job = prepare(ws, [labelled], config=PreprocessConfig(workers=2, min_count=1), lang="zh")
    first = [run_shard(ws, job, k, 3) for k in (2, 3, 1)]
    assert all(abs(r.mine - r.documents / 3) < 1 for r in first)  # every third document
    assert sum(r.mine for r in first) == first[0].documents and not any(r.skipped for r in first)
    again = run_shard(ws, job, 2, 3)  # the same part, options and inputs: skipped, the folder untouched
    assert again.skipped and again.folder == first[0].folder
    assert started == [2, 2, 2]
    merge_shards(ws, job, 3, force=True)
    assert outputs(ws) == expected


def test_char_tokenizer_and_a_language_filter_merged(make_ws, tmp_path):
    ws = make_ws("auto")
    lines = [t for t, _ in reviews(40)] + ENGLISH + [t for t, _ in reviews(40)][:10]
    corpus = write_lines(tmp_path / "corpus.txt", lines)
    options = dict(workers=1, tokenizer="char", vocab_size=300, langs="zh")
    preprocess(ws, [corpus], config=PreprocessConfig(**options), lang="auto", force=True, dataset="corpus")
    expected = outputs(ws, "corpus")
    assert "tokenizer.json" in expected
    assert json.loads(expected["report.json"])["language_filter"]["dropped"] == {"en": len(ENGLISH)}
    sharded(ws, [corpus], 4, [4, 2, 1, 3], dataset="corpus", lang="auto", **options)
    merged = outputs(ws, "corpus")
    assert merged == expected  # tokenizer.json and vocab.txt too: training is repeatable


def test_a_merge_of_one_run_skips_when_nothing_changed(make_ws, labelled):
    ws = make_ws("zh")
    job = prepare(ws, [labelled], config=PreprocessConfig(workers=1), lang="zh")
    run_shard(ws, job, 1, 1)
    assert not merge_shards(ws, job, 1).skipped
    assert merge_shards(ws, job, 1).skipped


@pytest.mark.parametrize("text", ["3/2", "0/2", "x", "1/0", "2", "1/2/3", "-1/2"])
def test_a_bad_shard_is_refused(text):
    with pytest.raises(UserError, match="--shard must be K/N"):
        parse_shard(text)


def test_parse_shard():
    assert parse_shard("1/1") == (1, 1) and parse_shard("4/4") == (4, 4) and parse_shard("2/7") == (2, 7)


# -- bad input through the command line -----------------------------------------------------
@pytest.fixture
def cli_ws(make_ws, tmp_path):
    ws = make_ws("zh")
    corpus = write_jsonl(ws.root / "reviews.jsonl", [{"text": t, "label": label} for t, label in reviews(20)])
    return ws, corpus


def data_and_records(ws) -> dict[str, bytes]:
    return {**snapshot(ws.root / "data"), **snapshot(ws.meta / "records")}


@pytest.mark.parametrize("shard", ["3/2", "0/2", "x"])
def test_cli_refuses_a_bad_shard_and_writes_nothing(cli_ws, run_cli, shard):
    ws, corpus = cli_ws
    before = data_and_records(ws)
    result = run_cli(["preprocess", corpus.name, "--shard", shard], ws.root)
    line = assert_fails(result, "--shard", shard)
    assert "K/N" in line
    assert data_and_records(ws) == before and not (ws.meta / "shards").exists()


def test_cli_refuses_shard_and_merge_together(cli_ws, run_cli):
    ws, corpus = cli_ws
    assert_fails(run_cli(["preprocess", corpus.name, "--shard", "1/2", "--merge", "2"], ws.root), "--shard", "--merge")
    assert_fails(run_cli(["preprocess", corpus.name, "--merge", "0"], ws.root), "--merge", "0")


def test_cli_merge_names_the_missing_shard_and_its_command(cli_ws, run_cli):
    ws, corpus = cli_ws
    ok = run_cli(["preprocess", corpus.name, "--as", "rev", "-j", "1", "--shard", "1/3"], ws.root)
    assert ok.exit_code == 0, ok.output
    assert "shard 1/3" in ok.stdout and (ws.meta / "shards" / "rev" / "1-of-3" / "manifest.json").is_file()
    before = data_and_records(ws)
    line = assert_fails(run_cli(["preprocess", corpus.name, "--as", "rev", "-j", "1", "--merge", "3"], ws.root),
                        "shards 2/3, 3/3 missing", "--shard K/3", "K = 2, 3")
    assert "--as rev" in line and corpus.name in line
    run_cli(["preprocess", corpus.name, "--as", "rev", "--shard", "3/3"], ws.root)
    line = assert_fails(run_cli(["preprocess", corpus.name, "--as", "rev", "--merge", "3"], ws.root),
                        "shard 2/3 missing", "--shard 2/3")
    assert data_and_records(ws) == before and not (ws.root / "data" / "rev").exists()
    run_cli(["preprocess", corpus.name, "--as", "rev", "--shard", "2/3"], ws.root)
    merged = run_cli(["preprocess", corpus.name, "--as", "rev", "--merge", "3"], ws.root)
    assert merged.exit_code == 0 and "merged from 3 shards" in merged.stdout, merged.output
    assert count_records(ws.root / "data" / "rev" / "train.parquet") > 0


def test_cli_merge_names_the_option_a_shard_was_made_with(cli_ws, run_cli):
    ws, corpus = cli_ws
    run_cli(["preprocess", corpus.name, "--shard", "1/2"], ws.root)
    run_cli(["preprocess", corpus.name, "--shard", "2/2", "--min-chars", "5"], ws.root)
    before = data_and_records(ws)
    assert_fails(run_cli(["preprocess", corpus.name, "--merge", "2"], ws.root),
                 "shard 2/2 was made with --min-chars 5, this merge with --min-chars 1")
    # A speed-only option may differ; the seed may not.
    assert_fails(run_cli(["preprocess", corpus.name, "--merge", "2", "--min-chars", "5", "-j", "1"], ws.root),
                 "shard 1/2 was made with --min-chars 1")
    assert_fails(run_cli(["preprocess", corpus.name, "--merge", "2", "--seed", "7"], ws.root), "--seed 42", "--seed 7")
    assert data_and_records(ws) == before


def test_merge_refuses_shards_of_another_version_of_the_input(cli_ws):
    ws, corpus = cli_ws
    job = prepare(ws, [corpus], config=PreprocessConfig(workers=1), lang="zh")
    run_shard(ws, job, 1, 2)
    run_shard(ws, job, 2, 2)
    check_shards(ws, job, 2)
    with open(corpus, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "新的一条评论", "label": "pos"}, ensure_ascii=False) + "\n")
    changed = prepare(ws, [corpus], config=PreprocessConfig(workers=1), lang="zh")
    with pytest.raises(UserError, match="shard 1/2 was made from another version of .*reviews.jsonl.*make the shards again"):
        merge_shards(ws, changed, 2)
    assert not any((ws.root / "data" / "processed").iterdir())


def test_a_shard_refuses_a_folder_it_did_not_write(cli_ws):
    ws, corpus = cli_ws
    job = prepare(ws, [corpus], config=PreprocessConfig(workers=1), lang="zh")
    folder = ws.meta / "shards" / "processed" / "1-of-2"
    folder.mkdir(parents=True)
    (folder / "mine.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(UserError, match="not a shard bigmodel wrote"):
        run_shard(ws, job, 1, 2)
    assert (folder / "mine.txt").read_text(encoding="utf-8") == "keep me"


def test_a_shard_holds_every_nth_document_and_the_merge_segments_nothing(make_ws, labelled, monkeypatch):
    """The shards do the segmentation: the merge takes their tokens (a merge that segmented
    again would give the same files, so this is checked apart)."""
    ws = make_ws("zh")
    job = prepare(ws, [labelled], config=PreprocessConfig(workers=1, min_count=1), lang="zh")
    for k in (1, 2, 3):
        result = run_shard(ws, job, k, 3)
        lines = [json.loads(line) for line in (result.folder / "docs.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [entry["i"] for entry in lines] == list(range(k - 1, result.documents, 3))
        assert all("tokens" in entry or "drop" in entry for entry in lines)

    def no_segmenter(*args, **kwargs):
        raise AssertionError("the merge segmented a document")

    monkeypatch.setattr("bigmodel_cli.data.shards.Segmenter", no_segmenter)
    monkeypatch.setattr("bigmodel_cli.data.preprocess.Segmenter", no_segmenter)
    merged = merge_shards(ws, job, 3, force=True)
    assert merged.report["documents"]["kept"] > 100


def test_a_shard_removes_what_a_killed_run_of_it_left_and_nothing_else(cli_ws):
    ws, corpus = cli_ws
    job = prepare(ws, [corpus], config=PreprocessConfig(workers=1), lang="zh")
    parent = ws.meta / "shards" / "processed"
    dead, other = parent / f".1-of-2.staging-{dead_pid()}", parent / f".2-of-2.staging-{dead_pid()}"
    for folder in (dead, other):
        folder.mkdir(parents=True)
        (folder / "docs.jsonl").write_text("half", encoding="utf-8")
    run_shard(ws, job, 1, 2)
    assert not dead.exists() and other.is_dir()  # shard 2's leftovers are shard 2's to clear
    assert sorted(p.name for p in parent.iterdir()) == [other.name, "1-of-2"]


def test_given_splits_and_near_duplicates_merged(make_ws, tmp_path):
    pytest.importorskip("datasketch")
    ws = make_ws("zh")
    pairs = reviews(40)
    records = [{"text": t, "label": label} for t, label in pairs]
    near = [{"text": r["text"] + "!", "label": r["label"]} for r in records[10:20] if len(r["text"]) > 40]
    files = {"train": write_jsonl(tmp_path / "train.jsonl", records[10:70] + near),
             "dev": write_jsonl(tmp_path / "dev.jsonl", records[:5] + records[70:]),
             "test": write_jsonl(tmp_path / "test.jsonl", records[5:10] + records[10:12])}
    options = dict(workers=1, min_count=1, near_dupes=0.8)
    preprocess(ws, None, **files, config=PreprocessConfig(**options), lang="zh", force=True)
    expected = outputs(ws)
    report = json.loads(expected["report.json"])
    assert report["splits_given"] and report["overlap_with_train"] == {"test": 2} and report["near_duplicates"]["count"] > 0
    job = prepare(ws, None, **files, config=PreprocessConfig(**options), lang="zh")
    for k in (2, 1):
        run_shard(ws, job, k, 2)
    merge_shards(ws, job, 2, force=True)
    assert outputs(ws) == expected


def test_a_strict_shard_stops_at_the_first_bad_record_as_the_unsharded_run_does(make_ws, labelled):
    ws = make_ws("zh")
    config = PreprocessConfig(workers=1, on_error="fail")
    with pytest.raises(UserError) as unsharded:
        preprocess(ws, [labelled], config=config, lang="zh", force=True)
    job = prepare(ws, [labelled], config=config, lang="zh")
    with pytest.raises(UserError) as shard:
        run_shard(ws, job, 2, 3)
    assert shard.value.one_line() == unsharded.value.one_line() and "reviews.jsonl:" in shard.value.one_line()
    assert not (ws.meta / "shards" / "processed" / "2-of-3").exists()
