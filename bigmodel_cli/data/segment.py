"""Word segmentation: jieba (or its Rust-accelerated fork) for Chinese, NLTK for English.

`jieba_next` computes jieba's dictionary route (DAG + dynamic programme) and the HMM
Viterbi in Rust. Used as it is, its output differs from jieba's in two places:
  * its block regex lacks `-`, so `1917--1960` splits differently: we split text into
    blocks with jieba's own regex;
  * its Viterbi breaks ties differently on Han characters that jieba's HMM has never
    seen (all emission scores equal): runs holding such a character go to jieba's own
    pure-Python HMM, which needs no dictionary load.
The walk over the route is ours, a tight loop that builds a list (jieba and jieba_next
both yield word by word from a generator). The result equals jieba's on every line of
35,000 reviews and 19,000 People's Daily sentences (tested), at several times the speed.

Plain jieba (`backend='jieba'`, the fallback) goes through the same walk, with jieba's
route computed in one pass instead of get_DAG then calc (same scores, same ties), and
repeated HMM runs remembered: the same words as `jieba.lcut`, about 1.6x as fast.

With `BIGMODEL_PLAIN=1` (data/plain.py) all of this is bypassed: `PlainChineseSegmenter`
calls `jieba.lcut` and nothing else, the reference the fast walk is checked against.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from bigmodel_cli.data import jieba_cache
from bigmodel_cli.data.plain import plain_path
from bigmodel_cli.data.cleaning import (
    EMAIL_TOKEN,
    PLACEHOLDER_RE,
    URL_TOKEN,
    detect_lang,
)
from bigmodel_cli.errors import InputError, UserError

SEGMENTERS = ("auto", "jieba", "jieba_next")
FLUSH_CACHE = 200_000  # character runs whose words are remembered (about 30 MB at most)
_has_space = re.compile(r"\s").search
_PLACEHOLDERS = frozenset((URL_TOKEN, EMAIL_TOKEN))


def jieba_next_available() -> bool:
    """jieba_next and its compiled part are installed. Looked up, not imported: a run with several
    workers would pay for the import before its read-ahead helper starts; the segmenter imports it when it loads its dictionary."""
    try:
        spec = importlib.util.find_spec("jieba_next")
    except (ImportError, ValueError):
        return False
    folders = (spec.submodule_search_locations or []) if spec else []
    return any(next(Path(folder).glob("jieba_next_rust*"), None) for folder in folders)


def resolve_backend(name: str) -> str:
    if name not in SEGMENTERS:
        raise UserError(f"--segmenter must be one of {', '.join(SEGMENTERS)}, got '{name}'")
    if plain_path():
        return "jieba"  # the plain path segments with jieba.lcut, whatever was asked
    if name == "auto":
        return "jieba_next" if jieba_next_available() else "jieba"
    if name == "jieba_next" and not jieba_next_available():
        raise UserError("--segmenter jieba_next: the package is not installed", hint="pip install 'bigmodel-cli[fast]', or use --segmenter jieba")
    return name


def check_user_dict(path: str | Path) -> None:
    """A one-line error for a user dictionary that jieba would fail to load with a
    traceback: it reads them as UTF-8 only."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, "not UTF-8 (jieba reads user dictionaries as UTF-8)", line=data.count(b"\n", 0, exc.start) + 1,
                         offset=exc.start, hint="save it as UTF-8, e.g. iconv -f gbk -t utf-8") from None


def _jieba_route(tokenizer):
    """jieba's best route through a block (its get_DAG and calc in one pass), as a list:
    route[x] is where the word starting at x ends.

    jieba scores a word as log(count or 1) - log(total) + (the rest of the route), and
    takes the max of (score, end) over the words that start at x. The first term is
    computed once per dictionary word here instead of at every visit, with the same
    operations in the same order, so the scores, and the ties, are bit for bit jieba's.
    """
    from math import log

    freq = tokenizer.FREQ  # every word and every prefix of a word (prefixes count 0)
    log_total = log(tokenizer.total)
    word_score = {w: log(n) - log_total for w, n in freq.items() if n}
    unknown = log(1) - log_total  # a character that is no word: jieba counts it once

    def route(block: str) -> list[int]:
        n = len(block)
        rest = [0.0] * (n + 1)  # best score of block[x:]
        ends = [0] * n
        for k in range(n - 1, -1, -1):
            best, end = None, k
            i, frag = k, block[k]
            while frag in freq:
                score = word_score.get(frag)
                if score is not None:
                    score += rest[i + 1]
                    if best is None or score >= best:  # >=: on a tie jieba's max takes the later end
                        best, end = score, i
                i += 1
                if i >= n:
                    break
                frag = block[k:i + 1]
            if best is None:
                best = unknown + rest[k + 1]
            rest[k], ends[k] = best, end
        return ends
    return route


