"""Is the model's difference from the baseline more than noise? Paired statistics on one split.

- A paired bootstrap over the documents: each resample draws document indices with
  replacement, the same indices for both models, so that what the two get right on the
  same hard documents cancels out of the difference. Percentile intervals of macro-F1 and
  accuracy for each model and for the difference. Macro-F1 is computed in every resample
  over the report's fixed label set (not the labels that happen to be drawn), so the
  resampled figures are the same statistic as the reported one.
- McNemar's test on the paired correctness: only the documents that exactly one of the two
  gets right carry information. Exact binomial when they are few, else chi-square with
  continuity correction.

Vectorised: the per-class counts of every resample come from one `bincount`, so 1,000
resamples of a few thousand documents take a fraction of a second.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LEVEL = 0.95
EXACT_BELOW = 25  # discordant pairs under which McNemar uses the exact binomial test
OUTCOMES = ("better", "worse", "no measurable difference")


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) document indices drawn with replacement, seeded."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def macro_f1_rows(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 over labels 0..k-1 of each row of (rows, n) gold and predicted indices;
    a label neither gold nor predicted in a row scores 0 (scikit-learn's zero_division=0)."""
    rows = y_true.shape[0]
    offset = (np.arange(rows) * k)[:, None]
    size = rows * k
    hit = (y_true == y_pred).ravel()
    tp = np.bincount((offset + y_true).ravel()[hit], minlength=size).reshape(rows, k)
    gold = np.bincount((offset + y_true).ravel(), minlength=size).reshape(rows, k)
    pred = np.bincount((offset + y_pred).ravel(), minlength=size).reshape(rows, k)
    denominator = gold + pred
    f1 = np.divide(2 * tp, denominator, out=np.zeros((rows, k)), where=denominator > 0)
    return f1.mean(axis=1)


def _interval(values: np.ndarray, level: float) -> list[float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [round(float(low), 6), round(float(high), 6)]


def paired_bootstrap(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, k: int, *, resamples: int = 1000,
                     seed: int = 0, level: float = LEVEL) -> dict[str, dict[str, list[float]]]:
    """Percentile intervals of macro-F1 and accuracy for a, for b and for a - b."""
    y_true, pred_a, pred_b = (np.asarray(v, dtype=np.int64) for v in (y_true, pred_a, pred_b))
    idx = resample_indices(len(y_true), resamples, seed)
    gold = y_true[idx]
    figures = {}
    for name, pred in (("a", pred_a), ("b", pred_b)):
        drawn = pred[idx]
        figures[name] = {"macro_f1": macro_f1_rows(gold, drawn, k), "accuracy": (drawn == gold).mean(axis=1)}
    out = {side: {key: _interval(values, level) for key, values in figures[side].items()} for side in ("a", "b")}
    out["difference"] = {key: _interval(figures["a"][key] - figures["b"][key], level) for key in ("macro_f1", "accuracy")}
    return out


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """McNemar's test of paired correctness: two-sided p-value that a and b err equally often."""
    from scipy.stats import binomtest, chi2

    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a = int((correct_a & ~correct_b).sum())
    only_b = int((~correct_a & correct_b).sum())
    discordant = only_a + only_b
    if discordant == 0:
        return {"method": "none (no discordant pairs)", "only_model_right": 0, "only_baseline_right": 0, "statistic": 0.0, "p_value": 1.0}
    if discordant < EXACT_BELOW:
        p = binomtest(only_a, discordant, 0.5).pvalue
        return {"method": "exact binomial", "only_model_right": only_a, "only_baseline_right": only_b,
                "statistic": float(only_a), "p_value": float(min(p, 1.0))}
    statistic = (abs(only_a - only_b) - 1) ** 2 / discordant
    return {"method": "chi-square with continuity correction", "only_model_right": only_a, "only_baseline_right": only_b,
            "statistic": round(float(statistic), 6), "p_value": float(chi2.sf(statistic, 1))}


def outcome(difference_ci: list[float]) -> str:
    """'better' when the whole interval of model - baseline is above 0, 'worse' when below."""
    low, high = difference_ci
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no measurable difference"


def compare(y_true: np.ndarray, pred_model: np.ndarray, pred_baseline: np.ndarray, k: int, *, resamples: int, seed: int) -> dict[str, Any]:
    """The report's significance block: bootstrap intervals, McNemar, and the three-way outcome
    on macro-F1."""
    cis = paired_bootstrap(y_true, pred_model, pred_baseline, k, resamples=resamples, seed=seed)
    cis = {"model": cis["a"], "baseline": cis["b"], "difference": cis["difference"]}
    y_true = np.asarray(y_true)
    return {"method": "paired bootstrap over documents (percentile intervals); McNemar's test on paired correctness",
            "level": LEVEL, "resamples": resamples, "seed": seed, "documents": int(len(y_true)), "ci": cis,
            "mcnemar": mcnemar(np.asarray(pred_model) == y_true, np.asarray(pred_baseline) == y_true),
            "outcome": outcome(cis["difference"]["macro_f1"])}
