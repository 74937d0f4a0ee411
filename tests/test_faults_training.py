"""Training runs under faults: resume that never starts over or half-writes a run, one-line
errors for damaged checkpoints, configs and vocabularies, interrupted runs marked as such,
SIGTERM that checkpoints and resumes exactly, plain log lines off a terminal, and leftovers
of a killed run cleaned."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from classify_fixtures import labelled_ws
from conftest import assert_fails, snapshot
from safetensors.torch import load_file

from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import sha256_file, write_json
from bigmodel_cli.model import checkpoint as ckpt
from bigmodel_cli.model.runs import find_run, load_model
from bigmodel_cli.model.transformer import ModelConfig, Transformer
from bigmodel_cli.training import loop as train
from bigmodel_cli.training.finetune import finetune
from bigmodel_cli.training.pretrain import pretrain
from bigmodel_cli.workspace.config import FinetuneConfig, PretrainConfig

TINY = dict(layers=1, dim=16, heads=2, ffn=32, seq_len=32, batch_size=8, max_steps=12, eval_every=0,
            checkpoint_every=4, log_every=2, keep=3, eval_batches=1, device="cpu")
ARGS = ["--layers", "1", "--dim", "16", "--heads", "2", "--ffn", "32", "--seq-len", "32", "--batch-size", "8",
        "--eval-every", "0", "--checkpoint-every", "4", "--log-every", "2", "--eval-batches", "1", "--device", "cpu",
        "--seed", "1"]
FINETUNE = dict(batch_size=16, epochs=1, max_len=32, lr=1e-3, log_every=5, checkpoint_every=5, device="cpu",
                from_run="scratch", layers=1, dim=16, heads=2, ffn=32)


def tiny(**kw) -> PretrainConfig:
    return PretrainConfig(**{**TINY, **kw})


@pytest.fixture(scope="module")
def reviews_ws(tmp_path_factory):
    """300 real reviews, preprocessed (both labels), once for the module: only copied."""
    return labelled_ws(tmp_path_factory.mktemp("faults-training") / "ws")


@pytest.fixture
def ws(reviews_ws, copy_ws):
    return copy_ws(reviews_ws)


@pytest.fixture
def after_step(monkeypatch):
    """after_step(fn): call fn(step) after every training step of this test."""
    hooks: list = []
    monkeypatch.setattr(train, "AFTER_STEP", hooks)
    return hooks.append


def weights(folder: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(folder / "checkpoints" / ckpt.step_name(step) / "model.safetensors")


def train_metrics(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in ("tokens_per_s", "elapsed_s")} for x in lines]


# -- 1. --resume auto never starts over beside existing checkpoints ----------------------------
def test_resume_auto_without_last_continues_from_the_newest_intact_step(ws):
    pretrain(ws, tiny(), seed=1)
    ck = ws.root / "runs" / "mlm" / "checkpoints"
    (ck / "last").unlink()
    bad = ck / "step-00000012" / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[:50])
    result = pretrain(ws, tiny(max_steps=16), seed=1, resume="auto")
    assert result.report["resumed_from"] == "runs/mlm/checkpoints/step-00000008"
    assert result.report["steps"] == 16 and os.readlink(ck / "last") == "step-00000016"


def test_resume_auto_with_no_intact_checkpoint_is_refused_and_changes_nothing(ws, run_cli):
    pretrain(ws, tiny(), seed=1)
    folder = ws.root / "runs" / "mlm"
    (folder / "checkpoints" / "last").unlink()
    for step in folder.glob("checkpoints/step-*"):
        (step / "state.json").write_text("{}")
    before = snapshot(folder)
    error = assert_fails(run_cli(["pretrain", *ARGS, "--max-steps", "16", "--resume", "auto"], ws.root))
    assert "no intact checkpoint" in error and "state.json: corrupt or truncated" in error and "--force" in error
    assert snapshot(folder) == before


# -- 2. a failed resume leaves the run folder byte for byte ------------------------------------
def _truncate_last(folder: Path) -> None:
    bad = folder / "checkpoints" / "step-00000012" / "optimizer.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])


def _swap_two_words(ws) -> None:
    """The same vocabulary size with two words' ids exchanged (as a new preprocess can give)."""
    path = ws.processed / "vocab.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[10], lines[11] = lines[11], lines[10]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