def _load_userdict_next(tokenizer, user_dict: str | Path) -> None:
    """jieba_next's load_userdict, with its Rust trie built once instead of once a word.

    Every added word drops jieba_next's trie, and a word given without a count is priced
    by cutting it, which rebuilds the trie (0.1 s): 100 such words took 8 s. While the
    words go in, routes come from the dictionary itself (jieba_next's own fallback, the
    same route as jieba's), and the trie is built after the last one.
    """
    tokenizer._ensure_rust_prefix = lambda: None  # an instance attribute: hides the method
    try:
        tokenizer.load_userdict(str(user_dict))
    finally:
        del tokenizer._ensure_rust_prefix
    tokenizer._rust_prefix = None


class ChineseSegmenter:
    """jieba's precise mode; `backend='jieba_next'` gives the same words, faster."""

    def __init__(self, backend: str = "jieba", hmm: bool = True, user_dict: str | Path | None = None):
        import jieba
        from jieba import finalseg

        self.backend, self.hmm = backend, hmm
        self._blocks, self._skip = jieba.re_han_default.finditer, jieba.re_skip_default
        # Dictionaries load here, before any worker process starts, so that every worker
        # inherits the same dictionary (jieba's enable_parallel ignores later ones). A user
        # dictionary goes into a tokenizer of its own: loaded into jieba's shared default
        # one it would leak into every later segmenter in this process.
        if backend == "jieba":
            jieba.setLogLevel(logging.WARNING)
            tokenizer = jieba.Tokenizer() if user_dict else jieba.dt
            jieba_cache.initialize(tokenizer, "jieba", Path(jieba.get_dict_file().name))
            if user_dict:
                tokenizer.load_userdict(str(user_dict))
            # jieba's dictionary, route scores and Viterbi; the route in one pass, the
            # walk over it and the memory of HMM runs already cut are ours.
            self._route = _jieba_route(tokenizer)
            self._dag_no_hmm = getattr(tokenizer, "_Tokenizer__cut_DAG_NO_HMM")
            self._viterbi = None
        else:
            try:
                import jieba_next
            except ImportError as exc:
                raise UserError(f"--segmenter jieba_next: the package is installed but does not import ({exc})",
                                hint="reinstall it (pip install --force-reinstall jieba_next), or use --segmenter jieba") from None

            jieba_next.set_log_level(logging.WARNING)
            # A tokenizer of our own, whose routes all come from the Rust trie: its FREQ
            # can then hold the words alone (a third faster to load), without leaving
            # jieba_next's shared default tokenizer short of the prefix entries it uses.
            tokenizer = jieba_next.Tokenizer()
            jieba_cache.initialize(tokenizer, "jieba_next", Path(jieba_next.__file__).with_name("dict.txt"),
                                   words_only=not user_dict)
            if user_dict:
                _load_userdict_next(tokenizer, user_dict)
                # Words added with frequency 0 must be split by the HMM too, in both copies.
                finalseg.Force_Split_Words |= jieba_next.finalseg.Force_Split_Words
            tokenizer._ensure_rust_prefix()
            self._route = tokenizer._rust_prefix.get_dag_and_calc
            self._dag_no_hmm = tokenizer._cut_dag_no_hmm
            self._viterbi = jieba_next.finalseg.viterbi_hmm
        self._freq = tokenizer.FREQ
        self._hmm_tables = ("BMES", finalseg.start_P, finalseg.trans_P, finalseg.emit_P)
        self._hmm_exact = getattr(finalseg, "__cut")  # jieba's pure-Python Viterbi over one Han run
        self._force_split = finalseg.Force_Split_Words
        self._hmm_han, self._hmm_skip = finalseg.re_han.split, finalseg.re_skip.split
        self._flushed: dict[str, list[str]] = {}
        if self._viterbi is None:
            self._unseen = lambda _: True  # every run goes to jieba's own Viterbi
        else:
            seen = set().union(*finalseg.emit_P.values())
            unseen = "".join(chr(c) for c in range(0x4E00, 0x9FD6) if chr(c) not in seen)
            self._unseen = re.compile(f"[{unseen}]").search if unseen else (lambda _: None)

    def cut(self, text: str) -> list[str]:
        # jieba.Tokenizer.cut(cut_all=False): Han/alphanumeric blocks are cut by the
        # dictionary route, what lies between them character by character.
        out: list[str] = []
        append, extend, flush, route = out.append, out.extend, self._flush, self._route
        pos = 0
        for match in self._blocks(text):
            start, end = match.span()
            if start > pos:
                between = text[pos:start]
                if "\r\n" in between:
                    self._between(between, out)
                else:
                    extend(between)  # punctuation and whitespace: one token per character
            pos = end
            block = text[start:end]
            if not self.hmm:
                extend(self._dag_no_hmm(block))
                continue
            # jieba's __cut_DAG, inlined (this loop is most of the time): dictionary words
            # as routed; runs of single characters that are not a dictionary word go
            # through the HMM. One route per block, as jieba does: routing the whole line
            # in one call is faster but not the same, because words of equal probability
            # in another order ("太太/太" against "太/太太") then tie-break differently.
            ends = route(block)
            n, x, run = len(block), 0, -1
            while x < n:
                y = ends[x] + 1
                if y - x == 1:
                    if run < 0:
                        run = x
                else:
                    if run >= 0:
                        if x - run == 1:  # a lone character: itself (what _flush would do, without the call)
                            append(block[run])
                        else:
                            flush(block[run:x], out)
                        run = -1
                    append(block[x:y])
                x = y
            if run >= 0:
                if n - run == 1:
                    append(block[run])
                else:
                    flush(block[run:], out)
        if pos < len(text):
            self._between(text[pos:], out)
        return out

    def _between(self, piece: str, out: list[str]) -> None:
        if "\r\n" not in piece:
            out.extend(piece)  # punctuation and whitespace: one token per character
            return
        for part in self._skip.split(piece):
            if self._skip.match(part):
                out.append(part)
            else:
                out.extend(part)

    def _flush(self, buf: str, out: list[str]) -> None:
        # Runs of unrouted characters repeat (names, rare words): about half of those in
        # 36,000 reviews and news sentences had been seen before, so their words are kept.
        words = self._flushed.get(buf)
        if words is None:
            if self._freq.get(buf):
                words = list(buf)
            else:
                words = []
                self._hmm(buf, words)
            if len(self._flushed) < FLUSH_CACHE:
                self._flushed[buf] = words
        out.extend(words)

    def _hmm(self, buf: str, out: list[str]) -> None:
        """jieba.finalseg.cut: Han runs through the BMES Viterbi, the rest split into
        alphanumeric words and single characters."""
        for i, piece in enumerate(self._hmm_han(buf)):
            if not piece:
                continue
            if not i % 2:
                out.extend(x for x in self._hmm_skip(piece) if x)
                continue
            if self._unseen(piece):
                words = list(self._hmm_exact(piece))
            else:
                tags = self._viterbi(piece, *self._hmm_tables)[1]
                words, begin, done = [], 0, 0
                for j, tag in enumerate(tags):
                    if tag == "B":
                        begin = j
                    elif tag == "E":
                        words.append(piece[begin:j + 1])
                        done = j + 1
                    elif tag == "S":
                        words.append(piece[j])
                        done = j + 1
                if done < len(piece):
                    words.append(piece[done:])
            if self._force_split:
                words = [part for w in words for part in (w if w in self._force_split else (w,))]
            out.extend(words)

    def version(self) -> str:
        package = "jieba_next" if self.backend == "jieba_next" else "jieba"
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:  # pragma: no cover
            return "unknown"


