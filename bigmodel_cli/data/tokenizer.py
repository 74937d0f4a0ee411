"""Raw text to the tokens and ids a model was trained on.

A run folder keeps copies of preprocess's `meta.json` (cleaning and segmentation options),
`vocab.txt`, the user dictionary and, for character and subword vocabularies,
`tokenizer.json`, so that training, generate, predict, evaluate and explain encode text the
same way, read from disk, never re-specified by hand. `Encoder.from_folder` is the one
entry point: a folder with `tokenizer.json` encodes through Hugging Face `tokenizers`
(exactly what transformers does with the exported file), one without it through the
segmenter's words and `vocab.txt`.
"""

from __future__ import annotations

import abc
import hashlib
import re
import shutil
from pathlib import Path

from bigmodel_cli.data.vocab import CLS, CONTINUATION, SEP, SPECIAL_TOKENS, UNK, Vocab
from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import read_json

FILES = ("meta.json", "vocab.txt")
TOKENIZER_FILE = "tokenizer.json"


def copy_tokenizer_files(processed: Path, run_dir: Path, base: Path | None = None) -> str:
    """Copy what encodes text into the run: from `base` (the run it starts from) when there is
    one, else from data/processed/. A word base lends only its vocab.txt: the words
    themselves come from preprocess's cleaning and segmentation, so meta.json and the user
    dictionary are processed's. The vocabulary's sha256 goes into the run's meta.json, so
    that a vocab.txt changed later is caught before it maps words to the wrong ids."""
    from bigmodel_cli.fileio import sha256_file, write_json

    subword = base is not None and (base / TOKENIZER_FILE).is_file()
    source = base if subword else processed
    names = (*FILES, TOKENIZER_FILE) if subword else (*FILES, "user_dict.txt", TOKENIZER_FILE)
    for name in names:
        if (source / name).is_file():
            shutil.copyfile(source / name, run_dir / name)
    if base is not None and not subword:
        shutil.copyfile(base / "vocab.txt", run_dir / "vocab.txt")
        (run_dir / TOKENIZER_FILE).unlink(missing_ok=True)  # processed's, for another vocabulary
    digest = sha256_file(run_dir / "vocab.txt")
    if (run_dir / "meta.json").is_file():
        hashes = {"vocab_sha256": digest}
        if (run_dir / TOKENIZER_FILE).is_file():
            hashes["tokenizer_sha256"] = sha256_file(run_dir / TOKENIZER_FILE)
        write_json(run_dir / "meta.json", {**read_json(run_dir / "meta.json"), **hashes})
    return digest


class TextPipeline:
    """The word path: clean and segment as preprocess did, then look the words up in vocab.txt."""

    def __init__(self, folder: Path):
        for name in FILES:
            if not (folder / name).is_file():
                raise UserError(f"{folder / name} is missing", hint="the run folder is incomplete; train it again")
        self.folder = folder
        self.meta = read_json(folder / "meta.json")
        self.vocab = Vocab.load(folder / "vocab.txt")
        self._segmenter = None

    def _load(self):
        from bigmodel_cli.data.cleaning import CleanOptions
        from bigmodel_cli.data.segment import Segmenter, SegmentOptions

        seg = dict(self.meta["segment"])
        if seg.get("user_dict"):
            seg["user_dict"] = str(self.folder / seg["user_dict"])
        self.clean_opts = CleanOptions(**self.meta["clean"])
        self._segmenter = Segmenter(SegmentOptions(**seg))

    def words(self, text: str) -> list[str]:
        """The segmenter's words of `text` as it is (not cleaned): where words begin and end."""
        if self._segmenter is None:
            self._load()
        return self._segmenter.tokenize(text)[0]

    def tokens(self, text: str) -> list[str]:
        """Clean and segment one text as preprocess did ([] if nothing is left)."""
        from bigmodel_cli.data.cleaning import clean_text

        if self._segmenter is None:
            self._load()
        clean = clean_text(text, self.clean_opts)
        return self._segmenter.tokenize(clean)[0] if clean else []

    def encode(self, tokens: list[str], max_len: int | None = None) -> list[int]:
        """[CLS] tokens [SEP], cut to max_len."""
        ids = [self.vocab.id(CLS)] + self.vocab.encode(tokens) + [self.vocab.id(SEP)]
        if max_len is not None and len(ids) > max_len:
            ids = ids[: max_len - 1] + [self.vocab.id(SEP)]
        return ids


