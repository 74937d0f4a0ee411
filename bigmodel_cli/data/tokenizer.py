"""Raw text to the tokens and ids a model was trained on.

A run folder keeps copies of preprocess's `meta.json` (cleaning and segmentation options),
`vocab.txt` and the user dictionary, so generate, predict and explain replay exactly the
normalisation and segmentation of training, read from disk, never re-specified by hand.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from bigmodel_cli.data.vocab import CLS, CONTINUATION, SEP, SPECIAL_TOKENS, Vocab
from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import read_json

FILES = ("meta.json", "vocab.txt")


def copy_tokenizer_files(processed: Path, run_dir: Path, vocab: Path | None = None) -> str:
    """Copy meta.json, the user dictionary and vocab.txt (from `vocab`, default processed's)
    into the run, and record the vocabulary's sha256 in the run's meta.json, so that a
    vocab.txt changed later is caught before it maps words to the wrong ids."""
    from bigmodel_cli.fileio import sha256_file, write_json

    for name in (*FILES, "user_dict.txt"):
        if (processed / name).is_file():
            shutil.copyfile(processed / name, run_dir / name)
    if vocab is not None:
        shutil.copyfile(vocab, run_dir / "vocab.txt")
    digest = sha256_file(run_dir / "vocab.txt")
    if (run_dir / "meta.json").is_file():
        write_json(run_dir / "meta.json", {**read_json(run_dir / "meta.json"), "vocab_sha256": digest})
    return digest


class TextPipeline:
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