class PlainChineseSegmenter:
    """jieba's precise mode through its public API alone (`Tokenizer.lcut`): the plain path's
    segmenter (data/plain.py). A user dictionary goes into a tokenizer of its own, as in
    ChineseSegmenter, so that it does not leak into jieba's shared default one."""

    backend = "jieba"

    def __init__(self, hmm: bool = True, user_dict: str | Path | None = None):
        import jieba

        jieba.setLogLevel(logging.WARNING)
        self.hmm = hmm
        self._tokenizer = jieba.Tokenizer() if user_dict else jieba.dt
        if user_dict:
            self._tokenizer.load_userdict(str(user_dict))

    def cut(self, text: str) -> list[str]:
        return self._tokenizer.lcut(text, HMM=self.hmm)

    def version(self) -> str:
        return metadata.version("jieba")


def chinese_segmenter(backend: str, hmm: bool = True, user_dict: str | Path | None = None):
    """The segmenter for Chinese: plain jieba on the plain path, else the fast walk."""
    if plain_path():
        return PlainChineseSegmenter(hmm, user_dict)
    return ChineseSegmenter(backend, hmm, user_dict)


# Abbreviations whose final period stays on the word when we split sentence-final periods.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec "
    "no fig e.g i.e a.m p.m u.s u.k".split()
)


