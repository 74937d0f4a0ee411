"""Character and subword tokenizers, built with Hugging Face `tokenizers` (Rust).

A jieba word vocabulary cannot travel: a custom Python pre-tokenizer cannot be saved into
`tokenizer.json`, so transformers could never reproduce jieba's ids from raw text, and every
word outside the vocabulary becomes [UNK]. These tokenizers keep normalisation and
pre-tokenisation inside `tokenizer.json`, so the same file gives the same ids in bigmodel,
in `transformers.AutoTokenizer` and in `tokenizers` alone:

- `char`: Chinese BERT's design. Each CJK ideograph is a token of its own (BertNormalizer's
  `handle_chinese_chars`), other text is split at spaces and punctuation and then into
  WordPiece pieces trained on the corpus. jieba's words are then used only to choose whole
  words to mask.
- `wordpiece`: the same without the per-character split, so frequent Chinese words become
  pieces of their own.
- `bpe`, `unigram`: sentencepiece-style (`▁` marks a space), with punctuation split off.

The five special tokens come first, in bigmodel's order, so their ids are the same whatever
the tokenizer (0-4), and the post-processor wraps a text as [CLS] text [SEP].
"""

from __future__ import annotations

from typing import Iterable, Iterator

from bigmodel_cli.data.vocab import CLS, SEP, SPECIAL_TOKENS, UNK
from bigmodel_cli.errors import UserError

KINDS = ("word", "char", "wordpiece", "bpe", "unigram")
# --vocab-size 0: character vocabularies of Chinese corpora hold 4,000-8,000 entries; the
# subword ones get room for frequent words besides.
DEFAULT_SIZES = {"char": 8000, "wordpiece": 16000, "bpe": 16000, "unigram": 16000}
MAX_WORD_CHARS = 100  # as BERT's WordPiece: a longer pre-token is one [UNK]


def default_size(kind: str, vocab_size: int) -> int:
    return vocab_size or DEFAULT_SIZES[kind]


def empty_tokenizer(kind: str, *, lowercase: bool, nfkc: bool):
    """The untrained pipeline of a `kind` tokenizer: normaliser, pre-tokenizer, model, decoder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    steps = [normalizers.NFKC()] if nfkc else []
    # clean_text drops control characters and maps every whitespace to a space, as cleaning
    # did for the training text; strip_accents follows lowercase, as in BERT.
    steps.append(normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=kind == "char",
                                            strip_accents=lowercase, lowercase=lowercase))
    if kind in ("char", "wordpiece"):
        tokenizer = Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix="##",
                                               max_input_chars_per_word=MAX_WORD_CHARS))
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
        tokenizer.decoder = decoders.Metaspace()
    elif kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
        tokenizer.decoder = decoders.Metaspace()
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    tokenizer.normalizer = normalizers.Sequence(steps)
    return tokenizer


def _trainer(kind: str, vocab_size: int, min_frequency: int):
    from tokenizers import trainers

    special = list(SPECIAL_TOKENS)
    if kind in ("char", "wordpiece"):
        # No limit_alphabet: BertWordPieceTokenizer's 1,000 would turn every rarer Chinese
        # character into [UNK]; the trainer's own default keeps them all.
        return trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special,
                                         continuing_subword_prefix="##", show_progress=False)
    if kind == "bpe":
        return trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special,
                                   show_progress=False)
    return trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special, unk_token=UNK, show_progress=False)


def train_tokenizer(kind: str, texts: Iterable[str], *, vocab_size: int, min_frequency: int, lowercase: bool,
                    nfkc: bool):
    """A `kind` tokenizer trained on `texts`, with [CLS] ... [SEP] added around each text."""
    tokenizer = empty_tokenizer(kind, lowercase=lowercase, nfkc=nfkc)
    size = default_size(kind, vocab_size)
    try:
        tokenizer.train_from_iterator(_batched(texts), trainer=_trainer(kind, size, min_frequency))
    except Exception as exc:  # the Rust trainer's errors arrive as a plain Exception
        if "not large enough" in str(exc):
            raise UserError(f"--vocab-size {size:,} is smaller than the distinct characters of the training split, "
                            f"which a {kind} vocabulary must all hold",
                            hint="raise --vocab-size (Chinese text needs several thousand), or use --tokenizer char") from None
        raise
    add_special_wrapping(tokenizer)
    return tokenizer


def add_special_wrapping(tokenizer) -> None:
    """[CLS] text [SEP] (and [CLS] a [SEP] b [SEP] for pairs), as BERT does."""
    from tokenizers import processors

    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)])


def _batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def vocab_tokens(tokenizer) -> list[str]:
    """The tokenizer's vocabulary in id order."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = [""] * len(vocab)
    for token, i in vocab.items():
        tokens[i] = token
    return tokens
