"""finetune's learning rate chosen on dev (--lr 0, the default): every rate of --lr-grid
trains from the same start, the best by dev macro-F1 trains the run, the choice is recorded,
an explicit --lr skips the grid, a small dev falls back with a notice, and a search cut off
midway continues without training the finished candidates again."""

from __future__ import annotations

import json

import numpy as np
import pytest
from classify_fixtures import SCRATCH, labelled_ws, reviews
from safetensors.torch import load_file

from bigmodel_cli.errors import UserError
from bigmodel_cli.training import loop
from bigmodel_cli.training.classify_data import Encoded
from bigmodel_cli.training.finetune import finetune
from bigmodel_cli.training.lr_search import FALLBACK_LR, dev_too_small
from bigmodel_cli.workspace.config import FinetuneConfig

# Two rates: 1e-7 learns nothing in 27 steps, 1e-2 separates the marked classes; the bad one
# comes first, so that a tie (the first wins) would pick it.
GRID = dict(SCRATCH, batch_size=16, max_len=32, device="cpu", log_every=5, checkpoint_every=0, pooling="mean",
            dropout=0.0, epochs=3, grid_steps=27, lr_grid="1e-7,1e-2")
GRID_ARGS = ["--from", "scratch", "--layers", "1", "--dim", "16", "--heads", "2", "--ffn", "32", "--batch-size", "16",
             "--max-len", "32", "--device", "cpu", "--pooling", "mean", "--dropout", "0", "--epochs", "3",
             "--grid-steps", "27", "--lr-grid", "1e-7,1e-2", "--seed", "1"]
RUN_FILES = {"checkpoints", "config.json", "grid.json", "loss.png", "meta.json", "metrics.jsonl", "report.json",
             "train.json", "vocab.txt"}


def cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{**GRID, **kw})


@pytest.fixture(scope="module")
def gws(tmp_path_factory):
    """300 reviews whose first word gives the class away, 120 of them in dev (enough to rank rates)."""
    marked = [{"text": ("好评 " if label == "pos" else "差评 ") + text, "label": label} for text, label in reviews()]
    return labelled_ws(tmp_path_factory.mktemp("grid") / "ws", marked, split="0.5,0.4,0.1")


@pytest.fixture(scope="module")
def straight(gws):
    return finetune(gws, cfg(), name="straight", seed=1)


class Crash(Exception):
    pass


@pytest.fixture
def steps(monkeypatch):
    """Counts the optimizer steps of every fit (candidates and run); crash_at=N raises Crash after the Nth."""
    counter = {"n": 0, "crash_at": None}

    def hook(step: int) -> None:
        counter["n"] += 1
        if counter["n"] == counter["crash_at"]:
            raise Crash(counter["n"])

    monkeypatch.setattr(loop, "AFTER_STEP", [hook])
    return counter


def weights(folder):
    return load_file(folder / "checkpoints" / "last" / "model.safetensors")


def test_the_grid_picks_the_best_rate_on_dev_and_records_it(gws, straight):
    report, folder = straight.report, straight.folder
    trials = {t["lr"]: t for t in report["lr_search"]["trials"]}
    assert set(trials) == {1e-7, 1e-2} and all(t["steps"] == 27 for t in trials.values())
    assert trials[1e-2]["dev_macro_f1"] > trials[1e-7]["dev_macro_f1"] + 0.3
    assert report["lr"] == 1e-2 and report["lr_search"]["chosen"] == "dev"
    # the run folder is a plain run: no candidates left behind
    assert {p.name for p in folder.iterdir()} == RUN_FILES
    grid = json.loads((folder / "grid.json").read_text())
    assert grid["lr"] == 1e-2 and grid["chosen"] == "dev" and [t["lr"] for t in grid["trials"]] == [1e-7, 1e-2]
    train = json.loads((folder / "train.json").read_text())
    assert train["lr"] == 1e-2 and train["lr_search"]["chosen"] == "dev" and train["complete"] is True
    record = gws.last_record("finetune:straight")
    assert record["params"]["lr"] == 0.0
    assert record["metrics"]["lr"] == 1e-2 and record["metrics"]["lr_chosen"] == "dev"
    assert record["metrics"]["lr_trials"] == {"1e-07": trials[1e-7]["dev_macro_f1"], "0.01": trials[1e-2]["dev_macro_f1"]}
    assert any(o["path"].endswith("grid.json") for o in record["outputs"])
    assert finetune(gws, cfg(), name="straight", seed=1).skipped


