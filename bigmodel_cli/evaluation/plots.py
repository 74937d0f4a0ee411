"""What every matplotlib figure of bigmodel needs for text that came from users' data: no
mathtext, and a font that can draw Chinese."""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterable, Iterator

# Families that cover the CJK ideographs, in order of preference (matplotlib family names).
CJK_FAMILIES = ("Noto Sans CJK", "Noto Serif CJK", "Source Han Sans", "Source Han Serif", "WenQuanYi",
                "SimHei", "Microsoft YaHei", "PingFang", "Heiti", "Hiragino Sans GB", "AR PL", "Droid Sans Fallback")
CJK_HINT = "no installed font can draw Chinese, so those characters show as boxes; install one (apt-get install fonts-noto-cjk) and run again"


def plot_text(text: object) -> str:
    """`text` as matplotlib draws it literally: every `$` escaped, so that an even number of
    them never starts mathtext (which fails on, or silently mangles, ordinary labels)."""
    return str(text).replace("$", r"\$")


def needs_cjk(texts: Iterable[str]) -> bool:
    return any(ord(c) >= 0x2E80 for t in texts for c in t)


def cjk_family() -> str | None:
    """The family name of an installed font that draws CJK, or None."""
    from matplotlib import font_manager

    names = {entry.name for entry in font_manager.fontManager.ttflist}
    for wanted in CJK_FAMILIES:
        for name in sorted(names):
            if name.startswith(wanted):
                return name
    return None


@contextlib.contextmanager
def text_font(texts: Iterable[str]) -> Iterator[bool]:
    """Within: a CJK font ahead of the default ones when `texts` need it (matplotlib falls back
    family by family, glyph by glyph). Yields False when they need one and none is installed;
    then matplotlib's warning per missing glyph is silenced, the caller says it once."""
    import matplotlib

    texts = list(texts)
    if not needs_cjk(texts):
        yield True
        return
    family = cjk_family()
    if family is None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Glyph .* missing from")
            yield False
        return
    with matplotlib.rc_context({"font.family": "sans-serif",
                                "font.sans-serif": [family, *matplotlib.rcParams["font.sans-serif"]]}):
        yield True
