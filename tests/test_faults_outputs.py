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

from bigmodel_cli.data.vocab import SPECIAL_TOKENS
from bigmodel_cli.evaluation.evaluate import (
    classification_metrics,
    plot_confusion,
    plot_reliability,
    render_markdown,
)
from bigmodel_cli.fileio import write_json
from bigmodel_cli.model.transformer import ModelConfig, Transformer

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

    from bigmodel_cli.evaluation.plots import cjk_family, text_font

    base = next(f for f in font_manager.fontManager.ttflist if f.name == "DejaVu Sans")
    fake = dataclasses.replace(base, name="Noto Sans CJK SC")
    monkeypatch.setattr(font_manager.fontManager, "ttflist", [*font_manager.fontManager.ttflist, fake])
    assert cjk_family() == "Noto Sans CJK SC"
    with text_font(["正面"]) as drawable:
        assert drawable and matplotlib.rcParams["font.sans-serif"][0] == "Noto Sans CJK SC"
    assert matplotlib.rcParams["font.sans-serif"][0] != "Noto Sans CJK SC"  # only within


# -- explain --------------------------------------------------------------------------------------
def _classifier(max_positions: int = 64, layers: int = 2, heads: int = 2, labels=("neg", "pos"), seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=len(WORDS), layers=layers, dim=16, heads=heads, ffn=32,
                                   max_positions=max_positions, num_labels=len(labels), labels=list(labels), lm_head=False))


@pytest.fixture
def cls_ws(ws, save_run):
    """A random classifier that was finetuned with max_len 16 (runs/cls/train.json), though its
    position table holds 64."""
    folder = save_run(ws, "cls", _classifier(), WORDS)
    write_json(folder / "train.json", {"max_len": 16})
    return ws


def _long_text(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(FILLER + ["good", "bad"]) for _ in range(n))


def test_explain_reads_a_long_text_as_predict_does(cls_ws):
    from bigmodel_cli.explain.explain import explain_texts
    from bigmodel_cli.inference.predict import Item, Predictor

    text = _long_text(40)
    _, _, results, _ = explain_texts(cls_ws, [text], run="cls", methods=["saliency"])
    exp = results[0]
    assert len(exp.words) == 16 - 2 and exp.words == text.split()[:14]
    predicted = Predictor(cls_ws.root / "runs" / "cls").records([Item(text)])[0]
    assert exp.predicted == predicted["label"]
    for label, p in predicted["probs"].items():
        assert exp.probabilities[label] == pytest.approx(p, abs=1e-5)


def test_html_option_naming_a_folder_writes_the_page_inside_it(cls_ws, run_cli, tmp_path):
    folder = tmp_path / "pages"
    folder.mkdir()
    result = run_cli(["explain", "w1 w2 good", "--method", "saliency", "--html", folder], cls_ws.root)
    assert result.exit_code == 0, result.output
    pages = list(folder.glob("text-*.html"))
    assert len(pages) == 1 and pages[0].read_text(encoding="utf-8").startswith("<!doctype html>")
    (tmp_path / "a-file").write_text("mine\n")
    bad = run_cli(["explain", "w1 w2 good", "--method", "saliency", "--html", tmp_path / "a-file" / "p.html"], cls_ws.root)
    assert bad.exit_code == 2 and "Traceback" not in bad.output and "a-file" in bad.output
    assert len(bad.output.strip().splitlines()) == 1 and (tmp_path / "a-file").read_text() == "mine\n"


def test_json_prints_one_object_per_text_and_nothing_else_on_stdout(cls_ws, run_cli, tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("w1 good w2\nw3 bad\nw4 w5 w6 good\n", encoding="utf-8")
    result = run_cli(["explain", "--input", path, "--method", "saliency,attention", "--json", "--faithfulness"], cls_ws.root)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and [json.loads(line)["text"] for line in lines] == ["w1 good w2", "w3 bad", "w4 w5 w6 good"]
    assert "written:" in result.stderr and "faithfulness" in result.stderr


def test_split_limit_draws_a_seeded_sample_not_the_first_lines(cls_ws, helpers, run_cli):
    from bigmodel_cli.explain.explain import read_split_texts

    # a split sorted by label: the first 50 lines are all 'neg'
    records = [{"id": i, "text": f"w{i % 40} bad {i}", "tokens": [f"w{i % 40}", "bad", str(i)], "label": "neg"} for i in range(50)] + \
              [{"id": i, "text": f"w{i % 40} good {i}", "tokens": [f"w{i % 40}", "good", str(i)], "label": "pos"} for i in range(50, 100)]
    helpers.write_split(cls_ws.processed, "test", records)
    texts = read_split_texts(cls_ws, "test", 10, seed=1)
    assert len(texts) == 10 and texts == read_split_texts(cls_ws, "test", 10, seed=1)
    assert any("good" in t for t in texts) and any("bad" in t for t in texts)
    order = [int(t.split()[-1]) for t in texts]
    assert order == sorted(order)  # file order kept
    assert texts != read_split_texts(cls_ws, "test", 10, seed=2)
    assert len(read_split_texts(cls_ws, "test", None)) == 100
    result = run_cli(["explain", "--split", "test", "--limit", "10", "--seed", "1", "--method", "saliency", "--json"], cls_ws.root)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["text"] for line in result.stdout.splitlines()] == texts
    assert (cls_ws.root / "explanations" / "cls" / "test-10-seed1.html").is_file()


