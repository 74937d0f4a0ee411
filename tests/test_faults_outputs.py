"""Issue #17, the outputs of evaluate, explain and generate: labels and words from users' data
drawn, tabled and echoed literally; files that are small, named apart and never lost; stdout
that holds only machine output when asked for it; a font for Chinese or a warning."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest
import torch

from bigmodel_cli.evaluate import classification_metrics, plot_confusion, plot_reliability, render_markdown
from bigmodel_cli.fileio import write_json
from bigmodel_cli.model import ModelConfig, Transformer
from bigmodel_cli.vocab import SPECIAL_TOKENS

NASTY = ["$\\frac$", "a|b <i>x</i> & *y*"]  # mathtext that does not parse; a pipe, HTML and emphasis
FILLER = [f"w{i}" for i in range(40)]
WORDS = list(SPECIAL_TOKENS) + FILLER + ["good", "bad"]


def _report(labels: list[str]) -> dict:
    """A classifier report as evaluate builds it, on made-up predictions."""
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    m = {**classification_metrics(y, probs, labels, 5), "examples_per_s": 10.0}
    b = {**classification_metrics(y, probs[:, ::-1], labels, 5), "examples_per_s": 20.0, "C": 1.0}
    return {"run": "classifier", "kind": "classifier", "split": "test", "checkpoint": "runs/classifier/checkpoints/step-1",
            "labels": labels, "documents": 4, "scored": 4, "model": m, "baseline": b,
            "difference": {k: m[k] - b[k] for k in m if isinstance(m[k], float)}, "speed_ratio": 2.0,
            "warnings": [f"1 test document(s) carry labels unseen in training: {labels[1]} (1)"], "verdict": "v"}


# -- evaluate -------------------------------------------------------------------------------------
def test_plots_draw_labels_with_dollar_signs_literally(tmp_path):
    plot_confusion({"$run$": [[1, 0], [1, 2]], "TF-IDF + LR": [[1, 0], [0, 3]]}, NASTY, tmp_path / "c.png")
    plot_reliability({"$run$": _report(NASTY)["model"]["reliability"]}, tmp_path / "r.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_report_md_escapes_labels_in_tables_and_warnings():
    page = render_markdown(_report(NASTY))
    assert "<i>" not in page and "&lt;i&gt;x&lt;/i&gt; &amp; \\*y\\*" in page
    assert sum("a\\|b" in line for line in page.splitlines()) == 4  # per class, confusion header and row, warning
    tables, block = [], []
    for line in page.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            tables.append(block)
            block = []
    assert len(tables) == 3
    for table in tables:  # every row of a table has as many cells as its header: no pipe ended a cell early
        assert len({row.replace("\\|", "").count("|") for row in table}) == 1, table


def test_terminal_report_shows_control_characters_spelled_out(capsys):
    from bigmodel_cli.cli.evaluate import print_report

    report = _report(["\x1b[2Jneg", "[bold]pos"])
    print_report(report)
    out = capsys.readouterr().out
    assert "\x1b[2J" not in out and "\\x1b[2Jneg" in out and "[bold]pos" in out


def test_confusion_plot_with_chinese_labels_and_no_font_warns(tmp_path, monkeypatch):
    from matplotlib import font_manager

    monkeypatch.setattr(font_manager.fontManager, "ttflist", [f for f in font_manager.fontManager.ttflist if "CJK" not in f.name])
    with _no_warnings():
        assert plot_confusion({"m": [[1, 0], [0, 1]]}, ["正面", "负面"], tmp_path / "c.png") is False
    assert plot_confusion({"m": [[1, 0], [0, 1]]}, ["pos", "neg"], tmp_path / "c.png") is True


class _no_warnings:
    """No warning escapes (matplotlib warns once per missing glyph)."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self.caught = self._catch.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        assert not [str(w.message) for w in self.caught if "Glyph" in str(w.message)]


def test_an_installed_cjk_font_is_found_and_used(tmp_path, monkeypatch):
    import dataclasses

    import matplotlib
    from matplotlib import font_manager

    from bigmodel_cli.plots import cjk_family, text_font

    base = next(f for f in font_manager.fontManager.ttflist if f.name == "DejaVu Sans")
    fake = dataclasses.replace(base, name="Noto Sans CJK SC")
    monkeypatch.setattr(font_manager.fontManager, "ttflist", [*font_manager.fontManager.ttflist, fake])
    assert cjk_family() == "Noto Sans CJK SC"
    with text_font(["正面"]) as drawable:
        assert drawable and matplotlib.rcParams["font.sans-serif"][0] == "Noto Sans CJK SC"
    assert matplotlib.rcParams["font.sans-serif"][0] != "Noto Sans CJK SC"  # only within
