"""Text normalisation and cleaning, applied the same way at training and prediction time.

Order matters: HTML first (so an escaped `&lt;b&gt;` stays text), then NFKC (full-width
letters and digits become half-width, which jieba segments far better), then control
characters, URLs and e-mails, then whitespace.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass

URL_TOKEN = "[URL]"
EMAIL_TOKEN = "[EMAIL]"
PLACEHOLDER_RE = re.compile(r"(\[URL\]|\[EMAIL\])")

_TAG_RE = re.compile(r"<!--.*?-->|<script\b.*?</script>|<style\b.*?</style>|</?[a-zA-Z][^<>]*>", re.S | re.I)
# C0/C1 controls, zero-width and bidi marks, BOM: deleted, not replaced by a space, since
# they are invisible ("好\u200b吃" reads, and must segment, as "好吃"). The controls that
# are whitespace (tab, newline, \x0b \x0c \x1c-\x1f \x85, line/paragraph separators)
# are left out here and become single spaces with the rest of the whitespace.
_CONTROL_RE = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_URL_RE = re.compile(r"(?:https?://|ftp://|www\.)[^\s<>\"'\u3000-\u303f\uff00-\uffef\u4e00-\u9fff]+", re.I)
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_TRAILING_PUNCT = ".,;:!?)]}'\""

URL_CHOICES = ("replace", "remove", "keep")
# The characters str.split() splits on (those for which str.isspace() is true).
WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + \
    "\u2028\u2029\u202f\u205f\u3000"


@dataclass(frozen=True)
class CleanOptions:
    nfkc: bool = True
    strip_html: bool = True
    urls: str = "replace"
    emails: str = "replace"


def _sub_urls(text: str, how: str) -> str:
    def repl(match: re.Match) -> str:
        url = match.group(0)
        # A URL at the end of a sentence keeps the sentence's punctuation outside it.
        stripped = url.rstrip(_TRAILING_PUNCT)
        tail = url[len(stripped):]
        return (f" {URL_TOKEN} " if how == "replace" else " ") + tail

    return _URL_RE.sub(repl, text)


# Full-width ASCII and the ideographic space are what Chinese text mostly holds of NFKC's
# work; mapping them first and running the full normalisation only on what is still not
# NFKC gives the same result at half the cost. (These characters are starters that
# decompose to single starters, so NFKC(map(s)) == NFKC(s).) A regex substitution maps
# them about twice as fast as str.translate with a dict, which looks up every character.
_FULLWIDTH = {chr(c): unicodedata.normalize("NFKC", chr(c)) for c in [*range(0xFF01, 0xFF5F), 0x3000]}
_FULLWIDTH_RE = re.compile("[\uff01-\uff5e\u3000]")


def _half_width(match: re.Match) -> str:
    return _FULLWIDTH[match.group()]


def nfkc(text: str) -> str:
    text = _FULLWIDTH_RE.sub(_half_width, text)
    return text if unicodedata.is_normalized("NFKC", text) else unicodedata.normalize("NFKC", text)


def clean_text(text: str, opts: CleanOptions, max_chars: int = 0) -> str:
    """Normalise one document; returns the cleaned text ('' if nothing is left).

    With `max_chars`, a text that is longer than that even without its spaces is returned
    with its spaces as they are: it is too long however they collapse, and collapsing them
    in a line of millions of words takes gigabytes (a list of every word)."""
    if opts.strip_html:
        if "<" in text:
            text = _TAG_RE.sub(" ", text)
        if "&" in text:
            text = html.unescape(text)
    if opts.nfkc and not text.isascii():
        text = nfkc(text)
    text = _CONTROL_RE.sub("", text)
    if opts.emails != "keep" and "@" in text:
        text = _EMAIL_RE.sub(f" {EMAIL_TOKEN} " if opts.emails == "replace" else " ", text)
    if opts.urls != "keep" and ("://" in text or "www." in text or "WWW." in text):
        text = _sub_urls(text, opts.urls)
    if max_chars and len(text) > max_chars and len(text) - sum(map(text.count, WHITESPACE)) > max_chars:
        return text
    return " ".join(text.split())


_CJK_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_RE = re.compile("[A-Za-z]")


def detect_lang(text: str) -> str:
    """zh when CJK characters make up at least a tenth of the letters, else en."""
    cjk = len(_CJK_RE.findall(text))
    if cjk == 0:
        return "en"
    latin = len(_LATIN_RE.findall(text))
    return "zh" if cjk * 10 >= cjk + latin else "en"


# A document is cut to this many characters (or 200 per token of max_len, if more) before
# it is cleaned and segmented: only its first max_len tokens are classified, and a line of
# tens of megabytes would otherwise take gigabytes to segment.
MAX_CHARS = 100_000