FAILED_RESUMES = {
    "truncated checkpoint": (_truncate_last, [], "optimizer.safetensors: corrupt or truncated"),
    "other learning rate": (lambda folder: None, ["--lr", "0.002"], "--lr 0.002 (the run has 0.001)"),
    "no GPU": (lambda folder: None, ["--device", "cuda"], "no CUDA GPU"),
}


@pytest.mark.parametrize("case", FAILED_RESUMES)
def test_a_failed_resume_writes_nothing_into_the_run(ws, run_cli, case):
    if case == "no GPU" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    damage, extra, expected = FAILED_RESUMES[case]
    pretrain(ws, tiny(), seed=1)
    folder = ws.root / "runs" / "mlm"
    damage(folder)
    before = snapshot(folder)
    error = assert_fails(run_cli(["pretrain", *ARGS, "--max-steps", "16", *extra, "--resume", "auto"], ws.root))
    assert expected in error
    assert snapshot(folder) == before


# -- 3. a file that matches its checksum but is not safetensors --------------------------------
@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "rng.safetensors"])
def test_checksum_matching_garbage_is_one_line_naming_the_file(ws, run_cli, name):
    pretrain(ws, tiny(), seed=1)
    step = ws.root / "runs" / "mlm" / "checkpoints" / "step-00000012"
    (step / name).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json}")
    manifest = json.loads((step / "manifest.json").read_text())
    write_json(step / "manifest.json", {**manifest, name: sha256_file(step / name)})
    error = assert_fails(run_cli(["pretrain", *ARGS, "--max-steps", "16", "--resume", "auto"], ws.root))
    assert f"step-00000012/{name}: not a readable safetensors file" in error
    with pytest.raises(UserError, match=f"step-00000012/{name}"):
        load_model(step.parent.parent)


# -- 4. the vocabulary is the run's ----------------------------------------------------------------
def test_resume_after_the_vocabulary_changed_is_refused(ws, run_cli):
    pretrain(ws, tiny(), seed=1)
    folder = ws.root / "runs" / "mlm"
    assert json.loads((folder / "meta.json").read_text())["vocab_sha256"] == sha256_file(folder / "vocab.txt")
    _swap_two_words(ws)
    before = snapshot(folder)
    error = assert_fails(run_cli(["pretrain", *ARGS, "--max-steps", "16", "--resume", "auto"], ws.root))
    assert "vocab.txt is not the vocabulary the run was trained on" in error and "--name" in error
    assert snapshot(folder) == before


@pytest.mark.parametrize("edit", ["shrunk", "grown", "reordered"])
def test_a_hand_edited_run_vocabulary_is_refused_on_load(ws, run_cli, edit):
    finetune(ws, FinetuneConfig(**FINETUNE), seed=1)
    folder = ws.root / "runs" / "classifier-scratch"
    path = folder / "vocab.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines = {"shrunk": lines[:-5], "grown": lines + ["新词\t1"], "reordered": lines[:10] + lines[11:12] + lines[10:11] + lines[12:]}[edit]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    with pytest.raises(UserError, match="not the vocabulary the run was trained on"):
        load_model(folder)
    error = assert_fails(run_cli(["predict", "房间很干净", "--run", "classifier-scratch"], ws.root))
    assert "vocab.txt" in error


def test_a_run_without_a_recorded_hash_still_loads_but_its_size_is_checked(ws, save_run):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "好", "差"]
    model = Transformer(ModelConfig(vocab_size=len(words), layers=1, dim=8, heads=2, ffn=16, num_labels=2,
                                    labels=["neg", "pos"], lm_head=False))
    folder = save_run(ws, "old", model, words)
    assert load_model(folder)[0].cfg.vocab_size == 7
    (folder / "vocab.txt").write_text("".join(f"{w}\t0\n" for w in words[:-1]), encoding="utf-8")
    with pytest.raises(UserError, match="6 tokens, but the model's embedding table has 7 rows"):
        load_model(folder)


