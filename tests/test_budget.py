"""pretrain --budget: the clock ends the run and anneals the learning rate; the auto options
are chosen from the budget, the measured speed and the corpus (training/budget.py)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_fails

from bigmodel_cli.errors import UserError
from bigmodel_cli.training import budget as bud
from bigmodel_cli.training import loop as train
from bigmodel_cli.training.pretrain import pretrain
from bigmodel_cli.workspace.config import PretrainConfig

# A model small enough for the tests; what is left to auto is named by each test.
SHAPE = dict(layers=1, dim=16, heads=2, ffn=32, seq_len=32, batch_size=8, eval_every=0, checkpoint_every=0,
             log_every=1, eval_batches=1, device="cpu")
CLI_SHAPE = ["--layers", "1", "--dim", "16", "--heads", "2", "--ffn", "32", "--seq-len", "32", "--batch-size", "8",
             "--eval-every", "0", "--checkpoint-every", "0", "--eval-batches", "1", "--device", "cpu"]


@pytest.fixture
def ws(reviews_ws, copy_ws):
    return copy_ws(reviews_ws)


@pytest.fixture
def fake_clock(monkeypatch):
    """The loop's clock (and the budget's, which counts the speed probe) ticks 0.05 s per
    reading whatever the machine's load (about three readings a step)."""
    clock = iter(range(10**9))
    fake = SimpleNamespace(perf_counter=lambda: next(clock) * 0.05)
    monkeypatch.setattr(train, "time", fake)
    monkeypatch.setattr(bud, "time", fake)  # the speed probe's share of the budget, on the same clock


def lrs(folder) -> list[float]:
    return [m["lr"] for m in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if "lr" in m]


# -- the rule ------------------------------------------------------------------------------------
def choose(cfg: PretrainConfig, *, step_s: dict[str, float], corpus_tokens: int = 1_000_000, precision="32"):
    timed = []

    def time_step(size, p):
        timed.append((size, p))
        return bud.Timing(step_s[size], {"tiny": 400_000, "small": 3_200_000}[size])

    chosen, record = bud.choose(cfg, corpus_tokens=corpus_tokens, tokens_per_step=32 * 128, precision_of=lambda s: precision,
                                time_step=time_step, encoder_parameters=lambda s: {"tiny": 400_000, "small": 3_200_000}[s])
    return chosen, record, timed


def test_a_laptop_budget_trains_the_tiny_model_and_never_times_the_small_one():
    # 10 minutes at 0.14 s a step of 4,096 tokens: 17.5 M tokens, 44 per tiny parameter but 5.5 per small one
    chosen, record, timed = choose(PretrainConfig(budget="10m"), step_s={"tiny": 0.14, "small": 0.6})
    assert chosen.size == "tiny" and timed == [("tiny", "32")]
    assert record["chosen"]["size"] == "tiny" and record["measured"]["tiny"]["tokens_per_s"] == round(4096 / 0.14)
    assert record["expected_tokens"] == pytest.approx(600 / 0.14 * 4096, rel=0.01)


def test_a_long_budget_or_a_fast_machine_trains_the_small_model():
    # 3 hours at 0.3 s a small step: 150 M tokens, 46 per small parameter
    chosen, record, timed = choose(PretrainConfig(budget="3h"), step_s={"tiny": 0.05, "small": 0.3})
    assert chosen.size == "small" and [s for s, _ in timed] == ["tiny", "small"]
    # the same budget on a machine where the small step is slower does not reach 20 tokens a parameter
    assert choose(PretrainConfig(budget="3h"), step_s={"tiny": 0.05, "small": 1.2})[0].size == "tiny"


def test_dropout_is_off_while_the_budget_sees_the_corpus_fewer_than_three_times():
    big = choose(PretrainConfig(budget="10m", size="tiny"), step_s={"tiny": 0.1}, corpus_tokens=50_000_000)
    small = choose(PretrainConfig(budget="10m", size="tiny"), step_s={"tiny": 0.1}, corpus_tokens=1_000_000)
    assert big[0].dropout == 0.0 and big[1]["expected_passes"] < 1
    assert small[0].dropout == 0.1 and small[1]["expected_passes"] > 3
    # an epoch count shorter than the budget decides the passes
    capped = choose(PretrainConfig(budget="10m", size="tiny", epochs=2), step_s={"tiny": 0.1}, corpus_tokens=1_000_000)
    assert capped[0].dropout == 0.0 and capped[1]["expected_passes"] == 2


def test_explicit_options_are_never_changed_and_need_no_measurement():
    cfg = PretrainConfig(budget="10m", size="small", dropout=0.2, precision="32")
    chosen, record, timed = choose(cfg, step_s={"small": 0.5})
    assert chosen == cfg and timed == [] and record is not None and record["auto"] == []
    assert bud.auto_fields(PretrainConfig(layers=2, dim=64, dropout=0.1, precision="32")) == []