class Encoder(abc.ABC):
    """How a run folder (or data/processed/) turns text into ids: `[CLS] text [SEP]`, cut to
    `max_len` keeping the [SEP]. One for training, prediction, evaluation and explanation."""

    kind: str  # word, char, wordpiece, bpe, unigram, or hf (a folder from elsewhere)
    vocab: Vocab
    fingerprint: str  # changes whenever the ids of some text would

    @staticmethod
    def from_folder(folder: Path) -> "Encoder":
        if (folder / TOKENIZER_FILE).is_file():
            return SubwordEncoder(folder)
        return WordEncoder(folder)

    @abc.abstractmethod
    def encode_texts(self, texts: list[str], max_len: int | None = None) -> list[list[int]]:
        """Raw text, as a user gives it to predict or explain."""

    @abc.abstractmethod
    def encode_records(self, records: list[dict], max_len: int | None = None) -> list[list[int]]:
        """Processed records (data/processed/*.parquet, read by data/store.py), as training and evaluation read them."""

    @abc.abstractmethod
    def record_pieces(self, records: list[dict]) -> list[tuple[list[int], list[int]]]:
        """(ids, word starts) per record, no [CLS]/[SEP]: starts[i] is 1 where token i begins
        a word (jieba's or the English tokenizer's), so that masking can take whole words."""

    @abc.abstractmethod
    def units(self, text: str) -> list[str]:
        """The tokens the model reads for a raw text (one id each), as explain scores them."""

    def encode_units(self, units: list[str], max_len: int | None = None) -> list[int]:
        return _wrap([self.vocab.id(u) for u in units], self.vocab, max_len)

    @abc.abstractmethod
    def word_groups(self, text: str) -> list[tuple[str, list[int]]] | None:
        """The words a reader sees in `text`, each with the indices of its units (see units);
        None where words cannot be told (a model from elsewhere, with no segmenter settings)."""

    @abc.abstractmethod
    def decode(self, units: list[str]) -> str:
        """Units (tokens of the vocabulary, or words a user typed) joined back into text."""


def model_units(vocab: Vocab, words: list[str]) -> list[str]:
    """The units the model reads, which are what explain scores: a word outside the
    vocabulary as its character pieces ("坑", "##爹"); a word with no pieces whole (the model
    sees [UNK], and the explanation marks it unknown)."""
    units = []
    for word in words:
        pieces = vocab.pieces(word)
        units.extend([word] if UNK in pieces else pieces)
    return units


def _wrap(ids: list[int], vocab: Vocab, max_len: int | None) -> list[int]:
    ids = [vocab.id(CLS)] + ids + [vocab.id(SEP)]
    if max_len is not None and len(ids) > max_len:
        ids = ids[: max_len - 1] + [vocab.id(SEP)]
    return ids