# -- 5. options on resume ----------------------------------------------------------------------------
def test_resume_refuses_other_options_and_records_a_longer_budget(ws):
    pretrain(ws, tiny(), seed=1)
    with pytest.raises(UserError, match=r"--lr 0.002 \(the run has 0.001\), --warmup 10 \(the run has 0.06\)"):
        pretrain(ws, tiny(max_steps=16, lr=2e-3, warmup=10), seed=1, resume="auto")
    with pytest.raises(UserError, match=r"--seed 2 \(the run has 1\)"):
        pretrain(ws, tiny(max_steps=16), seed=2, resume="auto")
    longer = pretrain(ws, tiny(max_steps=16, keep=1), seed=1, resume="auto")
    assert longer.report["steps"] == 16 and longer.report["changed_on_resume"] == {"max_steps": [12, 16], "keep": [3, 1]}
    options = json.loads((longer.folder / "train.json").read_text())
    assert options["max_steps"] == 16 and options["complete"] is True
    assert options["resumes"] == [{"from": "step-00000012", "changed": {"max_steps": [12, 16], "keep": [3, 1]}}]


def test_resume_from_the_command_line_takes_the_run_s_options_unless_given(ws, run_cli):
    pretrain(ws, tiny(lr=1e-3, warmup=3, mask_prob=0.2), seed=7)
    result = run_cli(["pretrain", "--resume", "auto", "--max-steps", "16"], ws.root)
    assert result.exit_code == 0, result.output
    report = json.loads((ws.root / "runs" / "mlm" / "report.json").read_text())
    assert report["steps"] == 16 and report["changed_on_resume"] == {"max_steps": [12, 16]}
    assert ws.last_record("pretrain:mlm")["params"]["lr"] == 1e-3
    error = assert_fails(run_cli(["pretrain", "--resume", "auto", "--max-steps", "20", "--lr", "0.002"], ws.root))
    assert "--lr 0.002 (the run has 0.001)" in error and "--warmup" not in error


def test_max_time_decays_the_learning_rate_to_its_floor_by_the_deadline(ws, monkeypatch):
    # The loop's clock ticks a fixed 0.05 s per reading, so the test does not depend on the
    # machine's load (three readings a step: 0.15 s a step, about 27 steps in 4 s).
    clock = iter(range(10**9))
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=lambda: next(clock) * 0.05))
    result = pretrain(ws, tiny(max_steps=0, epochs=10_000, max_time="4s", checkpoint_every=0, log_every=1,
                               lr=1e-3, min_lr=0.0, warmup=0.05), name="timed", seed=1)
    assert result.report["stop_reason"] == "max time (4s)"
    lrs = [m["lr"] for m in train_metrics(result.folder) if "lr" in m]
    assert len(lrs) > 15
    assert max(lrs) > 0.9e-3  # it warmed up to the peak
    assert lrs[-1] < 0.15e-3  # and ended near the floor, not at the peak the epochs' budget leaves it at


# -- 6. interrupted runs ---------------------------------------------------------------------------------
def test_an_interrupted_finetune_is_marked_recorded_and_skipped(ws, run_cli, after_step, capsys):
    finished = finetune(ws, FinetuneConfig(**FINETUNE), name="done", seed=1)

    def interrupt(step):
        if step == 7:
            raise KeyboardInterrupt

    after_step(interrupt)
    with pytest.raises(KeyboardInterrupt):
        finetune(ws, FinetuneConfig(**FINETUNE), name="cut", seed=1)
    cut = ws.root / "runs" / "cut"
    assert json.loads((cut / "train.json").read_text())["complete"] is False
    record = ws.last_record("finetune:cut", status=None)
    assert record["status"] == "failed" and "interrupted" in record["error"]
    status = run_cli(["status"], ws.root)
    assert "finetune:cut" in " ".join(status.output.split()) and "failed" in status.output
    capsys.readouterr()
    assert find_run(ws, None, kind="finetune") == finished.folder
    assert "skipped run 'cut': it was interrupted" in capsys.readouterr().err
    load_model(cut)
    warning = capsys.readouterr().err
    assert "run 'cut' was interrupted" in warning and "step-00000005" in warning and "--resume auto" in warning
    train.AFTER_STEP.clear()
    resumed = finetune(ws, FinetuneConfig(**FINETUNE), name="cut", seed=1, resume="auto")
    assert json.loads((cut / "train.json").read_text())["complete"] is True
    assert find_run(ws, None, kind="finetune") == resumed.folder


