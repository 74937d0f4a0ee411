"""The vocabulary: built from the training split only, special tokens first.

`vocab.txt` holds one `token<TAB>count` per line; a token's id is its line number
(starting at 0). Special tokens carry count 0.

Words are the units (jieba's or NLTK's), but a word vocabulary alone turns every rare word
into [UNK], and in a review corpus the rare words carry much of the meaning ("超值", "坑爹").
So with `preprocess --pieces` the vocabulary also holds character pieces: each character
seen at the start of a training word, and each seen inside one as `##c`. A word outside the
vocabulary is then split into the longest pieces that are in it, left to right: exactly
BERT's WordPiece, so the exported tokenizer (Hugging Face's, with the word vocabulary as its
WordPiece vocabulary) gives the same ids.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import compress, repeat
from operator import ge, methodcaller
from pathlib import Path

from bigmodel_cli.errors import InputError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = SPECIAL_TOKENS
CONTINUATION = "##"
# BERT's WordPiece gives [UNK] for a longer token without looking it up; so do we.
MAX_WORD_CHARS = 100


@dataclass
class Vocab:
    tokens: list[str]
    counts: list[int]

    def __post_init__(self) -> None:
        self.index = {t: i for i, t in enumerate(self.tokens)}
        # Vocabularies built with pieces=False (or before pieces existed) hold no `##c`
        # entries; their unknown words stay [UNK] without a search.
        self.has_pieces = any(len(t) == 3 for t in filter(methodcaller("startswith", CONTINUATION), self.tokens))

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.index

    def id(self, token: str) -> int:
        return self.index.get(token, self.index[UNK])

    def encode(self, tokens: list[str]) -> list[int]:
        unk = self.index[UNK]
        get = self.index.get
        if not self.has_pieces:
            return [get(t, unk) for t in tokens]
        ids: list[int] = []
        for token in tokens:
            i = get(token) if len(token) <= MAX_WORD_CHARS else unk
            if i is None:
                ids.extend(get(p) for p in self.pieces(token))
            else:
                ids.append(i)
        return ids

    def pieces(self, word: str) -> list[str]:
        """The vocabulary entries that spell `word`: itself when it is in the vocabulary, else
        WordPiece's greedy longest-match-first split (`##` marks a piece inside the word), or
        [UNK] when no split exists. Same result as transformers' WordpieceTokenizer."""
        if len(word) > MAX_WORD_CHARS:
            return [UNK]
        if word in self.index or not self.has_pieces:
            return [word if word in self.index else UNK]
        out, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else CONTINUATION + word[start:end]
                if piece in self.index:
                    break
                end -= 1
            else:
                return [UNK]
            out.append(piece)
            start = end
        return out

    @classmethod
    def build(cls, counter: Counter, min_count: int = 1, max_size: int = 0, pieces: bool = False) -> "Vocab":
        """Words with at least min_count occurrences; with pieces, also the characters that
        start (`c`) or continue (`##c`) at least min_count training words, counted by the
        occurrences of the words they come from."""
        # Filtered with C loops (compress, map): a comprehension over 100,000 types is
        # most of the time of building.
        if min_count > 1:
            entries = dict(compress(counter.items(), map(ge, counter.values(), repeat(min_count))))
        else:
            entries = dict(counter)
        for special in SPECIAL_TOKENS:
            entries.pop(special, None)
        if entries and max(map(len, entries)) > MAX_WORD_CHARS:
            entries = {w: c for w, c in entries.items() if len(w) <= MAX_WORD_CHARS}
        if pieces:
            piece_counts: Counter = Counter()
            for word, count in counter.items():
                if word in SPECIAL_TOKENS or len(word) > MAX_WORD_CHARS:
                    continue
                piece_counts[word[0]] += count
                for char in word[1:]:
                    piece_counts[CONTINUATION + char] += count
            for piece, count in piece_counts.items():
                if count >= min_count:
                    # A character that is also a word: its count as a piece includes the word's.
                    entries[piece] = max(entries.get(piece, 0), count)
        # Ties in count are broken by the token itself so that the vocabulary is the same
        # whatever order the documents arrived in: sorted by token, then (stably, and
        # reverse=True keeps that) by count.
        words = sorted(entries)
        words.sort(key=entries.__getitem__, reverse=True)
        if max_size:
            words = words[: max(0, max_size - len(SPECIAL_TOKENS))]
        return cls(list(SPECIAL_TOKENS) + words, [0] * len(SPECIAL_TOKENS) + [entries[w] for w in words])

    def save(self, handle) -> None:
        handle.write("".join(f"{token}\t{count}\n" for token, count in zip(self.tokens, self.counts)))

    @classmethod
    def load(cls, path: Path) -> "Vocab":
        tokens, counts = [], []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                token, sep, count = line.rstrip("\n").partition("\t")
                if not sep or not count.isdigit():
                    raise InputError(path, "expected 'token<TAB>count'", line=number, hint="run `bigmodel preprocess --force` to rebuild it")
                tokens.append(token)
                counts.append(int(count))
        missing = [t for t in SPECIAL_TOKENS if t not in tokens]
        if missing:
            raise InputError(path, f"special tokens missing: {' '.join(missing)}", hint="run `bigmodel preprocess --force` to rebuild it")
        return cls(tokens, counts)
