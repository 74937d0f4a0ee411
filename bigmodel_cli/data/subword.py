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

Training is repeatable: the same texts and options give the same `tokenizer.json`. The
library's trainers are not (huggingface/tokenizers#1794): its WordPiece trainer numbers the
`##x` pieces in hash-map order, and those numbers break ties between merges, so even the
set of pieces changes; its unigram trainer sums scores in an order that changes from run to
run, and orders equal scores by hash. See `_train_wordpiece` and `_canonical_unigram`.
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


def _trainer(kind: str, vocab_size: int, min_frequency: int, fixed: Iterable[str] = ()):
    """`fixed`: tokens the trainer numbers right after the special tokens, in this order."""
    from tokenizers import trainers

    special = [*SPECIAL_TOKENS, *fixed]
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
    size = default_size(kind, vocab_size)
    options = dict(lowercase=lowercase, nfkc=nfkc)
    if kind in ("char", "wordpiece"):
        tokenizer = _train_wordpiece(kind, texts, size, min_frequency, **options)
    else:
        tokenizer = _train(kind, texts, size, min_frequency, **options)
        if kind == "unigram":
            tokenizer = _canonical_unigram(tokenizer)
    add_special_wrapping(tokenizer)
    return tokenizer


def _train(kind: str, texts: Iterable[str], size: int, min_frequency: int, *, lowercase: bool, nfkc: bool,
           fixed: Iterable[str] = ()):
    tokenizer = empty_tokenizer(kind, lowercase=lowercase, nfkc=nfkc)
    try:
        tokenizer.train_from_iterator(_batched(texts), trainer=_trainer(kind, size, min_frequency, fixed))
    except Exception as exc:  # the Rust trainer's errors arrive as a plain Exception
        if "not large enough" in str(exc):
            raise UserError(f"--vocab-size {size:,} is smaller than the distinct characters of the training split, "
                            f"which a {kind} vocabulary must all hold",
                            hint="raise --vocab-size (Chinese text needs several thousand), or use --tokenizer char") from None
        raise
    return tokenizer


def _train_wordpiece(kind: str, texts: Iterable[str], size: int, min_frequency: int, *, lowercase: bool, nfkc: bool):
    """WordPiece trained twice: once without merges, to learn which one-character `##x`
    pieces the words make, then for real with those pieces numbered in code-point order
    (passed as tokens to keep), which makes the trainer's ties between merges, and so its
    pieces, the same on every run. The result is rebuilt without them as added tokens."""
    from tokenizers import models

    texts = list(texts)  # read twice, so held in memory: the cleaned training split
    options = dict(lowercase=lowercase, nfkc=nfkc)
    # A size the special tokens and the alphabet already fill: no merges, just the pieces.
    alphabet_only = _train(kind, texts, len(SPECIAL_TOKENS), min_frequency, **options)
    suffixes = sorted(t for t in alphabet_only.get_vocab() if _is_char_suffix(t))  # str order is code-point order
    trained = _train(kind, texts, size, min_frequency, fixed=suffixes, **options)
    ids = trained.get_vocab()
    order = sorted(ids, key=lambda token: _wordpiece_rank(token, ids))
    model = models.WordPiece(vocab={t: i for i, t in enumerate(order)}, unk_token=UNK, continuing_subword_prefix="##",
                             max_input_chars_per_word=MAX_WORD_CHARS)
    return _rebuilt(trained, model)


def _is_char_suffix(token: str) -> bool:
    return token.startswith("##") and len(token) == 3


def _wordpiece_rank(token: str, ids: dict[str, int]) -> tuple[int, int]:
    """BERT's layout: the special tokens, the characters, the `##` characters (each group in
    the trainer's order, which is code-point order for the last two), then the pieces in the
    order the trainer merged them."""
    if token in SPECIAL_TOKENS:
        return 0, SPECIAL_TOKENS.index(token)
    if _is_char_suffix(token):
        return 2, ids[token]
    return (1 if len(token) == 1 else 3), ids[token]


# Unigram scores are sums whose order changes between runs, so their last bits (about 1e-15)
# do; rounded to a millionth they agree, unless a score lies that close to a rounding boundary.
SCORE_DECIMALS = 6


# The score step the unigram trainer gives the characters it must keep but did not score.
_FILLER_STEP = 0.0001


def _canonical_unigram(trained):
    """The special tokens, then the pieces by falling score and, on equal scores, by
    code points (str order); scores rounded to SCORE_DECIMALS, the rarest characters levelled."""
    import json

    from tokenizers import models

    pieces = json.loads(trained.to_str())["model"]["vocab"]
    special = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    head = sorted((p for p in pieces if p[0] in special), key=lambda p: special[p[0]])
    scores = _rarest_chars_level({t: score for t, score in pieces if t not in special})
    rest = sorted(((t, round(score, SCORE_DECIMALS)) for t, score in scores.items()), key=lambda p: (-p[1], p[0]))
    vocab = [(t, float(score)) for t, score in head] + rest
    return _rebuilt(trained, models.Unigram(vocab, unk_id=special[UNK], byte_fallback=False))


def _rarest_chars_level(scores: dict[str, float]) -> dict[str, float]:
    """The trainer gives each character that its pieces lack the lowest score plus 0, 1, 2...
    steps, in hash-map order, and which rare characters its pieces lack changes from run to
    run (their scores are sums taken in hash order). All single characters scored within
    that ladder get the lowest score, which orders them by code point."""
    singles = {score for token, score in scores.items() if len(token) == 1}
    lowest = min(scores.values(), default=0.0)
    top, penalty = lowest, 0.0
    while lowest + penalty in singles:  # the sums exactly as the trainer makes them
        top = lowest + penalty
        penalty += _FILLER_STEP
    return {token: lowest if len(token) == 1 and score <= top else score for token, score in scores.items()}


def _rebuilt(trained, model):
    """`trained`'s normaliser, pre-tokenizer and decoder around `model`, with only the five
    special tokens as added tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer(model)
    tokenizer.normalizer = trained.normalizer
    tokenizer.pre_tokenizer = trained.pre_tokenizer
    tokenizer.decoder = trained.decoder
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
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
