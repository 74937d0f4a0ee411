"""`bigmodel evaluate`'s statistics: the paired bootstrap intervals, McNemar's test and the
three-way verdict, on synthetic predictions with known answers, and in the report files and
the console of a real (tiny) classifier."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from classify_fixtures import classifier_ws
from sklearn.metrics import f1_score

from bigmodel_cli.evaluation import significance as sig
from bigmodel_cli.evaluation.evaluate import validate, verdict
from bigmodel_cli.workspace.config import EvaluateConfig


def predictions(n: int, accuracy: float, y: np.ndarray, seed: int, k: int = 3) -> np.ndarray:
    """Predictions right with probability `accuracy`, else a wrong label."""
    rng = np.random.default_rng(seed)
    wrong = (y + rng.integers(1, k, n)) % k
    return np.where(rng.random(n) < accuracy, y, wrong)


@pytest.fixture(scope="module")
def gold():
    return np.random.default_rng(0).integers(0, 3, 1700)


def test_clearly_better_model(gold):
    strong, weak = predictions(1700, 0.90, gold, 1), predictions(1700, 0.75, gold, 2)
    result = sig.compare(gold, strong, weak, 3, resamples=1000, seed=0)
    low, high = result["ci"]["difference"]["macro_f1"]
    assert 0 < low < high and result["outcome"] == "better"
    assert result["mcnemar"]["p_value"] < 1e-6 and result["mcnemar"]["method"] == "chi-square with continuity correction"
    report = {"difference": {"macro_f1": 0.15}, "significance": result, "speed_ratio": 40.2}
    line = verdict(report)
    assert line.startswith("better:") and f"95% CI {low:+.4f} to {high:+.4f}" in line and "McNemar p < 0.001" in line
    assert "40.2x as fast" in line


def test_clearly_worse_model(gold):
    weak, strong = predictions(1700, 0.75, gold, 2), predictions(1700, 0.90, gold, 1)
    result = sig.compare(gold, weak, strong, 3, resamples=1000, seed=0)
    assert result["ci"]["difference"]["macro_f1"][1] < 0 and result["outcome"] == "worse"
    line = verdict({"difference": {"macro_f1": -0.15}, "significance": result, "speed_ratio": 0.5})
    assert line.startswith("worse:") and "2.0x slower" in line


def test_identical_predictions_are_no_measurable_difference(gold):
    same = predictions(1700, 0.85, gold, 3)
    result = sig.compare(gold, same, same.copy(), 3, resamples=1000, seed=0)
    assert result["ci"]["difference"] == {"macro_f1": [0.0, 0.0], "accuracy": [0.0, 0.0]}
    assert result["mcnemar"]["p_value"] == 1.0 and result["outcome"] == "no measurable difference"
    line = verdict({"difference": {"macro_f1": 0.0}, "significance": result, "speed_ratio": 10.0})
    assert line.startswith("no measurable difference") and "+0.0000 to +0.0000" in line and "p = 1.000" in line


def test_interval_width_is_about_one_binomial_standard_error_each_side(gold):
    # 1,700 documents at accuracy 0.85: 1.96 * sqrt(0.85 * 0.15 / 1700) = 0.017 either side
    ours = predictions(1700, 0.85, gold, 4)
    ci = sig.compare(gold, ours, predictions(1700, 0.80, gold, 5), 3, resamples=1000, seed=0)["ci"]
    low, high = ci["model"]["accuracy"]
    assert 0.013 < (high - low) / 2 < 0.021 and low < (ours == gold).mean() < high
    low, high = ci["model"]["macro_f1"]
    assert 0.012 < (high - low) / 2 < 0.024 and low < f1_score(gold, ours, average="macro") < high


def test_same_seed_same_numbers_and_fast(gold):
    a, b = predictions(1700, 0.85, gold, 6), predictions(1700, 0.84, gold, 7)
    started = time.perf_counter()
    first = sig.compare(gold, a, b, 3, resamples=1000, seed=7)
    assert time.perf_counter() - started < 2  # vectorised: a fraction of a second when the machine is idle
    assert sig.compare(gold, a, b, 3, resamples=1000, seed=7) == first
    assert sig.compare(gold, a, b, 3, resamples=1000, seed=8)["ci"] != first["ci"]
    assert first["resamples"] == 1000 and first["seed"] == 7 and first["level"] == 0.95


def test_resampled_macro_f1_is_scikit_learns_over_the_fixed_label_set():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 1])
    p = np.array([0, 1, 1, 1, 2, 0, 2, 2])
    idx = np.array([[0, 1, 0, 1, 0, 1, 0, 1], [2, 3, 4, 5, 6, 7, 2, 3], np.arange(8)])  # the first lacks labels 1 and 2
    ours = sig.macro_f1_rows(y[idx], p[idx], 3)
    theirs = [f1_score(y[i], p[i], labels=[0, 1, 2], average="macro", zero_division=0) for i in idx]
    assert ours == pytest.approx(theirs)


def test_mcnemar_exact_when_few_discordant_pairs_chi_square_otherwise():
    model = np.array([True] * 8 + [False] * 1 + [True] * 50)
    baseline = np.array([False] * 8 + [True] * 1 + [True] * 50)
    exact = sig.mcnemar(model, baseline)
    assert exact["method"] == "exact binomial" and (exact["only_model_right"], exact["only_baseline_right"]) == (8, 1)
    assert exact["p_value"] == pytest.approx(2 * (1 + 9) / 2 ** 9)  # two-sided P(X <= 1 or X >= 8), X ~ Bin(9, 1/2)
    model = np.array([True] * 40 + [False] * 20)
    chi = sig.mcnemar(model, ~model)
    statistic = (40 - 20 - 1) ** 2 / 60
    assert chi["method"] == "chi-square with continuity correction" and chi["statistic"] == pytest.approx(statistic)
    assert chi["p_value"] == pytest.approx(math.erfc(math.sqrt(statistic / 2)))  # chi-square, 1 degree of freedom


def test_bootstrap_options_are_checked():
    problems = validate(EvaluateConfig(bootstrap_resamples=10, baseline_char_wb=1))
    assert any("bootstrap_resamples must be at least 100" in p for p in problems)
    assert any("baseline_char_wb must be 0 (off) or 2 or more" in p for p in problems)


def test_report_files_and_console_show_the_intervals(tmp_path, run_cli):
    ws = classifier_ws(tmp_path / "ws")
    result = run_cli(["evaluate"], ws.root)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    report = json.loads((ws.root / "reports" / "classifier" / "test" / "report.json").read_text())
    block = report["significance"]
    assert block["resamples"] == 1000 and block["seed"] == 0 and block["documents"] == report["scored"] == 30
    assert set(block["ci"]) == {"model", "baseline", "difference"} and 0 <= block["mcnemar"]["p_value"] <= 1
    low, high = block["ci"]["model"]["macro_f1"]
    assert low <= report["model"]["macro_f1"] <= high
    d_low, d_high = block["ci"]["difference"]["macro_f1"]
    assert d_low <= report["difference"]["macro_f1"] <= d_high
    assert block["outcome"] in sig.OUTCOMES and report["verdict"].startswith(block["outcome"])
    assert f"95% CI {d_low:+.4f} to {d_high:+.4f}" in report["verdict"] and "McNemar p" in report["verdict"]
    for piece in ("95% confidence intervals (paired bootstrap, 1,000 resamples, seed 0)", f"{low:.4f} to {high:.4f}",
                  f"{d_low:+.4f} to {d_high:+.4f}", "McNemar", f"verdict: {block['outcome']}"):
        assert piece in out, piece
    page = (ws.root / "reports" / "classifier" / "test" / "report.md").read_text()
    assert "## Is the difference real? (95% confidence intervals)" in page
    assert f"| macro f1 | {low:.4f} to {high:.4f} |" in page and f"Outcome: **{block['outcome']}**" in page