class EnglishTokenizer:
    """NLTK's Treebank-style word tokenizer; needs no downloaded nltk_data.

    `word_tokenize` would need the punkt_tab model for sentence splitting, which may not
    be downloaded here, so we split sentence-final periods ourselves ("world." becomes
    "world" "."), keeping them on abbreviations and dotted words such as "U.S.".
    """

    def __init__(self) -> None:
        from nltk.tokenize import NLTKWordTokenizer

        self._tokenize = NLTKWordTokenizer().tokenize

    def cut(self, text: str) -> list[str]:
        out = []
        for token in self._tokenize(text):
            if len(token) > 1 and token.endswith(".") and "." not in token[:-1] and token[:-1].isalpha() \
                    and token[:-1].lower() not in _ABBREVIATIONS:
                out.extend((token[:-1], "."))
            else:
                out.append(token)
        return out


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem import PorterStemmer

    return PorterStemmer()


@dataclass
class SegmentOptions:
    lang: str = "auto"
    backend: str = "jieba"
    hmm: bool = True
    user_dict: str | None = None
    lowercase: bool = False
    stem: bool = False


class Segmenter:
    """Text in, tokens out, for zh, en or auto (decided per document)."""

    def __init__(self, opts: SegmentOptions):
        self.opts = opts
        self._zh = chinese_segmenter(opts.backend, opts.hmm, opts.user_dict) if opts.lang in ("zh", "auto") else None
        self._en = EnglishTokenizer() if opts.lang in ("en", "auto") else None

    def tokenize(self, text: str) -> tuple[list[str], str]:
        lang = detect_lang(text) if self.opts.lang == "auto" else self.opts.lang
        cut = self._zh.cut if lang == "zh" else self._en.cut
        if "[" in text and PLACEHOLDER_RE.search(text):
            tokens = []
            for i, piece in enumerate(PLACEHOLDER_RE.split(text)):
                tokens.extend([piece] if i % 2 else cut(piece))
        else:
            tokens = cut(text)
        if _has_space(text):
            tokens = [t for t in tokens if not t.isspace()]
        if self.opts.lowercase or self.opts.stem:
            tokens = [self._english_form(t) for t in tokens]
        return tokens, lang

    def _english_form(self, token: str) -> str:
        # Every token is lower-cased, not only alphabetic ones: the tokenizer keeps
        # "Dr.", "U.S." and "N'T" whole, and they must meet "dr.", "u.s." and "n't". The
        # placeholders stay as they are; only words of letters are stemmed.
        if token in _PLACEHOLDERS:
            return token
        if self.opts.stem and token.isascii() and token.isalpha():
            return _stemmer().stem(token, to_lowercase=self.opts.lowercase)
        return token.lower() if self.opts.lowercase else token

    def describe(self) -> dict[str, object]:
        return describe_segmenter(self.opts)


def describe_segmenter(opts: SegmentOptions) -> dict[str, object]:
    """What segments, for the run record; needs no dictionary loaded."""
    info: dict[str, object] = {"lang": opts.lang, "lowercase": opts.lowercase, "stem": opts.stem}
    if opts.lang in ("zh", "auto"):
        backend = "jieba" if plain_path() else opts.backend
        package = "jieba_next" if backend == "jieba_next" else "jieba"
        info.update(zh=backend, zh_version=metadata.version(package), hmm=opts.hmm)
        if plain_path():
            info.update(plain=True)  # jieba.lcut itself (BIGMODEL_PLAIN=1), not the fast walk
    if opts.lang in ("en", "auto"):
        info.update(en="nltk.NLTKWordTokenizer", nltk_version=metadata.version("nltk"))
    return info