class WordEncoder(Encoder):
    """The segmenter's words looked up in vocab.txt (pieces for unknown words with --pieces)."""

    kind = "word"

    def __init__(self, folder: Path | None = None, vocab: Vocab | None = None):
        """From a run folder (or data/processed/), or from a bare `vocab` for text that is
        already segmented (records only)."""
        self.pipe = TextPipeline(folder) if folder is not None else None
        self.vocab = self.pipe.vocab if self.pipe is not None else vocab

    @property
    def fingerprint(self) -> str:
        return "word:" + hashlib.sha256("\n".join(self.vocab.tokens).encode()).hexdigest()[:16]

    def encode_texts(self, texts: list[str], max_len: int | None = None) -> list[list[int]]:
        return [self.pipe.encode(self.pipe.tokens(text), max_len) for text in texts]

    def encode_records(self, records: list[dict], max_len: int | None = None) -> list[list[int]]:
        return [self.pipe.encode(record["tokens"], max_len) for record in records]

    def record_pieces(self, records: list[dict]) -> list[tuple[list[int], list[int]]]:
        out = []
        vocab = self.vocab
        for record in records:
            tokens = record["tokens"]
            if not vocab.has_pieces:
                ids = vocab.encode(tokens)
                out.append((ids, [1] * len(ids)))
                continue
            ids, starts = [], []
            for token in tokens:
                piece_ids = vocab.encode([token])
                ids += piece_ids
                starts += [1] + [0] * (len(piece_ids) - 1)
            out.append((ids, starts))
        return out

    def units(self, text: str) -> list[str]:
        return model_units(self.vocab, self.pipe.tokens(text))

    def word_groups(self, text: str) -> list[tuple[str, list[int]]] | None:
        groups, n = [], 0
        for word in self.pipe.tokens(text):
            pieces = self.vocab.pieces(word)
            size = 1 if UNK in pieces else len(pieces)
            groups.append((word, list(range(n, n + size))))
            n += size
        return groups

    def decode(self, units: list[str]) -> str:
        return detokenize(units)


class SubwordEncoder(Encoder):
    """tokenizer.json through Hugging Face `tokenizers`: raw text in, exactly the ids that
    transformers gives with the same file. Processed records are encoded from their cleaned
    `text`; their `tokens` (words) only mark where words start."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        path = folder / TOKENIZER_FILE
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a plain Exception on a bad file
            raise UserError(f"{path}: not a tokenizer.json that Hugging Face tokenizers can read ({str(exc)[:120]})",
                            hint="train the run again, or copy the tokenizer.json it was trained with") from None
        self.vocab = Vocab.load(folder / "vocab.txt") if (folder / "vocab.txt").is_file() else _vocab_of(self.tokenizer)
        if self.tokenizer.get_vocab_size(with_added_tokens=True) != len(self.vocab):
            raise UserError(f"{path} holds {self.tokenizer.get_vocab_size(with_added_tokens=True):,} tokens but "
                            f"{folder / 'vocab.txt'} {len(self.vocab):,}",
                            hint="the two files come from different runs; copy both from the run that trained the model")
        self.meta = read_json(folder / "meta.json") if (folder / "meta.json").is_file() else {}
        recorded = self.meta.get("tokenizer_sha256")
        if recorded and hashlib.sha256(path.read_bytes()).hexdigest() != recorded:
            raise UserError(f"{path}: not the tokenizer the run was trained on (its sha256 differs from the one "
                            "recorded in meta.json), so text would map to the wrong ids",
                            hint="copy back the run's own tokenizer.json, or train the run again")
        self.kind = self.meta.get("tokenizer", {}).get("kind", "hf")
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.fingerprint = self.kind + ":" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        self.folder, self._pipe = folder, None

    def encode_texts(self, texts: list[str], max_len: int | None = None) -> list[list[int]]:
        return [_cut(e.ids, max_len, self.vocab) for e in self.tokenizer.encode_batch(texts)]

    def encode_records(self, records: list[dict], max_len: int | None = None) -> list[list[int]]:
        return self.encode_texts([record["text"] for record in records], max_len)

    def record_pieces(self, records: list[dict]) -> list[tuple[list[int], list[int]]]:
        texts = [record["text"] for record in records]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [(e.ids, word_starts(text, record.get("tokens") or [], e.offsets))
                for text, record, e in zip(texts, records, encodings)]

    def units(self, text: str) -> list[str]:
        return self.tokenizer.encode(text, add_special_tokens=False).tokens

    def word_groups(self, text: str) -> list[tuple[str, list[int]]] | None:
        if "segment" not in self.meta:
            return None
        if self._pipe is None:
            self._pipe = TextPipeline(self.folder)
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        starts = word_starts(text, self._pipe.words(text), encoding.offsets)
        groups: list[tuple[str, list[int]]] = []
        spans: list[tuple[int, int]] = []
        for i, ((begin, end), start) in enumerate(zip(encoding.offsets, starts)):
            if start or not groups:
                groups.append(("", []))
                spans.append((begin, end))
            groups[-1][1].append(i)
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        return [(text[b:e] or "".join(self.units(text)[i] for i in members), members)
                for (b, e), (_, members) in zip(spans, groups)]

    def decode(self, units: list[str]) -> str:
        return self.tokenizer.decode([self.vocab.id(u) for u in units])


def _cut(ids: list[int], max_len: int | None, vocab: Vocab) -> list[int]:
    """[CLS] ... [SEP] cut to max_len keeping the [SEP], as transformers' truncation does."""
    if max_len is not None and len(ids) > max_len:
        ids = ids[: max_len - 1] + [vocab.id(SEP)]
    return ids