def test_faithfulness_random_is_the_mean_of_ten_draws_with_an_interval(cls_ws):
    from bigmodel_cli.explain.explain import explain_texts, load_explainer

    texts = [_long_text(12, seed=s) for s in range(4)]
    _, _, results, table = explain_texts(cls_ws, texts, run="cls", methods=["saliency"], faithfulness=True)
    rand = table["random"]
    assert rand["draws"] == 10
    for key in ("comprehensiveness", "sufficiency"):
        low, high = rand[f"{key}_ci95"]
        assert low < rand[key] < high
    _, explainer, _ = load_explainer(cls_ws, "cls")
    one = explainer.faithfulness(results[0].words, results[0].scores, results[0].target_index, seed=0)
    draws = np.asarray(one["random"]["draws"])
    assert draws.shape == (10, 2) and len({tuple(d) for d in draws.round(8)}) > 1  # the draws differ
    assert one["random"]["comprehensiveness"] == pytest.approx(draws[:, 0].mean())


def test_png_draws_labels_with_dollar_signs(ws, save_run, run_cli):
    save_run(ws, "cls", _classifier(labels=("$\\frac$", "a$b$c")), WORDS)
    result = run_cli(["explain", "w1 good w2", "--method", "saliency", "--png", "--target", "$\\frac$"], ws.root)
    assert result.exit_code == 0, result.output
    png = next((ws.root / "explanations" / "cls").glob("text-*-1.png"))
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_terminal_view_shows_control_characters_in_words_spelled_out(ws, save_run, run_cli):
    save_run(ws, "cls", _classifier(labels=("\x1b[31mneg", "pos")), WORDS)
    result = run_cli(["explain", "w1 good", "--method", "saliency", "--target", "\x1b[31mneg"], ws.root)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\\x1b[31mneg" in result.output


def test_png_of_chinese_words_without_a_cjk_font_warns_once(ws, save_run, run_cli, monkeypatch):
    from matplotlib import font_manager

    monkeypatch.setattr(font_manager.fontManager, "ttflist", [f for f in font_manager.fontManager.ttflist if "CJK" not in f.name])
    save_run(ws, "cls", _classifier(), WORDS[:-2] + ["好", "坏"])
    result = run_cli(["explain", "w1 好 w2", "--method", "saliency", "--png"], ws.root)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "apt-get install fonts-noto-cjk" in warnings[0]
    plain = run_cli(["explain", "w1 good w2", "--method", "saliency", "--png"], ws.root)
    assert plain.exit_code == 0 and "fonts-noto-cjk" not in plain.output


def _synthetic(n_words: int, layers: int, heads: int, seed: int = 0):
    from bigmodel_cli.explain.explain import METHODS
    from bigmodel_cli.explain.explanation import Explanation

    rng = np.random.default_rng(seed)
    T = n_words + 2
    words = [f"word{i}" for i in range(n_words)]
    exp = Explanation("text " * n_words, words, [False] * n_words, "classifier", "pos", 1, 0.9, "pos", {"pos": 0.9, "neg": 0.1},
                      scores={m: rng.normal(size=n_words).tolist() for m in METHODS}, ig_delta=0.01, ig_steps=50)
    exp.attention = [[rng.dirichlet(np.ones(T), size=T) for _ in range(heads)] for _ in range(layers)]
    return exp


def test_a_page_of_thirty_long_texts_is_small_and_quick():
    from bigmodel_cli.explain.render import render_html

    one = render_html([_synthetic(126, 12, 12)], "run")  # one text of 128 tokens, base size: per-head maps too
    assert len(one.encode()) < 1_000_000
    started = time.perf_counter()
    page = render_html([_synthetic(126, 12, 12, seed=s) for s in range(30)], "run")
    assert len(page.encode()) < 2_000_000 and time.perf_counter() - started < 10
    assert page.count("<svg") == 30 * 12  # per text, one head-averaged map per layer
    assert "word5</text>" in page  # maps carry word labels


def test_explain_page_of_a_600_word_text(ws, save_run, run_cli):
    folder = save_run(ws, "cls", _classifier(max_positions=128, layers=4, heads=4), WORDS)
    write_json(folder / "train.json", {"max_len": 128})
    result = run_cli(["explain", _long_text(600), "--steps", "4"], ws.root)
    assert result.exit_code == 0, result.output
    page = next((ws.root / "explanations" / "cls").glob("text-*.html"))
    assert page.stat().st_size < 300_000
    assert "the 20 of 128 tokens that receive the most attention" in page.read_text(encoding="utf-8")


# -- generate -------------------------------------------------------------------------------------
def _causal_ws(ws, save_run, sep_bias: float):
    from bigmodel_cli.data.vocab import SEP

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=len(WORDS), layers=1, dim=16, heads=2, ffn=32, max_positions=128, causal=True))
    with torch.no_grad():
        model.lm_head.bias[WORDS.index(SEP)] = sep_bias
    save_run(ws, "gpt", model, WORDS)
    return ws