def test_given_lr_skips_the_grid_and_trains_the_same_run(gws, straight, steps):
    given = finetune(gws, cfg(lr=1e-2), name="given", seed=1)
    assert steps["n"] == 27  # the run alone, no candidate
    assert not (given.folder / "grid.json").exists()
    assert given.report["lr_search"] == {"lr": 1e-2, "chosen": "given"}
    assert gws.last_record("finetune:given")["metrics"]["lr_chosen"] == "given"
    # the searched run is the run --lr gives with the chosen rate
    a, b = weights(straight.folder), weights(given.folder)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_a_small_dev_falls_back_with_a_notice(lm_ws, capsys):
    """reviews_ws has 40 dev documents: too few to rank rates."""
    result = finetune(lm_ws, cfg(), name="small", seed=1)
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "dev has 40 documents" in notices[0] and "--lr 0.0001" in notices[0]
    assert result.report["lr"] == FALLBACK_LR
    assert result.report["lr_search"] == {"lr": FALLBACK_LR, "chosen": "fallback (dev has 40 documents)", "trials": []}
    assert json.loads((result.folder / "train.json").read_text())["lr"] == FALLBACK_LR
    assert lm_ws.last_record("finetune:small")["metrics"]["lr_chosen"] == "fallback (dev has 40 documents)"
    assert not (result.folder / "grid").exists()


def test_dev_too_small_names_a_missing_class():
    def encoded(labels):
        labels = np.array(labels, dtype=np.int64)
        return Encoded(np.ones(len(labels), dtype=np.int64), np.arange(len(labels) + 1), labels)

    assert dev_too_small(None, ["neg", "pos"]) == "dev has 0 documents"
    assert dev_too_small(encoded([0, 1] * 24 + [-1] * 10), ["neg", "pos"]) == "dev has 48 documents"
    assert dev_too_small(encoded([0] * 60), ["neg", "pos"]) == "dev has 60 documents, none of class 'pos'"
    assert dev_too_small(encoded([0, 1] * 30), ["neg", "pos"]) is None


def test_a_search_cut_off_midway_resumes_without_training_the_finished_candidates(gws, straight, copy_ws, steps):
    ws = copy_ws(gws, "crash")
    steps["crash_at"] = 27 + 6  # the second candidate's sixth step; it has a checkpoint at step 4
    with pytest.raises(Crash):
        finetune(ws, cfg(checkpoint_every=4), name="straight", seed=1, force=True)
    folder = ws.root / "runs" / "straight"
    assert (folder / "grid" / "lr-0.01" / "checkpoints" / "step-00000004").is_dir()
    assert [t["lr"] for t in json.loads((folder / "grid.json").read_text())["trials"]] == [1e-7]
    assert ws.records("finetune:straight")[-1]["status"] == "failed"
    with pytest.raises(UserError, match="unfinished learning-rate search"):
        finetune(ws, cfg(checkpoint_every=4), name="straight", seed=1)
    forced = copy_ws(ws, "forced")  # --force starts the search over, in a copy
    steps.update(n=0, crash_at=None)
    again = finetune(forced, cfg(checkpoint_every=4), name="straight", seed=1, force=True)
    assert steps["n"] == 3 * 27 and again.report["lr"] == 1e-2
    steps["n"] = 0
    resumed = finetune(ws, cfg(checkpoint_every=4), name="straight", seed=1, resume="auto")
    assert steps["n"] == (27 - 4) + 27  # the rest of the cut-off candidate, then the run
    untimed = lambda trials: [{k: v for k, v in t.items() if k != "seconds"} for t in trials]
    assert untimed(resumed.report["lr_search"]["trials"]) == untimed(straight.report["lr_search"]["trials"])
    assert {p.name for p in folder.iterdir()} == RUN_FILES
    a, b = weights(straight.folder), weights(folder)
    assert all((a[k] == b[k]).all() for k in a)


