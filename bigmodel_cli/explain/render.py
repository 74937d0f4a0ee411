"""Explanations as files people can share: one self-contained HTML page (inline CSS and
SVG, no scripts or fonts fetched), PNG heatmaps (matplotlib) and JSON."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.explain.explanation import SIGNED, Explanation

TOP_TOKENS = 20  # attention maps show the tokens that receive the most attention (page size)
SHADES = 8  # colour steps of the word rows and the attention maps


def _shade(score: float, scale: float) -> int:
    return min(SHADES, round(abs(score) / scale * SHADES)) if scale > 0 else 0


def _scale(values: list[float]) -> float:
    return max((abs(v) for v in values), default=0.0)


def _css() -> str:
    steps = "".join(f".r{k}{{background:rgba(220,38,38,{k / SHADES:.3f})}}.b{k}{{background:rgba(37,99,235,{k / SHADES:.3f})}}"
                    for k in range(1, SHADES + 1))
    return ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
            ".t{padding:2px 3px;margin:1px;border-radius:3px;display:inline-block}.u{text-decoration:underline dotted}"
            "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}"
            ".maps{display:flex;flex-wrap:wrap;gap:12px}.maps figure{margin:0}.method{margin:.4em 0}"
            ".name{display:inline-block;width:7em;color:#555}"
            ".scale{display:inline-block;width:120px;height:10px;vertical-align:middle;"
            "background:linear-gradient(to right,#fff,rgb(124,58,237))}" + steps)


def token_row(exp: Explanation, method: str) -> str:
    """The words, each shaded by its score (a CSS class per step, the exact score on hover)."""
    scores = exp.scores[method]
    scale = _scale(scores)
    spans = []
    for word, score, unk in zip(exp.words, scores, exp.unknown):
        colour = "r" if score >= 0 or method not in SIGNED else "b"
        shade = _shade(score, scale)
        classes = "t" + (f" {colour}{shade}" if shade else "") + (" u" if unk else "")
        title = f"{score:.4g}" + (" [UNK]" if unk else "")
        spans.append(f'<span class="{classes}" title="{title}">{html.escape(word)}</span>')
    return "".join(spans)


def top_tokens(matrices: list[np.ndarray], k: int = TOP_TOKENS) -> list[int]:
    """The positions that receive the most attention, averaged over `matrices`, in text order."""
    received = np.mean([m.sum(0) for m in matrices], axis=0)
    if len(received) <= k:
        return list(range(len(received)))
    return sorted(np.argsort(-received, kind="stable")[:k].tolist())


def attention_svg(matrix: np.ndarray, labels: list[str] | None, cell: int = 13) -> str:
    """A heatmap (rows attend to columns), white to purple up to the map's largest weight, as
    an inline PNG of one pixel per cell (a few hundred bytes, however dense the map), with
    the words on both axes when `labels` are given."""
    n = len(matrix)
    top = float(matrix.max()) or 1.0
    margin = 74 if labels is not None else 0
    side = n * cell
    text = ""
    if labels is not None:
        short = [html.escape(label[:10] + ("…" if len(label) > 10 else "")) for label in labels]
        rows = "".join(f'<text x="{margin - 3}" y="{margin + (i + 0.5) * cell:.1f}">{w}</text>' for i, w in enumerate(short))
        # the column labels read upwards: a group turned a quarter, x along the column axis
        cols = "".join(f'<text x="{3 - margin}" y="{margin + (j + 0.5) * cell:.1f}">{w}</text>' for j, w in enumerate(short))
        text = (f'<g font-size="10" text-anchor="end" dominant-baseline="middle">{rows}</g>'
                f'<g font-size="10" dominant-baseline="middle" transform="rotate(-90)">{cols}</g>')
    image = _png_data_uri(np.rint(np.clip(matrix / top, 0, 1) * (len(_PALETTE) - 1)).astype(np.uint8))
    return (f'<svg width="{margin + side + 1}" height="{margin + side + 1}" xmlns="http://www.w3.org/2000/svg">{text}'
            f'<image x="{margin}" y="{margin}" width="{side}" height="{side}" preserveAspectRatio="none" '
            f'style="image-rendering:pixelated" href="{image}"/>'
            f'<rect x="{margin}" y="{margin}" width="{side}" height="{side}" fill="none" stroke="#ccc"/></svg>')


# white to rgb(124,58,237), the colour of the attention maps, in 64 steps
_PALETTE = [tuple(round(255 - (255 - c) * k / 63) for c in (124, 58, 237)) for k in range(64)]


def _png_data_uri(index: np.ndarray) -> str:
    """A palette PNG, one pixel per entry of `index` (values into _PALETTE), as a data: URI."""
    import base64
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = index.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in index)  # filter type 0 for each row
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
           + chunk(b"PLTE", bytes(v for rgb in _PALETTE for v in rgb)) + chunk(b"IDAT", zlib.compress(raw, 9))
           + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def attention_maps(exp: Explanation, per_head: bool) -> list[str]:
    """The attention section of one text: per layer the mean of the heads (and each head when
    `per_head`), over the TOP_TOKENS tokens that receive the most attention."""
    labels = _labels(exp)
    means = [np.mean(layer, axis=0) for layer in exp.attention]
    keep = top_tokens(means)
    shown = [labels[i] for i in keep]
    T = len(labels)
    which = (f"all {T} tokens" if len(keep) == T else
             f"the {len(keep)} of {T} tokens that receive the most attention (mean over layers and heads)")
    parts = [f"<h3>Attention (rows attend to columns): {which}</h3>"
             "<p>Shade: from 0 <span class='scale'></span> to the largest weight in the map (given under it)."
             + (" Each head's map has the tokens of its layer's mean, in the same order." if per_head else "")
             + "</p><div class='maps'>"]
    for li, layer in enumerate(exp.attention):
        heads = [means[li]] + (list(layer) if per_head else [])
        for hi, matrix in enumerate(heads):
            sub = np.asarray(matrix)[np.ix_(keep, keep)]
            caption = f"layer {li}, " + ("mean of heads" if hi == 0 else f"head {hi - 1}") + f"; max {float(sub.max()):.3f}"
            svg = attention_svg(sub, shown if hi == 0 else None)
            parts.append(f"<figure>{svg}<figcaption>{caption}</figcaption></figure>")
    parts.append("</div>")
    if not per_head:
        parts.append("<p>Per-head maps are drawn on a page of one text (explain that text alone).</p>")
    return parts


def render_html(explanations: list[Explanation], run: str, faithfulness: dict[str, Any] | None = None,
                removal: str = "mask") -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>bigmodel explain: {html.escape(run)}</title>",
             f"<style>{_css()}</style></head><body>",
             f"<h1>Explanations: run <code>{html.escape(run)}</code></h1>",
             "<p>Red pushes towards the target, blue (signed methods: grad-input, ig) against it; "
             f"darker is stronger ({SHADES} steps, scaled per method). Hover a word for its score. "
             "Dotted: outside the vocabulary.</p>"]
    if faithfulness:
        parts.append(faithfulness_table_html(faithfulness, removal))
    for n, exp in enumerate(explanations, 1):
        probs = ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in exp.probabilities.items())
        parts.append(f"<h2>{n}. {html.escape(exp.text[:120])}</h2><p>predicted <b>{html.escape(exp.predicted)}</b> "
                     f"({probs}); explaining <b>{html.escape(exp.target)}</b>, p = {exp.probability:.3f}"
                     + (f"; integrated gradients: {exp.ig_steps} steps, completeness gap {exp.ig_delta:.2e}" if exp.ig_delta is not None else "")
                     + "</p>")
        for method in exp.scores:
            parts.append(f'<div class="method"><span class="name">{method}</span>{token_row(exp, method)}</div>')
        if exp.attention:
            parts += attention_maps(exp, per_head=len(explanations) == 1)
    parts.append("</body></html>")
    return "\n".join(parts)


def _labels(exp: Explanation) -> list[str]:
    n = len(exp.attention[0][0])
    inner = list(exp.units if exp.units is not None else exp.words)  # the maps are per token
    if exp.kind == "classifier":
        return (["[CLS]"] + inner + ["[SEP]"])[:n] if len(inner) + 2 == n else [str(i) for i in range(n)]
    return (["[CLS]"] + inner)[-n:] if len(inner) + 1 >= n else [str(i) for i in range(n)]


REMOVAL = {"mask": "replaced by [MASK]", "delete": "deleted"}


def faithfulness_table_html(table: dict[str, Any], removal: str = "mask") -> str:
    rand = table.get("random", {})
    rows = [f"<h2>Faithfulness (AOPC over the top 10%..50% of words, {REMOVAL.get(removal, removal)}: "
            f"--removal {html.escape(removal)})</h2>"
            f"<p>Random: the mean of {rand.get('draws', 1)} seeded random rankings per text, with its 95% confidence "
            "interval; a method is better than random when its comprehensiveness is above that interval and its "
            "sufficiency below it.</p><table><tr><th>method</th>"
            "<th>comprehensiveness ↑</th><th>sufficiency ↓</th><th>better than random</th></tr>"]
    for method, e in table.items():
        verdict = "" if method == "random" else ("yes" if e.get("beats_random") else "<b>no</b>")
        comp, suff = f"{e['comprehensiveness']:.4f}", f"{e['sufficiency']:.4f}"
        if "comprehensiveness_ci95" in e:
            comp += " ({:.4f} to {:.4f})".format(*e["comprehensiveness_ci95"])
            suff += " ({:.4f} to {:.4f})".format(*e["sufficiency_ci95"])
        rows.append(f"<tr><td>{method}</td><td>{comp}</td><td>{suff}</td><td>{verdict}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def write_png(exp: Explanation, path: Path) -> bool:
    """A heatmap, one row per method, one column per word. Returns False when the words need
    a CJK font and none is installed (then the columns are numbered; the page and the JSON
    have the words)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bigmodel_cli.evaluation.plots import plot_text, text_font
    from bigmodel_cli.fileio import atomic_write

    methods = list(exp.scores)
    data = np.array([np.asarray(exp.scores[m]) / (_scale(exp.scores[m]) or 1.0) for m in methods])
    with text_font([*exp.words, exp.target]) as drawable:
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(exp.words) + 2), 0.5 * len(methods) + 1.6), dpi=110)
        ax.imshow(data, cmap="coolwarm", vmin=-1, vmax=1, aspect="auto")
        ax.set_yticks(range(len(methods)), methods)
        labels = [plot_text(w) for w in exp.words] if drawable else [str(i + 1) for i in range(len(exp.words))]
        ax.set_xticks(range(len(labels)), labels, rotation=90)
        ax.set_title(plot_text(f"{exp.kind}: {exp.target} (p={exp.probability:.3f})"))
        fig.tight_layout()
        with atomic_write(path, "wb") as handle:
            fig.savefig(handle, format="png")
    plt.close(fig)
    return drawable
