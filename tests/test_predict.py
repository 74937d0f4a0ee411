"""`bigmodel predict`: raw text, files and standard input to JSONL, with the training run's
own cleaning and segmentation; and every bad input."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from classify_fixtures import classifier_ws, reviews, write_jsonl

from bigmodel_cli.data.vocab import PAD
from bigmodel_cli.inference.predict import Predictor, predict
from bigmodel_cli.model.runs import load_model
from bigmodel_cli.training.classify_data import (
    classify_probs,
    encode_records,
    read_split,
)


@pytest.fixture(scope="module")
def cws(tmp_path_factory):
    return classifier_ws(tmp_path_factory.mktemp("predict") / "ws")


def lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_texts_to_jsonl_with_probabilities(cws, run_cli):
    result = run_cli(["predict", "房间很干净，服务也好", "质量太差了，再也不买"], cws.root)
    assert result.exit_code == 0, result.output
    records = lines(result.stdout)
    assert [r["text"] for r in records] == ["房间很干净，服务也好", "质量太差了，再也不买"]
    for r in records:
        assert r["label"] in ("neg", "pos") and sum(r["probs"].values()) == pytest.approx(1, abs=1e-5)
        assert r["score"] == max(r["probs"].values()) and list(r["probs"])[0] == r["label"]
    top1 = lines(run_cli(["predict", "房间很干净", "--top-k", "1"], cws.root).stdout)
    assert len(top1[0]["probs"]) == 1


def test_raw_text_gets_the_training_normalisation(cws):
    """Predicting a test document's raw text gives what the model gives on its processed tokens."""
    records = read_split(cws.processed / "test.parquet")[:8]
    folder = cws.root / "runs" / "classifier"
    model, _ = load_model(folder)
    encoder = Predictor(folder).encoder
    expected = classify_probs(model, encode_records(records, encoder, ["neg", "pos"], 32), 64, encoder.vocab.id(PAD))
    # full-width characters and HTML as users paste them: cleaned away exactly as preprocess did
    raw = ["<p>" + r["text"] + "</p>" for r in records]
    got = Predictor(folder).probabilities(raw)
    assert np.allclose(got, expected, atol=1e-5)


def test_files_in_every_format_and_stdin(cws, run_cli, tmp_path):
    texts = [t for t, _ in reviews(5)]
    jsonl = write_jsonl(tmp_path / "in.jsonl", [{"review": t, "label": "pos"} for t in texts])
    result = run_cli(["predict", "--input", jsonl, "--text-field", "review"], cws.root)
    assert result.exit_code == 0, result.output
    records = lines(result.stdout)
    assert [r["text"] for r in records] == texts and all(r["gold"] == "pos" for r in records)
    assert records[2]["source"].endswith("in.jsonl:3")
    csv = tmp_path / "in.csv"
    csv.write_text("id,text\n" + "".join(f"{i},\"{t}\"\n" for i, t in enumerate(texts)), encoding="gbk", errors="ignore")
    out = tmp_path / "out.jsonl"
    result = run_cli(["predict", "--input", csv, "-o", out], cws.root)
    assert result.exit_code == 0, result.output
    assert len(lines(out.read_text(encoding="utf-8"))) == len(texts)
    buffer = io.StringIO()
    summary = predict(cws, input_path="-", stdin=io.BytesIO("\n".join(texts).encode()), out=buffer)
    assert summary.documents == len(texts) and lines(buffer.getvalue())[0]["source"] == "stdin:1"
    piped = run_cli_stdin(cws, ["predict", "-"], "很好\n很差\n")
    assert piped.exit_code == 0 and len(lines(piped.stdout)) == 2


def test_batches_keep_the_input_order(cws):
    texts = [t for t, _ in reviews(40)]
    buffer = io.StringIO()
    predict(cws, texts, batch_size=7, out=buffer)
    one = io.StringIO()
    predict(cws, texts[:3], batch_size=1, out=one)
    records = lines(buffer.getvalue())
    assert [r["text"] for r in records] == texts
    for a, b in zip(records[:3], lines(one.getvalue())):
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-5)


def run_cli_stdin(ws, args, text):
    import contextlib

    from typer.testing import CliRunner

    from bigmodel_cli.cli._util import app

    with contextlib.chdir(ws.root):
        return CliRunner().invoke(app, args, input=text)


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    ([], "nothing to predict: no TEXT, no --input"),
    ([""], "TEXT 1 is empty"),
    (["x", "--top-k", "-1"], "--top-k must be 0"),
    (["x", "--run", "mlm"], "run 'mlm' is a pretrain run (a language model), not a classifier"),
    (["x", "--run", "nope"], "no run named 'nope'"),
])
def test_bad_input_is_one_line_with_exit_2(cws, run_cli, args, message):
    result = run_cli(["predict", *args], cws.root)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2


def test_empty_stdin_and_files(cws, run_cli, tmp_path):
    empty = run_cli_stdin(cws, ["predict", "-"], "")
    assert empty.exit_code == 2 and "standard input is empty" in empty.output
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n", encoding="utf-8")
    result = run_cli(["predict", "--input", blank], cws.root)
    assert result.exit_code == 2 and "holds no text" in result.output
    missing = run_cli(["predict", "--input", tmp_path / "missing.txt"], cws.root)
    assert missing.exit_code == 2 and "no such file" in missing.output
    wrong_field = write_jsonl(tmp_path / "r.jsonl", [{"review": "很好"}])
    result = run_cli(["predict", "--input", wrong_field], cws.root)
    assert result.exit_code == 2 and "no field 'text'" in result.output and "--text-field" in result.output


def test_no_classifier_yet(tmp_path, run_cli):
    from classify_fixtures import labelled_ws

    ws = labelled_ws(tmp_path / "ws", [{"text": t, "label": label} for t, label in reviews(10)])
    result = run_cli(["predict", "很好"], ws.root)
    assert result.exit_code == 2 and "no finetune run" in result.output and "bigmodel finetune" in result.output