def test_a_resumed_finetune_from_latest_keeps_its_base(ws, after_step):
    pretrain(ws, tiny(max_steps=4), name="first", seed=1)
    after_step(_sigterm_at(6))
    options = FinetuneConfig(**{**FINETUNE, "from_run": "latest", "layers": 0, "dim": 0, "heads": 0, "ffn": 0})
    with pytest.raises(train.Stopped):
        finetune(ws, options, name="clf", seed=1)
    train.AFTER_STEP.clear()
    pretrain(ws, tiny(max_steps=4, dim=32), name="second", seed=1)  # newer, another width
    resumed = finetune(ws, options, name="clf", seed=1, resume="auto")
    assert resumed.report["base"] == "first" and resumed.report["resumed_from"].endswith("step-00000006")


# -- 7. hand-edited configs -------------------------------------------------------------------------------
@pytest.mark.parametrize("edit,expected", [
    ({"num_labels": 0}, "field 'num_labels' is 0 and 'lm_head' is false"),
    ({"num_labels": 3, "labels": ["neg", "pos", "mid"]}, "'num_labels' is 3 there but 2 in the checkpoint"),
    ({"heads": "two"}, "field 'heads' must be a positive integer, got 'two'"),
    ({"dim": 24}, "'dim' is 24 there but 16 in the checkpoint"),
    ({"labels": ["neg"]}, "field 'labels' must list the 2 class names"),
])
def test_a_hand_edited_run_config_is_one_line_naming_file_and_field(ws, run_cli, edit, expected):
    result = finetune(ws, FinetuneConfig(**FINETUNE), seed=1)
    path = result.folder / "config.json"
    write_json(path, {**json.loads(path.read_text()), **edit})
    for command in (["predict", "房间很干净", "--run", "classifier-scratch"], ["evaluate", "classifier-scratch"]):
        error = assert_fails(run_cli(command, ws.root))
        assert "classifier-scratch/config.json" in error and expected in error, command


def test_weights_that_do_not_fit_the_config_are_one_line(tmp_path):
    small = Transformer(ModelConfig(vocab_size=20, layers=1, dim=8, heads=2, ffn=16))
    wide = Transformer(ModelConfig(vocab_size=20, layers=1, dim=16, heads=2, ffn=16))
    with pytest.raises(UserError, match=r"x/model.safetensors: the weights do not fit .* embeddings.tokens.weight \(20, 16\)"):
        ckpt.load_weights(small, wide.state_dict(), tmp_path / "x" / "model.safetensors")


# -- 8. SIGTERM checkpoints, exits 143, and resumes exactly ---------------------------------------------
def _sigterm_at(step):
    def hook(done):
        if done == step:
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


def test_sigterm_saves_a_checkpoint_and_resume_equals_an_uninterrupted_run(ws, after_step):
    straight = pretrain(ws, tiny(max_steps=12, dropout=0.1), name="straight", seed=1)
    after_step(_sigterm_at(7))
    with pytest.raises(train.Stopped) as stopped:
        pretrain(ws, tiny(max_steps=12, dropout=0.1), name="cut", seed=1)
    assert stopped.value.exit_code == 143
    assert "stopped by SIGTERM after step 7; saved runs/cut/checkpoints/step-00000007" in stopped.value.one_line()
    assert "--resume auto" in stopped.value.one_line()
    cut = ws.root / "runs" / "cut"
    assert os.readlink(cut / "checkpoints" / "last") == "step-00000007"
    assert ws.last_record("pretrain:cut", status=None)["status"] == "failed"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the loop's only
    train.AFTER_STEP.clear()
    pretrain(ws, tiny(max_steps=12, dropout=0.1), name="cut", seed=1, resume="auto")
    a, b = weights(straight.folder, 12), weights(cut, 12)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert train_metrics(cut) == train_metrics(straight.folder)