def test_generated_text_is_one_unwrapped_line_on_stdout(ws, save_run, run_cli):
    _causal_ws(ws, save_run, -100.0)
    result = run_cli(["generate", "w1 w2", "--max-tokens", "60", "--temperature", "0"], ws.root)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and len(result.stdout) > 150 and result.stdout.startswith("w1 w2 ")
    assert result.stderr == ""


def test_generation_that_ends_at_once_says_so(ws, save_run, run_cli):
    _causal_ws(ws, save_run, 100.0)
    result = run_cli(["generate", "w1 w2", "--temperature", "0"], ws.root)
    assert result.exit_code == 0, result.output
    assert result.stdout == "w1 w2\n"
    assert "ended the text at once" in result.stderr and "--temperature" in result.stderr


@pytest.mark.slow
def test_evaluate_end_to_end_with_labels_full_of_markup(tmp_path, run_cli):
    from classify_fixtures import SCRATCH, TINY_FINETUNE, labelled_ws, reviews

    from bigmodel_cli.training.finetune import finetune
    from bigmodel_cli.workspace.config import FinetuneConfig

    names = {"pos": "$\\frac$ good", "neg": "a|b <i>bad</i>"}
    ws = labelled_ws(tmp_path / "ws", [{"text": t, "label": names[label]} for t, label in reviews(40)])
    finetune(ws, FinetuneConfig(**{**TINY_FINETUNE, **SCRATCH}), seed=1)
    result = run_cli(["evaluate"], ws.root)
    assert result.exit_code == 0, result.output
    folder = ws.root / "reports" / "classifier-scratch" / "test"
    assert (folder / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    page = (folder / "report.md").read_text(encoding="utf-8")
    assert "<i>" not in page and "a\\|b &lt;i&gt;bad&lt;/i&gt;" in page
    assert "$\\frac$ good" in " ".join(result.output.split())  # the terminal shows the label as written


@pytest.mark.slow
def test_explain_page_of_thirty_long_texts_is_under_two_megabytes(ws, save_run, run_cli, tmp_path):
    folder = save_run(ws, "cls", _classifier(max_positions=128, layers=4, heads=4), WORDS)
    write_json(folder / "train.json", {"max_len": 128})
    path = tmp_path / "long.txt"
    path.write_text("".join(_long_text(600, seed=s) + "\n" for s in range(30)), encoding="utf-8")
    result = run_cli(["explain", "--input", path, "--limit", "30", "--method", "attention,rollout,saliency"], ws.root)
    assert result.exit_code == 0, result.output
    page = (ws.root / "explanations" / "cls" / "long-30.html").read_text(encoding="utf-8")
    assert len(page.encode()) < 2_000_000 and page.count("<h2>") == 30 and page.count("<svg") == 30 * 4


def test_a_megabyte_line_is_cut_as_predict_cuts_it(cls_ws, monkeypatch):
    from bigmodel_cli.data.tokenizer import TextPipeline
    from bigmodel_cli.explain import explain
    from bigmodel_cli.inference.predict import Item, Predictor

    seen = []
    original = TextPipeline.tokens
    monkeypatch.setattr(TextPipeline, "tokens", lambda self, text: seen.append(len(text)) or original(self, text))
    text = _long_text(300_000)  # about 1.1 million characters
    _, _, results, _ = explain.explain_texts(cls_ws, [text], run="cls", methods=["saliency"])
    predicted = Predictor(cls_ws.root / "runs" / "cls").records([Item(text)])[0]
    assert seen[0] == seen[1] < len(text) // 5  # explain segmented what predict segmented, not the whole line
    assert results[0].probabilities[predicted["label"]] == pytest.approx(predicted["score"], abs=1e-5)
