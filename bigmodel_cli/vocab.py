"""The vocabulary: built from the training split only, special tokens first.

`vocab.txt` holds one `token<TAB>count` per line; a token's id is its line number
(starting at 0). Special tokens carry count 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bigmodel_cli.errors import InputError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = SPECIAL_TOKENS


@dataclass
class Vocab:
    tokens: list[str]
    counts: list[int]

    def __post_init__(self) -> None:
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.index

    def id(self, token: str) -> int:
        return self.index.get(token, self.index[UNK])

    def encode(self, tokens: list[str]) -> list[int]:
        unk = self.index[UNK]
        get = self.index.get
        return [get(t, unk) for t in tokens]

    @classmethod
    def build(cls, counter: Counter, min_count: int = 1, max_size: int = 0) -> "Vocab":
        # Ties in count are broken by the token itself so that the vocabulary is the same
        # whatever order the documents arrived in.
        words = sorted(((c, w) for w, c in counter.items() if c >= min_count and w not in SPECIAL_TOKENS),
                       key=lambda cw: (-cw[0], cw[1]))
        if max_size:
            words = words[: max(0, max_size - len(SPECIAL_TOKENS))]
        return cls(list(SPECIAL_TOKENS) + [w for _, w in words], [0] * len(SPECIAL_TOKENS) + [c for c, _ in words])

    def save(self, handle) -> None:
        for token, count in zip(self.tokens, self.counts):
            handle.write(f"{token}\t{count}\n")

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
