"""Stopword lists: built-in Chinese and English, a user's file, or none.

Processed data always keeps every token; the stages that want stopwords removed (static
embeddings, the TF-IDF baseline) read `stopwords.txt` from the processed data, so the
choice made at preprocess time is the one they use, and it is recorded.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from bigmodel_cli.errors import InputError


def _read_list(lines: list[str]) -> set[str]:
    return {w.strip() for w in lines if w.strip() and not w.lstrip().startswith("#")}


def builtin_stopwords(lang: str) -> set[str]:
    words: set[str] = set()
    if lang in ("zh", "auto"):
        text = resources.files("bigmodel_cli").joinpath("resources/stopwords_zh.txt").read_text(encoding="utf-8")
        words |= _read_list(text.splitlines())
    if lang in ("en", "auto"):
        # scikit-learn's list (Glasgow Information Retrieval Group), so that our baseline
        # and a user's own TfidfVectorizer(stop_words="english") agree.
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        words |= set(ENGLISH_STOP_WORDS)
    return words


def load_stopwords(choice: str, lang: str) -> set[str]:
    """'builtin', 'none', or a path to a file with one word per line."""
    if choice == "none":
        return set()
    if choice == "builtin":
        return builtin_stopwords(lang)
    path = Path(choice)
    if not path.is_file():
        raise InputError(path, "stopword file not found", hint="give a file with one word per line, or --stopwords builtin|none")
    try:
        return _read_list(path.read_text(encoding="utf-8-sig").splitlines())
    except UnicodeDecodeError as exc:
        raise InputError(path, "stopword file is not UTF-8", offset=exc.start, hint="save it as UTF-8") from None
