"""`bigmodel pretrain` and `generate`: a real (tiny) run's files, records and numbers;
exact resume after SIGKILL; two processes (DDP) matching one; every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import metrics, read_split, write_split
from safetensors.torch import load_file

from bigmodel_cli.data.tokenizer import WordEncoder
from bigmodel_cli.data.vocab import Vocab
from bigmodel_cli.errors import UserError
from bigmodel_cli.training.lm_data import MLMTask, encode_blocks
from bigmodel_cli.training.loop import learning_rate, parse_duration, schedule_progress
from bigmodel_cli.training.pretrain import pretrain
from bigmodel_cli.workspace.config import PretrainConfig

TINY = dict(layers=2, dim=32, heads=2, ffn=64, seq_len=32, batch_size=8, max_steps=12, eval_every=4,
            checkpoint_every=4, log_every=2, keep=2, eval_batches=2, device="cpu")
TINY_ARGS = ["--layers", "2", "--dim", "32", "--heads", "2", "--ffn", "64", "--seq-len", "32", "--batch-size", "8",
             "--eval-every", "4", "--log-every", "2", "--eval-batches", "2", "--device", "cpu"]


def tiny(**kw) -> PretrainConfig:
    return PretrainConfig(**{**TINY, **kw})


def test_tiny_run_writes_checkpoints_metrics_plot_and_record(lm_ws):
    result = pretrain(lm_ws, tiny(), seed=1)
    folder = lm_ws.root / "runs" / "mlm"
    assert result.folder == folder and not result.skipped
    ck = folder / "checkpoints"
    steps = sorted(p.name for p in ck.glob("step-*"))
    assert os.readlink(ck / "last") == "step-00000012" and (ck / "best").is_symlink()
    assert "step-00000012" in steps and len(set(steps) - {os.readlink(ck / "best")}) <= 2  # keep=2, best kept too
    last = ck / "step-00000012"
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json", "config.json",
                 "train.json", "manifest.json"):
        assert (last / name).is_file(), name
    weights = load_file(last / "model.safetensors")
    assert "embeddings.tokens.weight" in weights and not any("_orig_mod" in k for k in weights)
    assert json.loads((last / "config.json").read_text())["dim"] == 32
    state = json.loads((last / "state.json").read_text())
    assert state["step"] == 12 and len(state["python_rng"][1]) == 625 and len(state["numpy_rng"]["keys"]) == 624
    train = [m for m in metrics(folder) if "split" not in m]
    dev = [m for m in metrics(folder) if m.get("split") == "dev"]
    assert [m["step"] for m in train] == [2, 4, 6, 8, 10, 12]
    assert all({"step", "loss", "lr", "tokens_per_s"} <= set(m) for m in train)
    assert train[-1]["loss"] < train[0]["loss"]  # it learns
    assert [m["step"] for m in dev][:3] == [4, 8, 12] and dev[-1]["perplexity"] == pytest.approx(np.exp(dev[-1]["loss"]), rel=1e-4)
    assert (folder / "loss.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("vocab.txt", "meta.json", "config.json", "report.json"):
        assert (folder / name).is_file()
    record = lm_ws.last_record("pretrain:mlm")
    assert record["params"]["dim"] == 32 and {i["path"] for i in record["inputs"]} >= {"data/processed/train.parquet", "data/processed/vocab.txt"}
    assert record["metrics"]["steps"] == 12 and "dev_loss" in record["metrics"]
    assert any(o["path"].endswith("model.safetensors") for o in record["outputs"])
    # unchanged inputs and options: skipped; other options on the same run: refused
    assert pretrain(lm_ws, tiny(), seed=1).skipped
    with pytest.raises(UserError, match="--resume auto"):
        pretrain(lm_ws, tiny(lr=2e-3), seed=1)


def test_packing_blocks_start_with_cls_and_separate_documents(tmp_path):
    vocab = Vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"], [0] * 8)
    path = write_split(tmp_path, "train", [{"id": i, "text": "", "tokens": t} for i, t in enumerate((["a", "b"], ["c", "x", "a"], ["b"], ["c"]))])
    blocks = encode_blocks(path, WordEncoder(vocab=vocab), 4)
    # stream: a b SEP c UNK a SEP b SEP c SEP -> bodies of 3 after [CLS], the last one padded
    assert len(blocks) == 4 and blocks.tokens == 11 and blocks.ids.dtype == np.uint16
    assert blocks[:].tolist() == [[2, 5, 6, 3], [2, 7, 1, 5], [2, 3, 6, 3], [2, 7, 3, 0]]
    assert blocks[np.array([3, 0])].tolist() == [[2, 7, 3, 0], [2, 5, 6, 3]] and blocks[:].dtype == np.int32
    assert blocks.starts[:].tolist() == [[1] * 4] * 4  # one token per word: every token starts one


def test_bert_masking_proportions_and_specials():
    vocab = Vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)], [0] * 100)
    rng = np.random.default_rng(0)
    blocks = rng.integers(5, 100, size=(64, 128)).astype(np.int32)
    blocks[:, 0], blocks[:, 60], blocks[:, 90] = 2, 3, 1  # CLS, SEP, UNK are never chosen
    task = MLMTask(blocks, None, batch_size=64, seed=3, vocab=vocab)
    batch = task.batch(0, 0, slice(None))
    chosen = batch["labels"] != -100
    assert not chosen[:, [0, 60, 90]].any()
    share = chosen.float().mean().item() * 128 / 125
    assert 0.14 < share < 0.16
    original = batch["labels"][chosen]
    shown = batch["ids"][chosen]
    masked = (shown == 4).float().mean().item()
    kept = (shown == original).float().mean().item()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.12
    # the same rows get the same masks whichever processes or parts ask for them
    halves = [task.batch(0, 0, slice(0, 32)), task.batch(0, 0, slice(32, 64))]
    assert torch.equal(torch.cat([h["labels"] for h in halves]), batch["labels"])


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = tiny(lr=1e-3, warmup=10, min_lr=0.1)
    lrs = [learning_rate(cfg, s, schedule_progress(s, 100)) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(1e-4, rel=0.01)
    assert learning_rate(tiny(warmup=0.5), 0, schedule_progress(0, 10)) == pytest.approx(tiny().lr / 5)


def test_a_time_limit_keys_the_schedule_to_the_clock():
    cfg = tiny(lr=1e-3, warmup=0.1, min_lr=0.0)
    # no step limit: the share of the time spent is the schedule's progress
    assert schedule_progress(5, None, elapsed=30, limit=600) == pytest.approx(0.05)
    assert learning_rate(cfg, 5, schedule_progress(5, None, 30, 600)) == pytest.approx(0.5e-3)  # half-way up the warm-up
    assert learning_rate(cfg, 99, schedule_progress(99, None, 60, 600)) == pytest.approx(1e-3)  # the peak, at 10%
    assert learning_rate(cfg, 500, schedule_progress(500, None, 330, 600)) == pytest.approx(0.5e-3)  # cosine half-way
    assert learning_rate(cfg, 900, schedule_progress(900, None, 600, 600)) == 0.0  # zero at the deadline
    # with both limits the one that will end the run first drives it: a fast machine that
    # reaches the step limit early anneals by steps, a slow one by the clock
    assert schedule_progress(49, 100, elapsed=10, limit=600) == pytest.approx(0.5)
    assert schedule_progress(9, 100, elapsed=300, limit=600) == pytest.approx(0.5)


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("1h30m", 5400), ("2", 2), ("", None)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_causal_run_generates_chinese_without_spaces(lm_ws, run_cli):
    pretrain(lm_ws, tiny(objective="clm", max_steps=8), name="gpt", seed=1)
    result = run_cli(["generate", "这家酒店", "--run", "gpt", "--max-tokens", "6", "--seed", "3"], lm_ws.root)
    assert result.exit_code == 0, result.output
    text = result.output.strip()
    assert text.startswith("这家酒店") and " " not in text and len(text) > len("这家酒店")
    again = run_cli(["generate", "这家酒店", "--run", "gpt", "--max-tokens", "6", "--seed", "3"], lm_ws.root)
    assert again.output == result.output  # seeded
    greedy = run_cli(["generate", "这家酒店", "--run", "gpt", "--temperature", "0", "--max-tokens", "4"], lm_ws.root)
    assert greedy.exit_code == 0
    pretrain(lm_ws, tiny(max_steps=2, eval_every=0), name="bert", seed=1)
    refused = run_cli(["generate", "这家酒店", "--run", "bert"], lm_ws.root)
    assert refused.exit_code == 2 and "masked LM" in refused.output and "--objective clm" in refused.output


def test_bf16_mixed_trains(lm_ws):
    result = pretrain(lm_ws, tiny(precision="bf16-mixed", max_steps=4, eval_every=2), name="bf16", seed=1)
    assert np.isfinite(result.report["train_loss"]) and result.report["precision"] == "bf16-mixed"


def test_init_embeddings_reports_coverage_and_checks_the_width(lm_ws, run_cli):
    from bigmodel_cli.embeddings.embed import embed
    from bigmodel_cli.workspace.config import EmbedConfig

    embed(lm_ws, EmbedConfig(dim=32, epochs=1, min_count=1, workers=1), name="w2v", seed=1)
    result = pretrain(lm_ws, tiny(init_embeddings="w2v", max_steps=2), name="init", seed=1)
    cover = result.report["init_embeddings"]
    assert cover["name"] == "w2v" and 0.3 < cover["coverage"] <= 1 and cover["covered"] > 100
    bad = run_cli(["pretrain", *TINY_ARGS, "--dim", "64", "--init-embeddings", "w2v", "--name", "x"], lm_ws.root)
    assert bad.exit_code == 2
    assert "have 32 dimensions but the model is 64 wide" in bad.output and "--dim 32" in bad.output


# -- bad input ------------------------------------------------------------------------------
def test_missing_processed_data_says_run_preprocess(ws, run_cli):
    result = run_cli(["pretrain"], ws.root)
    assert result.exit_code == 2 and "bigmodel preprocess" in result.output and "Traceback" not in result.output


def test_all_option_problems_at_once(lm_ws, run_cli):
    result = run_cli(["pretrain", "--dim", "30", "--heads", "4", "--lr", "-1", "--batch-size", "0", "--max-steps", "-5",
                      "--seq-len", "600"], lm_ws.root)
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    for piece in ("--heads (4) must divide --dim (30)", "--lr must be a positive number", "--batch-size must be a positive",
                  "--max-steps must be 0 or more", "--seq-len (600) is longer than the position table"):
        assert piece in out, piece
    assert len(result.output.strip().splitlines()) <= 3 and not (lm_ws.root / "runs" / "mlm").exists()


def test_corpus_smaller_than_one_batch(lm_ws, run_cli):
    result = run_cli(["pretrain", *TINY_ARGS, "--batch-size", "4096"], lm_ws.root)
    assert result.exit_code == 2 and "fewer than one batch" in result.output and "lower --batch-size" in result.output


def test_no_gpu_for_device_cuda(lm_ws, run_cli):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = run_cli(["pretrain", *TINY_ARGS, "--device", "cuda", "--max-steps", "2"], lm_ws.root)
    assert result.exit_code == 2 and "no CUDA GPU" in result.output and "--device cpu" in result.output


def test_corrupt_checkpoint_on_resume_is_named_and_others_kept(lm_ws, run_cli):
    pretrain(lm_ws, tiny(eval_every=0), seed=1)
    ck = lm_ws.root / "runs" / "mlm" / "checkpoints"
    bad = ck / "step-00000012" / "optimizer.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    before = sorted(p.name for p in ck.iterdir())
    result = run_cli(["pretrain", *TINY_ARGS, "--seed", "1", "--max-steps", "16", "--resume", "auto"], lm_ws.root)
    assert result.exit_code == 2
    assert "step-00000012/optimizer.safetensors: corrupt or truncated" in result.output
    assert sorted(p.name for p in ck.iterdir()) == before
    ok = run_cli(["pretrain", *TINY_ARGS, "--seed", "1", "--max-steps", "16", "--resume", "checkpoints/step-00000008"],
                 lm_ws.root)
    assert ok.exit_code == 0, ok.output
    assert os.readlink(ck / "last") == "step-00000016"


# -- crash recovery and distributed (subprocesses) ------------------------------------------------------
SIGNAL_AT_STEP = str(Path(__file__).with_name("signal_at_step.py"))


def _cli(ws, *args, env=None, check=True, signal_at: tuple[int, str] | None = None):
    """`bigmodel pretrain` in a subprocess; signal_at=(step, 'SIGKILL') stops it after that step."""
    start = [SIGNAL_AT_STEP, str(signal_at[0]), signal_at[1]] if signal_at else ["-m", "bigmodel_cli"]
    proc = subprocess.run([sys.executable, *start, "pretrain", "-w", str(ws.root), *TINY_ARGS, *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(lm_ws):
    common = ["--max-steps", "20", "--checkpoint-every", "5", "--eval-every", "5", "--dropout", "0.1"]
    _cli(lm_ws, *common, "--name", "straight")
    killed = _cli(lm_ws, *common, "--name", "crash", signal_at=(13, "SIGKILL"), check=False)
    assert killed.returncode == -9
    crash = lm_ws.root / "runs" / "crash"
    assert os.readlink(crash / "checkpoints" / "last") == "step-00000010"
    _cli(lm_ws, *common, "--name", "crash", "--resume", "auto")
    a = load_file(lm_ws.root / "runs" / "straight" / "checkpoints" / "step-00000020" / "model.safetensors")
    b = load_file(crash / "checkpoints" / "step-00000020" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("tokens_per_s", "elapsed_s")} for m in ms]  # noqa: E731
    assert strip(metrics(crash)) == strip(metrics(lm_ws.root / "runs" / "straight"))
    record = lm_ws.last_record("pretrain:crash")
    assert record["metrics"]["steps"] == 20


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(lm_ws):
    common = ["--max-steps", "6", "--log-every", "1", "--dropout", "0", "--eval-every", "3"]
    _cli(lm_ws, *common, "--name", "one")
    two = _cli(lm_ws, *common, "--name", "two", "--nproc", "2")
    one_m = [m for m in metrics(lm_ws.root / "runs" / "one") if "split" not in m]
    two_m = [m for m in metrics(lm_ws.root / "runs" / "two") if "split" not in m]
    assert [m["step"] for m in two_m] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(one_m, two_m):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-5)
    a = load_file(lm_ws.root / "runs" / "one" / "checkpoints" / "last" / "model.safetensors")
    b = load_file(lm_ws.root / "runs" / "two" / "checkpoints" / "last" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert json.loads((lm_ws.root / "runs" / "two" / "report.json").read_text())["world_size"] == 2
    assert two.returncode == 0


# -- the loop's stopping rules and accumulation ------------------------------------------------
def test_accumulation_gives_the_same_step_as_one_batch(lm_ws):
    one = pretrain(lm_ws, tiny(max_steps=3, dropout=0.0, eval_every=0), name="acc1", seed=1)
    two = pretrain(lm_ws, tiny(max_steps=3, dropout=0.0, eval_every=0, accumulate=4), name="acc4", seed=1)
    a = load_file(one.folder / "checkpoints" / "last" / "model.safetensors")
    b = load_file(two.folder / "checkpoints" / "last" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert metrics(one.folder)[-1]["loss"] == pytest.approx(metrics(two.folder)[-1]["loss"], rel=1e-5)


def test_early_stopping_and_max_time(lm_ws, monkeypatch):
    calls = []

    def worse_each_time(self, model, autocast):
        calls.append(1)
        return {"loss": float(len(calls)), "perplexity": 1.0, "accuracy": 0.0}

    monkeypatch.setattr(MLMTask, "evaluate", worse_each_time)
    result = pretrain(lm_ws, tiny(max_steps=40, eval_every=2, early_stopping=3), name="early", seed=1)
    assert result.report["steps"] == 8 and result.report["stop_reason"].startswith("early stopping")
    assert os.readlink(result.folder / "checkpoints" / "best") == "step-00000002"
    timed = pretrain(lm_ws, tiny(max_steps=10_000, eval_every=0, max_time="0.05s"), name="timed", seed=1)
    assert timed.report["stop_reason"] == "max time (0.05s)" and timed.report["steps"] < 10_000
    assert os.readlink(timed.folder / "checkpoints" / "last") == f"step-{timed.report['steps']:08d}"
    assert timed.report["dev"]["loss"] > 0  # a run stopped by time is still scored on dev


def test_status_lists_the_run(lm_ws, run_cli):
    pretrain(lm_ws, tiny(max_steps=4), seed=1)
    result = run_cli(["status"], lm_ws.root)
    assert "pretrain:mlm" in result.output and "dev_loss" in result.output


@pytest.mark.slow
def test_compiled_run_saves_plain_names_and_resumes_uncompiled(lm_ws):
    compiled = pretrain(lm_ws, tiny(max_steps=2, eval_every=0, compile=True), name="compiled", seed=1)
    weights = load_file(compiled.folder / "checkpoints" / "last" / "model.safetensors")
    assert weights and not any("_orig_mod" in k for k in weights)
    resumed = pretrain(lm_ws, tiny(max_steps=4, eval_every=0), name="compiled", seed=1, resume="auto")
    assert resumed.report["steps"] == 4 and resumed.report["resumed_from"].endswith("step-00000002")


def test_encoded_corpus_is_shared_by_runs_and_rebuilt_when_the_split_changes(lm_ws):
    cache = lm_ws.meta / "cache" / "ids"
    pretrain(lm_ws, tiny(max_steps=2), seed=1)
    files = sorted(cache.iterdir())
    assert [p.name.split("-")[:2] for p in files if p.suffix == ".json"] == [["processed", "dev"], ["processed", "train"]]
    times = {p: p.stat().st_mtime_ns for p in files}
    # another run on the same data and vocabulary maps the same files: nothing is encoded again
    pretrain(lm_ws, tiny(max_steps=2, seq_len=16), name="other", seed=1)
    assert {p: p.stat().st_mtime_ns for p in sorted(cache.iterdir())} == times
    meta = json.loads(next(p for p in files if p.name.startswith("processed-train") and p.suffix == ".json").read_text())
    assert meta["dtype"] == "uint16" and meta["tokens"] > 0
    # a changed split is encoded afresh, and its old encoding goes
    records = read_split(lm_ws.processed, "train")
    write_split(lm_ws.processed, "train", records + records[:1])
    pretrain(lm_ws, tiny(max_steps=2), name="third", seed=1)
    trains = [p for p in cache.iterdir() if p.name.startswith("processed-train") and p.suffix == ".json"]
    assert len(trains) == 1 and json.loads(trains[0].read_text())["tokens"] > meta["tokens"]


def test_a_damaged_encoding_in_the_cache_is_encoded_again(lm_ws):
    cache = lm_ws.meta / "cache" / "ids"
    first = pretrain(lm_ws, tiny(max_steps=2), seed=1)
    ids = next(cache.glob("processed-train-*.ids.bin"))
    whole = ids.read_bytes()
    ids.write_bytes(whole[: len(whole) // 2])  # cut short, as by a full disk or a hand
    again = pretrain(lm_ws, tiny(max_steps=2), name="again", seed=1)
    assert ids.read_bytes() == whole
    assert again.report["train_loss"] == first.report["train_loss"]


def test_prune_removes_only_the_step_folders_it_names(tmp_path):
    from bigmodel_cli.model import checkpoint

    for step in (1, 2, 3):
        (tmp_path / checkpoint.step_name(step)).mkdir()
    mine = tmp_path / "step-mine"  # a user's folder that merely starts like one
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    checkpoint.prune(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003", "step-mine"]
    assert (mine / "notes.txt").read_text() == "keep me"