def test_sigterm_from_the_cli_exits_143_with_one_line(ws, run_cli, after_step):
    after_step(_sigterm_at(3))
    result = run_cli(["finetune", "--batch-size", "16", "--epochs", "1", "--max-len", "32", "--device", "cpu",
                      "--from", "scratch", "--layers", "1", "--dim", "16", "--heads", "2", "--ffn", "32"], ws.root)
    assert result.exit_code == 143, result.output
    assert "stopped by SIGTERM after step 3; saved runs/classifier-scratch/checkpoints/step-00000003" in result.output
    assert "Traceback" not in result.output


# -- 9. log lines when stderr is not a terminal --------------------------------------------------------
def test_plain_log_lines_off_a_terminal(ws, run_cli, capsys):
    pretrain(ws, tiny(max_steps=2), name="quiet", seed=1)
    assert "step " not in capsys.readouterr().err  # library calls stay quiet
    result = run_cli(["pretrain", *ARGS, "--max-steps", "6", "--eval-every", "3"], ws.root)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines if " dev " not in line] == ["2/6", "4/6", "6/6"]
    assert all(" loss " in line and " lr " in line and " tok/s " in line for line in lines if " dev " not in line)
    assert any(line.startswith("step 3/6  dev loss") for line in lines)


# -- 10. what a killed run left half-written -------------------------------------------------------------
def test_half_written_checkpoints_are_removed_at_the_next_run_and_nothing_else(ws):
    pretrain(ws, tiny(), seed=1)
    ck = ws.root / "runs" / "mlm" / "checkpoints"
    shutil.copytree(ck / "step-00000012", ck / ".step-00000016.tmp")
    os.symlink("step-00000012", ck / ".last.tmp")
    (ck / ".step-notes.tmp").mkdir()
    (ck / ".step-notes.tmp" / "notes.txt").write_text("the user's")
    pretrain(ws, tiny(max_steps=16), seed=1, resume="auto")
    assert not (ck / ".step-00000016.tmp").exists() and not (ck / ".last.tmp").is_symlink()
    assert (ck / ".step-notes.tmp" / "notes.txt").read_text() == "the user's"


def test_a_torn_metrics_line_from_a_kill_does_not_stop_the_resume(ws):
    pretrain(ws, tiny(), seed=1)
    path = ws.root / "runs" / "mlm" / "metrics.jsonl"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"step": 14, "loss": 8.1')  # the kill came in the middle of a write
    pretrain(ws, tiny(max_steps=16), seed=1, resume="auto")
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if "split" not in line]
    assert steps == [2, 4, 6, 8, 10, 12, 14, 16]


def test_force_replaces_a_run_folder_but_never_one_the_user_filled(ws):
    mine = ws.root / "runs" / "mlm"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes", encoding="utf-8")
    with pytest.raises(UserError, match="holds no bigmodel run, so --force will not replace it"):
        pretrain(ws, tiny(), seed=1, force=True)
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "my notes"
    (mine / "notes.txt").unlink()
    pretrain(ws, tiny(), seed=1)  # an empty folder is no one's: the run goes in
    first = (mine / "checkpoints" / "last" / "model.safetensors").read_bytes()
    (mine / "checkpoints" / "last" / "model.safetensors").write_bytes(b"stale")
    pretrain(ws, tiny(), seed=1, force=True)  # a run's own folder is replaced
    assert (mine / "checkpoints" / "last" / "model.safetensors").read_bytes() == first
