"""Explanations as files people can share: one self-contained HTML page (inline CSS and
SVG, no scripts or fonts fetched), PNG heatmaps (matplotlib) and JSON."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.explain import SIGNED, Explanation

PER_HEAD_LIMIT = 64  # beyond this many tokens, the page shows head-averaged maps only (size)


def _color(score: float, scale: float, signed: bool) -> str:
    a = min(1.0, abs(score) / scale) if scale > 0 else 0.0
    red = score >= 0 or not signed
    return f"rgba({'220,38,38' if red else '37,99,235'},{a:.3f})"


def _scale(values: list[float]) -> float:
    return max((abs(v) for v in values), default=0.0)


def token_row(exp: Explanation, method: str) -> str:
    scores = exp.scores[method]
    scale = _scale(scores)
    spans = []
    for word, score, unk in zip(exp.words, scores, exp.unknown):
        title = f"{method}: {score:.4f}" + (" (outside the vocabulary: [UNK])" if unk else "")
        style = f"background:{_color(score, scale, method in SIGNED)}" + (";text-decoration:underline dotted" if unk else "")
        spans.append(f'<span class="tok" style="{style}" title="{html.escape(title)}">{html.escape(word)}</span>')
    return "".join(spans)


def attention_svg(matrix: np.ndarray, labels: list[str], size: int = 260) -> str:
    n = len(labels)
    cell = size / max(n, 1)
    top = float(matrix.max()) or 1.0
    rects = []
    for i in range(n):
        for j in range(n):
            v = float(matrix[i, j])
            if v <= 0:
                continue
            title = html.escape(f"{labels[i]} → {labels[j]}: {v:.3f}")
            rects.append(f'<rect x="{j * cell:.2f}" y="{i * cell:.2f}" width="{cell:.2f}" height="{cell:.2f}" '
                         f'fill="rgba(124,58,237,{v / top:.3f})"><title>{title}</title></rect>')
    return (f'<svg width="{size}" height="{size}" viewBox="0 0 {size} {size}" xmlns="http://www.w3.org/2000/svg">'
            f'<rect width="{size}" height="{size}" fill="#fff" stroke="#ccc"/>{"".join(rects)}</svg>')


def render_html(explanations: list[Explanation], run: str, faithfulness: dict[str, Any] | None = None) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>bigmodel explain: {html.escape(run)}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             ".tok{padding:2px 3px;margin:1px;border-radius:3px;display:inline-block}"
             "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}"
             ".maps{display:flex;flex-wrap:wrap;gap:12px}.maps figure{margin:0}.method{margin:.4em 0}"
             ".name{display:inline-block;width:7em;color:#555}</style></head><body>",
             f"<h1>Explanations: run <code>{html.escape(run)}</code></h1>",
             "<p>Red pushes towards the target, blue (signed methods: grad-input, ig) against it; "
             "darker is stronger, scaled per method. Hover a word for its score. Dotted: outside the vocabulary.</p>"]
    if faithfulness:
        parts.append(faithfulness_table_html(faithfulness))
    for n, exp in enumerate(explanations, 1):
        probs = ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in exp.probabilities.items())
        parts.append(f"<h2>{n}. {html.escape(exp.text[:120])}</h2><p>predicted <b>{html.escape(exp.predicted)}</b> "
                     f"({probs}); explaining <b>{html.escape(exp.target)}</b>, p = {exp.probability:.3f}"
                     + (f"; integrated gradients: {exp.ig_steps} steps, completeness gap {exp.ig_delta:.2e}" if exp.ig_delta is not None else "")
                     + "</p>")
        for method in exp.scores:
            parts.append(f'<div class="method"><span class="name">{method}</span>{token_row(exp, method)}</div>')
        if exp.attention:
            labels = _labels(exp)
            T = len(labels)
            parts.append("<h3>Attention (rows attend to columns)</h3><div class='maps'>")
            for li, layer in enumerate(exp.attention):
                heads = [np.mean(layer, axis=0)] + (list(layer) if T <= PER_HEAD_LIMIT else [])
                for hi, matrix in enumerate(heads):
                    caption = f"layer {li}, " + ("mean of heads" if hi == 0 else f"head {hi - 1}")
                    parts.append(f"<figure>{attention_svg(np.asarray(matrix), labels)}<figcaption>{caption}</figcaption></figure>")
            parts.append("</div>")
            if T > PER_HEAD_LIMIT:
                parts.append(f"<p>{T} tokens: per-head maps are left out to keep the page small; the JSON has the scores.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _labels(exp: Explanation) -> list[str]:
    n = len(exp.attention[0][0])
    inner = list(exp.words)
    if exp.kind == "classifier":
        return (["[CLS]"] + inner + ["[SEP]"])[:n] if len(inner) + 2 == n else [str(i) for i in range(n)]
    return (["[CLS]"] + inner)[-n:] if len(inner) + 1 >= n else [str(i) for i in range(n)]


def faithfulness_table_html(table: dict[str, Any]) -> str:
    rows = ["<h2>Faithfulness (AOPC over the top 10%..50% of words)</h2><table><tr><th>method</th>"
            "<th>comprehensiveness ↑</th><th>sufficiency ↓</th><th>better than random</th></tr>"]
    for method, e in table.items():
        verdict = "" if method == "random" else ("yes" if e.get("beats_random") else "<b>no</b>")
        rows.append(f"<tr><td>{method}</td><td>{e['comprehensiveness']:.4f}</td><td>{e['sufficiency']:.4f}</td><td>{verdict}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def write_png(exp: Explanation, path: Path) -> bool:
    """A heatmap, one row per method, one column per word. Returns False when no installed
    font can draw the words (then the columns are numbered and the page/JSON has the words)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    methods = list(exp.scores)
    data = np.array([np.asarray(exp.scores[m]) / (_scale(exp.scores[m]) or 1.0) for m in methods])
    drawable = _cjk_font(font_manager, exp.words)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(exp.words) + 2), 0.5 * len(methods) + 1.6), dpi=110)
    ax.imshow(data, cmap="coolwarm", vmin=-1, vmax=1, aspect="auto")
    ax.set_yticks(range(len(methods)), methods)
    labels = exp.words if drawable else [str(i + 1) for i in range(len(exp.words))]
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontproperties=drawable if drawable not in (True, None) else None)
    ax.set_title(f"{exp.kind}: {exp.target} (p={exp.probability:.3f})")
    fig.tight_layout()
    from bigmodel_cli.fileio import atomic_write

    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)
    return bool(drawable)


def _cjk_font(font_manager, words: list[str]):
    """True when the default font draws every character; a CJK font's properties when one is
    installed and needed; None when the words cannot be drawn."""
    if all(ord(c) < 0x2E80 for w in words for c in w):
        return True
    for entry in font_manager.fontManager.ttflist:
        if any(k in entry.name for k in ("CJK", "WenQuanYi", "Hei", "Song", "Ming", "Gothic", "PingFang", "YaHei")):
            return font_manager.FontProperties(fname=entry.fname)
    return None