def test_the_cli_resumes_a_run_cut_off_after_the_search(gws, straight, run_cli, steps):
    steps["crash_at"] = 2 * 27 + 6  # the run's sixth step; it has a checkpoint at step 4
    crashed = run_cli(["finetune", *GRID_ARGS, "--checkpoint-every", "4", "--name", "cli"], gws.root)
    assert isinstance(crashed.exception, Crash)
    steps.update(n=0, crash_at=None)
    resumed = run_cli(["finetune", *GRID_ARGS, "--checkpoint-every", "4", "--name", "cli", "--resume", "auto"], gws.root)
    assert resumed.exit_code == 0, resumed.output
    assert steps["n"] == 27 - 4  # no candidate trained again
    out = " ".join(resumed.output.split())
    assert "learning rate" in out and "0.01, chosen on dev" in out
    folder = gws.root / "runs" / "cli"
    a, b = weights(straight.folder), weights(folder)
    assert all((a[k] == b[k]).all() for k in a)
    assert gws.last_record("finetune:cli")["params"]["lr"] == 0.0
    again = run_cli(["finetune", *GRID_ARGS, "--checkpoint-every", "4", "--name", "cli"], gws.root)
    assert again.exit_code == 0 and "up to date" in again.output


def test_help_and_bad_grid_options(gws, run_cli):
    shown = " ".join(run_cli(["finetune", "--help"], gws.root).output.split())
    assert "--lr-grid" in shown and "3e-4,1e-4,5e-5" in shown and "--grid-steps" in shown
    bad = run_cli(["finetune", "--lr-grid", "1e-3,x", "--grid-steps", "-1"], gws.root)
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    out = " ".join(bad.output.split())
    assert "--lr-grid must be positive learning rates separated by commas" in out and "got '1e-3,x'" in out
    assert "--grid-steps must be 0 (one epoch) or more, got -1" in out
    negative = run_cli(["finetune", "--lr", "-1"], gws.root)
    assert negative.exit_code == 2
    assert "--lr must be a positive number (or 0: chosen on dev), got -1" in " ".join(negative.output.split())
    zero = run_cli(["finetune", "--lr-grid", "1e-3,0"], gws.root)
    assert zero.exit_code == 2 and "--lr-grid must be positive" in " ".join(zero.output.split())


def test_the_cli_resumes_a_search_with_its_own_options(gws, straight, run_cli, steps):
    """Cut off in a candidate, before the run has a checkpoint: --resume auto alone continues
    the search with the options it started with (grid.json), not the defaults."""
    steps["crash_at"] = 27 + 6
    crashed = run_cli(["finetune", *GRID_ARGS, "--checkpoint-every", "4", "--name", "cli-grid"], gws.root)
    assert isinstance(crashed.exception, Crash)
    steps.update(n=0, crash_at=None)
    resumed = run_cli(["finetune", "--name", "cli-grid", "--resume", "auto"], gws.root)
    assert resumed.exit_code == 0, resumed.output
    assert steps["n"] == (27 - 4) + 27
    a, b = weights(straight.folder), weights(gws.root / "runs" / "cli-grid")
    assert all((a[k] == b[k]).all() for k in a)


def test_a_hugging_face_base_goes_through_the_same_search(gws, tmp_path):
    from test_hf_import import make_hf_folder, vocabulary

    bert = make_hf_folder(tmp_path / "bert", vocabulary(list("好评差")))
    shape = {k: v for k, v in GRID.items() if k not in SCRATCH}
    result = finetune(gws, FinetuneConfig(**shape, from_run=str(bert)), name="from-hf", seed=1)
    search = result.report["lr_search"]
    assert result.report["base"] == str(bert) and search["chosen"] == "dev"
    assert [t["lr"] for t in search["trials"]] == [1e-7, 1e-2] and all(t["steps"] == 27 for t in search["trials"])
    assert result.report["lr"] == max(search["trials"], key=lambda t: t["dev_macro_f1"])["lr"]
    assert {p.name for p in result.folder.iterdir()} >= RUN_FILES - {"meta.json", "vocab.txt"}
    assert not (result.folder / "grid").exists()