def _vocab_of(tokenizer) -> Vocab:
    from bigmodel_cli.data.subword import vocab_tokens

    tokens = vocab_tokens(tokenizer)
    return Vocab(tokens, [0] * len(tokens))


def word_starts(text: str, words: list[str], offsets: list[tuple[int, int]]) -> list[int]:
    """1 where a token (its character offsets in `text`) begins one of `words`, found in
    order in the text, else 0; a token outside every word begins a word of its own."""
    owner = [-1] * len(text)
    # Case-blind where lower-casing keeps the length (words may be lower-cased, the text not).
    folded = len(text.lower()) == len(text)
    haystack = text.lower() if folded else text
    pos = 0
    for n, word in enumerate(words):
        at = haystack.find(word.lower() if folded else word, pos)
        if at < 0:  # stemmed, or changed by cleaning: that word masks token by token
            continue
        owner[at:at + len(word)] = [n] * len(word)
        pos = at + len(word)
    starts, previous = [], -2
    for start, _ in offsets:
        here = owner[start] if start < len(owner) else -1
        starts.append(1 if here == -1 or here != previous else 0)
        previous = here
    return starts


def save_tokenizer(tokenizer, folder: Path, meta: dict) -> None:
    """tokenizer.json, vocab.txt (its tokens in id order) and meta.json ({"tokenizer": meta}
    added to what is there) into `folder`."""
    from bigmodel_cli.data.subword import vocab_tokens
    from bigmodel_cli.fileio import atomic_write, write_json

    with atomic_write(folder / TOKENIZER_FILE) as handle:
        handle.write(tokenizer.to_str())
    tokens = vocab_tokens(tokenizer)
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise UserError(f"the tokenizer has no {' '.join(missing)}", hint="its vocabulary needs BERT's special tokens")
    with atomic_write(folder / "vocab.txt") as handle:
        Vocab(tokens, [0] * len(tokens)).save(handle)
    previous = read_json(folder / "meta.json") if (folder / "meta.json").is_file() else {}
    write_json(folder / "meta.json", {**previous, "tokenizer": meta})


_ASCII_WORD = re.compile(r"[A-Za-z0-9]")


def detokenize(tokens: list[str]) -> str:
    """Join tokens as text: no spaces between Chinese words, spaces between English ones."""
    out = ""
    for token in tokens:
        if token in SPECIAL_TOKENS:
            continue
        if len(token) == 3 and token.startswith(CONTINUATION):  # a piece inside a word
            out += token[2:]
            continue
        if out and _ASCII_WORD.match(token[0]) and _ASCII_WORD.match(out[-1]):
            out += " "
        elif out and token[0].isalnum() and token[0].isascii() and out[-1] in ",.;:!?":
            out += " "
        out += token
    return out