def test_precision_auto_is_bf16_only_with_bf16_units_and_a_wide_enough_model(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(bud, "has_bf16_units", lambda device: False)
    assert bud.auto_precision(cpu, 768) == "32"
    monkeypatch.setattr(bud, "has_bf16_units", lambda device: True)
    assert bud.auto_precision(cpu, bud.BF16_MIN_WIDTH) == "bf16-mixed" and bud.auto_precision(cpu, 128) == "32"


def test_a_budget_too_short_to_train_is_refused_before_the_run_folder_exists(ws):
    cfg = PretrainConfig(**SHAPE, budget="0.01s", size="tiny", precision="32")
    with pytest.raises(UserError, match=r"--budget 0.01s is too short on this machine.*one training step takes") as error:
        pretrain(ws, cfg, seed=1)
    assert "give at least --budget" in error.value.hint
    assert not (ws.root / "runs" / "mlm").exists()


# -- the clock ------------------------------------------------------------------------------------
def test_a_budget_run_spends_its_time_and_anneals_to_zero_at_the_deadline(ws, fake_clock):
    shape = {k: v for k, v in SHAPE.items() if k not in ("layers", "dim", "heads", "ffn")}
    cfg = PretrainConfig(**shape, budget="4s", precision="32", warmup=0.1)  # size and dropout: auto
    result = pretrain(ws, cfg, seed=1)
    report = result.report
    assert report["stop_reason"] == "budget (4s)" and report["epochs"] > 0
    assert report["seconds"] == pytest.approx(4 - report["auto"]["probe_seconds"], abs=0.5)
    rates = lrs(result.folder)
    assert len(rates) > 15 and max(rates) > 0.9 * cfg.lr and rates[-1] < 0.05 * cfg.lr
    assert rates.index(max(rates)) < len(rates) // 3  # warm-up, then a decay that ends at the deadline
    # the choice, with what it rests on, is in the run's options and the report
    options = json.loads((result.folder / "train.json").read_text())
    assert options["size"] == "tiny" and options["dropout"] in (0.0, 0.1) and options["auto"]["auto"] == ["size", "dropout"]
    assert report["auto"]["measured"]["tiny"]["tokens_per_s"] > 0 and report["data"]["tokens"] == report["auto"]["corpus_tokens"]


def test_a_resumed_budget_run_continues_the_same_clock(ws, fake_clock, monkeypatch):
    cfg = PretrainConfig(**{**SHAPE, "checkpoint_every": 5}, budget="4s", precision="32", size="tiny", dropout=0.0)
    hooks: list = []
    monkeypatch.setattr(train, "AFTER_STEP", hooks)

    def stop(step):
        if step == 11:  # after step 10's checkpoint
            raise KeyboardInterrupt

    hooks.append(stop)
    with pytest.raises(KeyboardInterrupt):
        pretrain(ws, cfg, seed=1)
    hooks.clear()
    resumed = pretrain(ws, cfg, seed=1, resume="auto")
    assert resumed.report["resumed_from"].endswith("step-00000010") and resumed.report["stop_reason"] == "budget (4s)"
    # the clock went on from the checkpoint's seconds: the whole run spent one budget, not two
    assert resumed.report["seconds"] == pytest.approx(4, abs=0.5)
    rates = lrs(resumed.folder)
    assert rates[-1] < 0.05 * cfg.lr and all(a >= b for a, b in zip(rates[12:], rates[13:]))


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,message", [
    ("0", "--budget must be a duration above zero"),
    ("0s", "--budget must be a duration above zero"),
    ("-5m", "--budget must be a duration such as 90s, 10m or 2h, got '-5m'"),
    ("ten minutes", "--budget must be a duration such as 90s, 10m or 2h, got 'ten minutes'"),
])
def test_a_budget_that_is_not_a_positive_duration_is_one_line_and_exit_2(ws, run_cli, value, message):
    error = assert_fails(run_cli(["pretrain", *CLI_SHAPE, "--budget", value], ws.root))
    assert message in error
    assert not (ws.root / "runs").exists() or not any((ws.root / "runs").iterdir())


def test_no_budget_needs_an_epoch_or_step_limit(ws, run_cli):
    error = assert_fails(run_cli(["pretrain", *CLI_SHAPE, "--budget", "none"], ws.root))
    assert "--epochs 0 means no limit" in error and "--budget" in error
    # with an epoch count it trains as before, by epochs
    result = run_cli(["pretrain", *CLI_SHAPE, "--budget", "none", "--max-steps", "3", "--precision", "32"], ws.root)
    assert result.exit_code == 0, result.output
    report = json.loads((ws.root / "runs" / "mlm" / "report.json").read_text())
    assert report["steps"] == 3 and report["stop_reason"] == "max steps"


def test_dropout_must_be_a_rate_or_auto():
    from bigmodel_cli.training.pretrain import validate

    assert any("--dropout must be in [0, 1), or -1 for auto, got -0.5" in p
               for p in validate(dataclasses.replace(PretrainConfig(), dropout=-0.5)))
    assert validate(PretrainConfig()) == []


def test_initial_embeddings_limit_the_sizes_to_their_width(ws):
    from bigmodel_cli.training.pretrain import _candidates

    # a budget that would choose small, when only the tiny model is as wide as the vectors
    timed = []
    chosen, _ = bud.choose(PretrainConfig(budget="3h"), corpus_tokens=10**6, tokens_per_step=4096, precision_of=lambda s: "32",
                           time_step=lambda s, p: timed.append(s) or bud.Timing({"tiny": 0.05, "small": 0.3}[s], 1),
                           encoder_parameters=lambda s: 1, candidates=("tiny",))
    assert chosen.size == "tiny" and timed == ["tiny"]
    embeddings = ws.root / "embeddings" / "w2v"
    embeddings.mkdir(parents=True)
    (embeddings / "vectors.json").write_text(json.dumps({"dim": 128}))
    (embeddings / "vectors.kv").write_text("")
    assert _candidates(ws, PretrainConfig(init_embeddings="w2v")) == ("tiny",)
    assert _candidates(ws, PretrainConfig()) == bud.CANDIDATES
