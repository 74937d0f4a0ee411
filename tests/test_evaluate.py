"""`bigmodel evaluate`: the classifier report beside the TF-IDF + LR baseline (every figure,
the difference, plots, Markdown, status), the baseline's pickle-free cache, calibration,
pretrain runs, labels unseen in training, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from classify_fixtures import (
    SCRATCH,
    TINY_FINETUNE,
    classifier_ws,
    labelled_ws,
    reviews,
    write_jsonl,
)
from conftest import write_split
from sklearn.feature_extraction.text import TfidfVectorizer

from bigmodel_cli.evaluation import baseline as bl
from bigmodel_cli.evaluation.evaluate import (
    SCALARS,
    calibration,
    classification_metrics,
    evaluate,
)
from bigmodel_cli.training.classify_data import read_split
from bigmodel_cli.training.finetune import finetune
from bigmodel_cli.workspace.config import EvaluateConfig, FinetuneConfig


@pytest.fixture(scope="module")
def cws(tmp_path_factory):
    return classifier_ws(tmp_path_factory.mktemp("evaluate") / "ws")


def test_classifier_report_stands_beside_the_baseline(cws, run_cli):
    result = run_cli(["evaluate"], cws.root)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    for piece in ("evaluate classifier on test", "TF-IDF + LR", "macro f1", "weighted recall", "ece", "examples/s",
                  "per class", "confusion matrix", "verdict:"):
        assert piece in out, piece
    folder = cws.root / "reports" / "classifier" / "test"
    report = json.loads((folder / "report.json").read_text())
    assert report["kind"] == "classifier" and report["labels"] == ["neg", "pos"] and report["scored"] == 30
    for side in ("model", "baseline"):
        figures = report[side]
        assert set(SCALARS) <= set(figures) and figures["examples_per_s"] > 0
        assert sum(map(sum, figures["confusion"])) == 30 and len(figures["per_class"]) == 2
        assert sum(c["support"] for c in figures["per_class"]) == 30
        # the ECE and accuracy are the count-weighted figures of the reliability bins it reports
        bins = [b for b in figures["reliability"] if b["count"]]
        assert sum(b["count"] for b in bins) == 30
        assert figures["ece"] == pytest.approx(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / 30)
        assert figures["accuracy"] == pytest.approx(sum(b["count"] * b["accuracy"] for b in bins) / 30)
    for key in SCALARS:
        assert report["difference"][key] == pytest.approx(report["model"][key] - report["baseline"][key], abs=1e-6)
    assert report["baseline"]["macro_f1"] > 0.6  # real reviews: the baseline is not a straw man
    assert report["model"]["micro_f1"] == pytest.approx(report["model"]["accuracy"])
    for name in ("confusion.png", "calibration.png"):
        assert (folder / name).read_bytes()[:4] == b"\x89PNG"
    page = (folder / "report.md").read_text()
    assert "**Verdict:**" in page and "| macro f1 |" in page and "![confusion matrices](confusion.png)" in page
    record = cws.last_record("evaluate:classifier")
    assert record["params"]["split"] == "test"
    assert list(record["metrics"])[:3] == ["test_macro_f1", "baseline_macro_f1", "vs_baseline"]
    from bigmodel_cli.workspace.records import stage_status

    row = next(r for r in stage_status(cws) if r["stage"] == "evaluate:classifier")
    assert row["state"] == "up to date" and row["metrics"].startswith("test_macro_f1=")
    again = run_cli(["evaluate"], cws.root)
    assert again.exit_code == 0 and "up to date" in again.output and "verdict:" in again.output


def test_dev_split_and_pretrain_runs(cws):
    dev = evaluate(cws, "classifier", split="dev")
    assert dev.report["split"] == "dev" and dev.report["scored"] == 30
    assert (cws.root / "reports" / "classifier" / "dev" / "report.md").exists()
    lm = evaluate(cws, "mlm")
    r = lm.report
    assert r["kind"] == "language model" and r["objective"] == "mlm"
    assert r["perplexity"] == pytest.approx(np.exp(r["loss"]), rel=1e-6) and 0 <= r["masked_token_accuracy"] <= 1
    assert lm.record["metrics"]["test_ppl"] > 1
    assert evaluate(cws, "mlm").report["loss"] == r["loss"]  # seeded masks: the same figure every time


def test_baseline_is_cached_as_plain_data_and_reloads_identically(cws):
    cfg = EvaluateConfig()
    first, cached = bl.load_or_train(cws, cfg)
    assert cached  # the evaluation above trained it
    folder = cws.root / bl.FOLDER
    assert sorted(p.name for p in folder.iterdir()) == ["baseline.json", "terms.json", "weights.npz"]
    with np.load(folder / "weights.npz", allow_pickle=False) as arrays:  # no object arrays inside
        assert set(arrays.files) == {"word_idf", "char_idf", "coef", "intercept"}
    meta = json.loads((folder / "baseline.json").read_text())
    assert meta["C"] in cfg.baseline_c and set(meta["dev_macro_f1_by_C"]) == {repr(float(c)) for c in cfg.baseline_c}
    assert meta["features"]["chars"] > 0  # Chinese: character n-grams too
    docs = bl.docs(read_split(cws.processed / "test.parquet"))
    assert np.allclose(bl.Baseline.load(folder).predict_proba(docs), first.predict_proba(docs))
    other, cached = bl.load_or_train(cws, EvaluateConfig(baseline_char_ngrams=0))
    assert not cached and other.info["features"]["chars"] == 0  # new options, new key: retrained


def test_our_tfidf_transform_equals_scikit_learns():
    docs = [bl.word_ngrams(t.split()) for t in ("a b c a", "b c d", "a a a e", "e f", "c")]
    vectorizer = TfidfVectorizer(analyzer=lambda terms: terms, sublinear_tf=True).fit(docs)
    ours = bl._tfidf(docs, vectorizer.vocabulary_, vectorizer.idf_)
    assert abs(ours - vectorizer.transform(docs)).max() < 1e-12
    assert bl.char_ngrams("好 坏", 2) == ["好", " ", "坏", "好 ", " 坏"]


def test_calibration_error_on_known_numbers():
    confidence = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([True, False, True, True])
    ece, table = calibration(confidence, correct, bins=10)
    # bin 0.9-1.0: accuracy 0.5 at confidence 0.95; bin 0.5-0.6: accuracy 1 at 0.55
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    assert sum(b["count"] for b in table) == 4 and len(table) == 10
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    metrics = classification_metrics(np.array([0, 1, 1]), probs, ["a", "b"], 10)
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["confusion"] == [[1, 0], [1, 1]]
    assert metrics["per_class"][1] == {"label": "b", "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}


def test_unseen_test_label_is_reported_not_fatal(tmp_path, run_cli):
    pairs = reviews(60)
    train = [{"text": t, "label": label} for t, label in pairs[10:-10]]
    test = [{"text": t, "label": label} for t, label in pairs[:5] + pairs[-5:]] + [{"text": "一般般吧，说不上好坏", "label": "neutral"}]
    dev = [{"text": t, "label": label} for t, label in pairs[5:10] + pairs[-10:-5]]
    from bigmodel_cli.data.preprocess import preprocess
    from bigmodel_cli.workspace.config import PreprocessConfig
    from bigmodel_cli.workspace.layout import Workspace

    ws, _ = Workspace.init(tmp_path / "ws", lang="zh")
    paths = {s: write_jsonl(tmp_path / f"{s}.jsonl", r) for s, r in (("train", train), ("dev", dev), ("test", test))}
    preprocess(ws, train=paths["train"], dev=paths["dev"], test=paths["test"], config=PreprocessConfig(workers=1, min_count=1),
               lang="zh", force=True)
    finetune(ws, FinetuneConfig(**{**TINY_FINETUNE, **SCRATCH}), seed=1)
    result = run_cli(["evaluate"], ws.root)
    assert result.exit_code == 0, result.output
    assert "labels unseen in training: neutral (1)" in " ".join(result.output.split())
    report = json.loads((ws.root / "reports" / "classifier-scratch" / "test" / "report.json").read_text())
    assert report["unseen_labels"] == {"neutral": 1} and report["scored"] == 10 and report["documents"] == 11


# -- bad input --------------------------------------------------------------------------------
def test_no_run_and_unknown_run(tmp_path, run_cli):
    ws = labelled_ws(tmp_path / "ws", [{"text": t, "label": label} for t, label in reviews(20)])
    result = run_cli(["evaluate"], ws.root)
    assert result.exit_code == 2 and "no trained run" in result.output and "bigmodel pretrain" in result.output
    bad = run_cli(["evaluate", "--split", "train"], ws.root)
    assert bad.exit_code == 2 and "--split must be test or dev" in bad.output


def test_missing_test_split(cws, run_cli):
    test = cws.processed / "test.parquet"
    saved = test.read_bytes()
    write_split(cws.processed, "test", [])  # a split with no records
    try:
        result = run_cli(["evaluate", "--force"], cws.root)
    finally:
        test.write_bytes(saved)
    assert result.exit_code == 2 and "no test split" in result.output and "--split dev" in result.output
    assert len(result.output.strip().splitlines()) <= 2