def word_spans(words: list[str]) -> set[tuple[int, int]]:
    spans, start = set(), 0
    for word in words:
        spans.add((start, start + len(word)))
        start += len(word)
    return spans


def score_segmentation(predicted: list[list[str]], gold: list[list[str]]) -> dict[str, float]:
    """Word precision, recall and F1 over character spans (the SIGHAN bakeoff scoring)."""
    correct = n_pred = n_gold = 0
    for pred, ref in zip(predicted, gold, strict=True):
        pred_spans, gold_spans = word_spans(pred), word_spans(ref)
        correct += len(pred_spans & gold_spans)
        n_pred += len(pred_spans)
        n_gold += len(gold_spans)
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "words_predicted": n_pred, "words_gold": n_gold, "sentences": len(gold)}


def run_segment(*, text: str | None = None, input: Path | None = None, gold: Path | None = None, lang: str | None = None,
                segmenter: str | None = None, user_dict: Path | None = None, hmm: bool | None = None,
                workspace: Path | None = None) -> dict[str, object]:
    """The `segment` command as a function: segment texts, or score against a gold file.

    Settings come from the arguments, else from the workspace (if there is one), else the
    defaults. Shown segmentations are of cleaned text, as preprocess would see it; scoring
    segments the raw lines, so that the characters match the gold words exactly.
    """
    from bigmodel_cli.data.cleaning import CleanOptions, clean_text
    from bigmodel_cli.data.readers import read_lines, without_surrogates
    from bigmodel_cli.workspace.config import PreprocessConfig, ProjectConfig, resolve
    from bigmodel_cli.workspace.layout import Workspace

    config: dict = {}
    ws = Workspace.find(workspace) if workspace is not None else Workspace.nearest()
    if ws is not None:
        config = ws.config()
    project = resolve(ProjectConfig, config.get("project"), {"lang": lang})
    cfg = resolve(PreprocessConfig, config.get("preprocess"),
                  {"segmenter": segmenter, "hmm": hmm, "user_dict": str(user_dict) if user_dict else None})
    if cfg.user_dict and not Path(cfg.user_dict).is_file():
        raise UserError(f"--user-dict {cfg.user_dict}: no such file")
    if cfg.user_dict:
        check_user_dict(cfg.user_dict)
    if text is None and input is None and gold is None:
        raise UserError("nothing to segment", hint="give TEXT, --input FILE or --gold FILE")
    backend = resolve_backend(cfg.segmenter)
    seg = Segmenter(SegmentOptions(lang=project.lang, backend=backend, hmm=cfg.hmm, user_dict=cfg.user_dict or None,
                                   lowercase=False, stem=False))
    # Files are read as preprocess reads them (encoding detected, compressed or not).
    read = functools.partial(read_lines, encoding=cfg.encoding)
    raw_lines = [without_surrogates(text)] if text is not None else (read(input) if input is not None else None)
    if gold is None:
        clean = CleanOptions(nfkc=cfg.nfkc, strip_html=cfg.strip_html, urls=cfg.urls, emails=cfg.emails)
        return {"segmented": [seg.tokenize(clean_text(line, clean))[0] for line in raw_lines], "scores": None,
                "backend": backend, "user_dict": cfg.user_dict}
    gold_words = [line.split() for line in read(gold)]
    if raw_lines is None:
        raw_lines = ["".join(words) for words in gold_words]
    if len(raw_lines) != len(gold_words):
        raise UserError(f"{input} has {len(raw_lines):,} lines but {gold} has {len(gold_words):,}", hint="give files with one sentence per line, in the same order")
    predicted = []
    for number, (line, words) in enumerate(zip(raw_lines, gold_words), 1):
        tokens = seg.tokenize(line)[0]
        if "".join(tokens) != "".join(words):
            raise InputError(gold, "the gold words do not spell the same characters as the input line", line=number,
                             hint="the gold file must hold the input text with spaces between words")
        predicted.append(tokens)
    return {"segmented": predicted, "scores": score_segmentation(predicted, gold_words), "backend": backend,
            "user_dict": cfg.user_dict}
