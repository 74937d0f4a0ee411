"""`bigmodel preprocess` on good input: formats, splits, encodings, cleaning, segmentation,
stopwords, vocabulary and the report (issue #2). Tiny corpora, one worker unless stated."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from bigmodel_cli.data.preprocess import SPLITS, preprocess
from bigmodel_cli.data.vocab import SPECIAL_TOKENS
from bigmodel_cli.workspace.config import PreprocessConfig
from bigmodel_cli.workspace.layout import Workspace

# Genuine review sentences, simplified (GB18030/GBK) and traditional (Big5).
ZH = [
    "这家餐厅的菜很好吃，服务也很周到，下次还会再来。",
    "房间干净整洁，位置方便，就是隔音不太好。",
    "快递速度很快，包装完好，手机运行流畅，非常满意。",
    "质量太差了，用了两天就坏了，客服也不理人。",
    "电影情节紧凑，演员表演自然，值得一看。",
    "价格便宜，味道一般，分量有点少。",
]
ZH_TRADITIONAL = [
    "這家餐廳的菜很好吃，服務也很周到，下次還會再來。",
    "房間乾淨整潔，位置方便，就是隔音不太好。",
    "快遞速度很快，包裝完好，手機運行流暢，非常滿意。",
    "質量太差了，用了兩天就壞了，客服也不理人。",
    "電影情節緊湊，演員表演自然，值得一看。",
    "價格便宜，味道一般，分量有點少。",
]
ALL_TRAIN = "1,0,0"  # keep every document in train, in input order


def sources(out) -> dict[str, str]:
    """source "file:line" -> split."""
    return {d["source"]: s for s in SPLITS for d in out.split(s)}


# -- formats ------------------------------------------------------------------------
def test_txt_one_document_per_line(corpus_dir, helpers, run_pre, out):
    path = helpers.write_lines(corpus_dir / "docs.txt", ["first document here", "", "  second   document  ", "third one"])
    result = run_pre([path], split=ALL_TRAIN)
    docs = out.split("train")
    assert [d["text"] for d in docs] == ["first document here", "second document", "third one"]
    assert [d["source"].rsplit(":", 1)[1] for d in docs] == ["1", "3", "4"]
    assert all(d["label"] is None for d in docs)
    # the blank line is read and dropped: the counts add up to the file's 4 lines
    assert result.report["documents"] == {"read": 4, "kept": 3, "rejected": 0, "dropped": {"blank": 1}}
    assert result.report["labels"] == {}


def test_fasttext_labels_in_txt(corpus_dir, helpers, run_pre, out):
    path = helpers.write_lines(corpus_dir / "ft.txt", ["__label__pos great phone", "__label__neg battery died fast",
                                                       "__label__pos love it"])
    result = run_pre([path], split=ALL_TRAIN, lang="en")
    docs = out.split("train")
    assert [(d["text"], d["label"]) for d in docs] == [("great phone", "pos"), ("battery died fast", "neg"),
                                                       ("love it", "pos")]
    assert docs[1]["tokens"] == ["battery", "died", "fast"]
    assert result.report["labels"] == {"train": {"neg": 1, "pos": 2}}
    assert out.meta()["labels"] == ["neg", "pos"]


def test_jsonl_with_text_and_label_fields(corpus_dir, helpers, run_pre, out):
    path = helpers.write_jsonl(corpus_dir / "r.jsonl", [
        {"id": 1, "review": "Screen is sharp", "stars": 5},
        {"id": 2, "review": "Arrived broken", "stars": 1, "extra": [1, 2]},
    ])
    run_pre([path], split=ALL_TRAIN, lang="en", text_field="review", label_field="stars", label_required=True)
    assert [(d["text"], d["label"]) for d in out.split("train")] == [("Screen is sharp", "5"), ("Arrived broken", "1")]


def test_jsonl_default_fields_and_unlabelled(corpus_dir, helpers, run_pre, out):
    labelled = helpers.write_jsonl(corpus_dir / "l.jsonl", [{"text": "nice", "label": "pos"}, {"text": "awful", "label": "neg"}])
    run_pre([labelled], split=ALL_TRAIN, lang="en")
    assert [(d["text"], d["label"]) for d in out.split("train")] == [("nice", "pos"), ("awful", "neg")]
    plain = helpers.write_jsonl(corpus_dir / "u.jsonl", [{"text": "nice"}, {"text": "awful"}])
    run_pre([plain], split=ALL_TRAIN, lang="en")
    assert [d.get("label") for d in out.split("train")] == [None, None]


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_csv_and_tsv_columns(corpus_dir, helpers, run_pre, out, suffix):
    path = helpers.write_table(corpus_dir / f"reviews{suffix}", ["id", "review", "stars"], [
        [1, "Fast delivery, well packed", 5],
        [2, "Stopped working after a week", 1],
        [3, "OK for the price", 3],
    ])
    run_pre([path], split=ALL_TRAIN, lang="en", text_field="review", label_field="stars", label_required=True)
    docs = out.split("train")
    assert [(d["text"], d["label"]) for d in docs] == [
        ("Fast delivery, well packed", "5"), ("Stopped working after a week", "1"), ("OK for the price", "3")]
    assert docs[0]["tokens"] == ["Fast", "delivery", ",", "well", "packed"]
    assert docs[0]["source"].endswith(f"reviews{suffix}:2")  # line 1 is the header


def test_csv_label_column_used_when_present(corpus_dir, helpers, run_pre, out):
    path = helpers.write_table(corpus_dir / "t.csv", ["text", "label"], [["good", "pos"], ["bad", "neg"]])
    run_pre([path], split=ALL_TRAIN, lang="en")
    assert [d["label"] for d in out.split("train")] == ["pos", "neg"]


def test_folder_of_mixed_files(corpus_dir, helpers, run_pre, out):
    helpers.write_lines(corpus_dir / "a.txt", ["__label__pos text from txt"])
    helpers.write_jsonl(corpus_dir / "b.jsonl", [{"text": "text from jsonl", "label": "neg"}])
    helpers.write_table(corpus_dir / "c.csv", ["text", "label"], [["text from csv", "pos"]])
    helpers.write_table(corpus_dir / "d.tsv", ["text", "label"], [["text from tsv", "neg"]])
    helpers.write_lines(corpus_dir / "sub" / "e.txt.gz", ["__label__pos text from gz"])
    helpers.write_lines(corpus_dir / "README.md", ["not a corpus file"])
    helpers.write_lines(corpus_dir / ".hidden.txt", ["__label__pos hidden text"])
    result = run_pre([corpus_dir], split=ALL_TRAIN, lang="en")
    assert out.texts() == ["text from txt", "text from jsonl", "text from csv", "text from tsv", "text from gz"]
    assert [(f["path"].rsplit("/", 1)[-1], f["format"]) for f in result.report["files"]] == [
        ("a.txt", "txt"), ("b.jsonl", "jsonl"), ("c.csv", "csv"), ("d.tsv", "tsv"), ("e.txt.gz", "txt")]
    assert result.report["labels"] == {"train": {"neg": 2, "pos": 3}}


@pytest.mark.parametrize("compression", [".gz", ".bz2", ".xz"])
@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "tsv"])
def test_compressed_inputs_read_like_plain_ones(corpus_dir, helpers, run_pre, out, fmt, compression):
    rows = [("很好用，推荐购买", "pos"), ("works as described", "pos"), ("退货了，质量太差", "neg")]

    def write(path):
        if fmt == "txt":
            return helpers.write_lines(path, [f"__label__{label} {text}" for text, label in rows])
        if fmt == "jsonl":
            return helpers.write_jsonl(path, [{"text": text, "label": label} for text, label in rows])
        return helpers.write_table(path, ["text", "label"], [list(r) for r in rows])

    run_pre([write(corpus_dir / f"plain.{fmt}")], split=ALL_TRAIN)
    plain = [(d["text"], d["tokens"], d["label"]) for d in out.split("train")]
    result = run_pre([write(corpus_dir / f"packed.{fmt}{compression}")], split=ALL_TRAIN)
    assert [(d["text"], d["tokens"], d["label"]) for d in out.split("train")] == plain
    assert [t for t, _, _ in plain] == [t.replace("，", ",") for t, _ in rows]
    assert result.report["files"][0]["format"] == fmt


def test_format_option_overrides_extension(corpus_dir, helpers, run_pre, out):
    path = helpers.write_jsonl(corpus_dir / "records.log", [{"text": "from a log file"}])
    run_pre([path], split=ALL_TRAIN, lang="en", fmt="jsonl")
    assert out.texts() == ["from a log file"]


# -- splits -------------------------------------------------------------------------
def _labelled_corpus(helpers, folder, n_neg=30, n_pos=70):
    lines = [f"__label__neg complaint number {i} about the product" for i in range(n_neg)]
    lines += [f"__label__pos praise number {i} about the product" for i in range(n_pos)]
    return helpers.write_lines(folder / "labelled.txt", lines)


def test_split_fractions_seeded_and_stratified(corpus_dir, helpers, run_pre, out):
    path = _labelled_corpus(helpers, corpus_dir)
    first = run_pre([path], seed=7, split="0.8,0.1,0.1", lang="en").report
    assert first["splits"] == {"train": 80, "dev": 10, "test": 10}
    # Stratified: each label is split 8:1:1 by itself.
    assert first["labels"] == {"train": {"neg": 24, "pos": 56}, "dev": {"neg": 3, "pos": 7}, "test": {"neg": 3, "pos": 7}}
    assignment = sources(out)
    assert len(assignment) == 100

    run_pre([path], seed=7, split="0.8,0.1,0.1", lang="en")
    assert sources(out) == assignment  # same seed, same split

    other = run_pre([path], seed=8, split="0.8,0.1,0.1", lang="en").report
    assert sources(out) != assignment  # another seed, another split
    assert other["labels"] == first["labels"]  # ... in the same proportions


def test_split_other_fractions_unlabelled(corpus_dir, helpers, run_pre):
    path = helpers.write_lines(corpus_dir / "u.txt", [f"plain document {i}" for i in range(50)])
    report = run_pre([path], split="0.6,0.2,0.2", lang="en").report
    assert report["splits"] == {"train": 30, "dev": 10, "test": 10}
    assert report["labels"] == {}


def test_split_and_seed_on_the_command_line(ws, helpers, run_cli, out):
    _labelled_corpus(helpers, ws.root, n_neg=20, n_pos=20)
    args = ["preprocess", "labelled.txt", "--split", "0.5,0.25,0.25", "--seed", "3", "-j", "1", "--lang", "en"]
    result = run_cli(args, ws.root)
    assert result.exit_code == 0, result.output
    assert out.report()["splits"] == {"train": 20, "dev": 10, "test": 10}
    assert out.report()["labels"]["dev"] == {"neg": 5, "pos": 5}
    first = (ws.processed / "train.parquet").read_bytes()
    assert run_cli([*args, "--force"], ws.root).exit_code == 0
    assert (ws.processed / "train.parquet").read_bytes() == first


def test_train_dev_test_files_kept_as_given(corpus_dir, helpers, run_pre, out):
    train = helpers.write_jsonl(corpus_dir / "train.jsonl", [
        {"text": "good movie", "label": "pos"}, {"text": "bad movie", "label": "neg"},
        {"text": "great film", "label": "pos"}, {"text": "awful film", "label": "neg"}])
    dev = helpers.write_jsonl(corpus_dir / "dev.jsonl", [
        {"text": "nice plot", "label": "pos"}, {"text": "good movie", "label": "pos"},
        {"text": "dull acting", "label": "neg"}])
    test = helpers.write_jsonl(corpus_dir / "test.jsonl", [{"text": "lovely score", "label": "pos"},
                                                           {"text": "boring story", "label": "neg"}])
    report = run_pre(train=train, dev=dev, test=test, lang="en").report
    assert out.texts("train") == ["good movie", "bad movie", "great film", "awful film"]
    assert out.texts("dev") == ["nice plot", "good movie", "dull acting"]  # the copy of a train doc stays in dev
    assert out.texts("test") == ["lovely score", "boring story"]
    assert report["splits_given"] is True
    assert report["splits"] == {"train": 4, "dev": 3, "test": 2}
    assert report["overlap_with_train"] == {"dev": 1}
    assert report["duplicates"] == 0
    assert any("also in train" in w for w in report["warnings"])
    assert {s.split(":")[0].rsplit("/", 1)[-1] for s, split in sources(out).items() if split == "dev"} == {"dev.jsonl"}


# -- encodings ----------------------------------------------------------------------
@pytest.mark.parametrize("encoding, lines, detected, name", [
    ("utf-8", ZH, "utf-8", "r.txt"),
    ("utf-8-sig", ZH, "utf-8-sig", "r.txt"),
    ("utf-16", ZH, "utf-16", "r.txt"),
    ("gb18030", ZH, "gb18030", "r.txt"),
    ("gbk", ZH, "gb18030", "r.txt"),
    ("gb18030", ZH, "gb18030", "r.txt.gz"),
    ("big5", ZH_TRADITIONAL, "big5", "r.txt"),
])
def test_encodings_detected_and_decoded(corpus_dir, helpers, run_pre, out, encoding, lines, detected, name):
    original = helpers.write_lines(corpus_dir / "original.txt", lines)
    run_pre([original], split=ALL_TRAIN, lang="zh")
    from_utf8 = [(d["text"], d["tokens"]) for d in out.split("train")]

    encoded = helpers.write_lines(corpus_dir / name, lines, encoding=encoding)
    report = run_pre([encoded], split=ALL_TRAIN, lang="zh").report
    assert report["files"][0]["encoding"] == detected
    assert [(d["text"], d["tokens"]) for d in out.split("train")] == from_utf8
    assert report["documents"]["rejected"] == 0

    run_pre([encoded], split=ALL_TRAIN, lang="zh", nfkc=False)
    assert out.texts("train") == lines  # decoded exactly


def test_excel_style_csv_with_bom_and_crlf(corpus_dir, helpers, run_pre, out):
    data = "text,label\r\n好评，物流很快,pos\r\n差评，不会再买,neg\r\n".encode("utf-8-sig")
    path = helpers.write_bytes(corpus_dir / "excel.csv", data)
    run_pre([path], split=ALL_TRAIN, lang="zh", nfkc=False)
    assert [(d["text"], d["label"]) for d in out.split("train")] == [("好评，物流很快", "pos"), ("差评，不会再买", "neg")]


LATIN1 = ["café crème brûlée", "naïve façade à la carte", "señor piñata jalapeño"]


def test_encoding_option_overrides_detection(corpus_dir, helpers, run_pre, out):
    path = helpers.write_lines(corpus_dir / "latin.txt", LATIN1, encoding="latin-1")
    report = run_pre([path], split=ALL_TRAIN, lang="en", encoding="latin-1").report
    assert out.texts("train") == LATIN1
    assert report["files"][0]["encoding"] == "iso8859-1"


def test_utf16_without_bom_needs_encoding(corpus_dir, helpers, run_pre, out):
    path = helpers.write_lines(corpus_dir / "u16.txt", ZH, encoding="utf-16-le")
    run_pre([path], split=ALL_TRAIN, lang="zh", encoding="utf-16-le", nfkc=False)
    assert out.texts("train") == ZH


def test_encoding_from_config_and_command_line(ws, helpers, run_cli, out):
    helpers.write_lines(ws.root / "latin.txt", LATIN1, encoding="latin-1")
    config = ws.config_path.read_text(encoding="utf-8")
    assert 'encoding = "auto"' in config
    ws.config_path.write_text(config.replace('encoding = "auto"', 'encoding = "latin-1"'), encoding="utf-8")
    result = run_cli(["preprocess", "latin.txt", "--split", ALL_TRAIN, "-j", "1"], ws.root)
    assert result.exit_code == 0, result.output
    assert out.texts("train") == LATIN1

    ws.config_path.write_text(config, encoding="utf-8")  # back to auto: the option does it
    result = run_cli(["preprocess", "latin.txt", "--split", ALL_TRAIN, "-j", "1", "--encoding", "latin-1"], ws.root)
    assert result.exit_code == 0, result.output
    assert out.texts("train") == LATIN1


# -- normalisation and cleaning -------------------------------------------------------
def test_nfkc_full_width_to_half_width(corpus_dir, helpers, run_pre, out):
    path = helpers.write_lines(corpus_dir / "fw.txt", ["ＡＢＣ１２３ full width", "Ｈｅｌｌｏ，ｗｏｒｌｄ！"])
    run_pre([path], split=ALL_TRAIN, lang="en")
    docs = out.split("train")
    assert [d["text"] for d in docs] == ["ABC123 full width", "Hello,world!"]
    assert docs[0]["tokens"] == ["ABC123", "full", "width"]
    run_pre([path], split=ALL_TRAIN, lang="en", nfkc=False)
    assert out.texts("train")[0] == "ＡＢＣ１２３ full width"


def test_control_characters_removed(corpus_dir, helpers, run_pre, out):
    path = helpers.write_lines(corpus_dir / "ctl.txt", [
        "bell\x07ring and escape\x1b here",
        "zero\u200bwidth 好\u200b吃",
        "tab\tand\x0bvertical\x0cfeed",
        "bidi\u202emark and\ufeffbom",
    ])
    run_pre([path], split=ALL_TRAIN)
    docs = out.split("train")
    assert [d["text"] for d in docs] == ["bellring and escape here", "zerowidth 好吃", "tab and vertical feed",
                                         "bidimark andbom"]
    assert "好吃" in docs[1]["tokens"]


def test_html_tags_and_entities(corpus_dir, helpers, run_pre, out):
    lines = ["<p>Great <b>phone</b>&nbsp;&amp; case</p>", "<script>alert(1)</script>Escaped &lt;b&gt; stays text"]
    path = helpers.write_lines(corpus_dir / "h.txt", lines)
    run_pre([path], split=ALL_TRAIN, lang="en")
    assert out.texts("train") == ["Great phone & case", "Escaped <b> stays text"]
    run_pre([path], split=ALL_TRAIN, lang="en", strip_html=False)
    assert out.texts("train")[0] == "<p>Great <b>phone</b>&nbsp;&amp; case</p>"


URL_LINES = ["Visit https://example.com/page?id=3 or mail support@example.com today.",
             "详情请访问 https://shop.example.cn/item 或发邮件到 kefu@example.cn 咨询"]


def test_urls_and_emails_replaced_by_single_tokens(corpus_dir, helpers, run_pre, out):
    run_pre([helpers.write_lines(corpus_dir / "u.txt", URL_LINES)], split=ALL_TRAIN, min_count=1)
    en, zh = out.split("train")
    assert en["text"] == "Visit [URL] or mail [EMAIL] today."
    assert en["tokens"] == ["Visit", "[URL]", "or", "mail", "[EMAIL]", "today", "."]
    assert zh["text"] == "详情请访问 [URL] 或发邮件到 [EMAIL] 咨询"
    assert zh["lang"] == "zh"
    assert Counter(zh["tokens"])["[URL]"] == 1 and Counter(zh["tokens"])["[EMAIL]"] == 1
    assert "URL" not in zh["tokens"] and "[" not in zh["tokens"]
    assert {"[URL]", "[EMAIL]"} <= set(out.vocab())


def test_urls_and_emails_removed_or_kept(corpus_dir, helpers, run_pre, out):
    path = helpers.write_lines(corpus_dir / "u.txt", URL_LINES)
    run_pre([path], split=ALL_TRAIN, urls="remove", emails="remove")
    en, zh = out.texts("train")
    assert en == "Visit or mail today."
    assert zh == "详情请访问 或发邮件到 咨询"
    run_pre([path], split=ALL_TRAIN, urls="keep", emails="keep")
    assert out.texts("train") == URL_LINES
    run_pre([path], split=ALL_TRAIN, urls="keep", emails="replace")
    assert out.texts("train")[0] == "Visit https://example.com/page?id=3 or mail [EMAIL] today."


def test_whitespace_collapsed(corpus_dir, helpers, run_pre, out):
    path = helpers.write_lines(corpus_dir / "ws.txt", ["  many   spaces\tand\t\ttabs \u3000 ideographic  \r"])
    run_pre([path], split=ALL_TRAIN, lang="en")
    assert out.texts("train") == ["many spaces and tabs ideographic"]


def test_length_filters_report_drop_reasons(corpus_dir, helpers, run_pre, out):
    path = helpers.write_lines(corpus_dir / "len.txt", [
        "just right text", "ab   c", "x" * 31, "<br><p></p>", "another fine one", "  also   fine  ok  "])
    report = run_pre([path], split=ALL_TRAIN, lang="en", min_chars=5, max_chars=30).report
    assert out.texts("train") == ["just right text", "another fine one", "also fine ok"]
    assert report["documents"] == {"read": 6, "kept": 3, "rejected": 0, "dropped": {
        "shorter than --min-chars": 1, "longer than --max-chars": 1, "empty after cleaning": 1}}


def test_exact_duplicates_after_normalisation(corpus_dir, helpers, run_pre, out):
    path = helpers.write_lines(corpus_dir / "dup.txt", [
        "ABC123 is great", "ＡＢＣ１２３ is great", "ABC123   is great", "<b>ABC123</b> is great",
        "ABC123 is great", "something else entirely"])
    report = run_pre([path], split=ALL_TRAIN, lang="en").report
    assert out.texts("train") == ["ABC123 is great", "something else entirely"]
    assert report["duplicates"] == 4
    assert report["documents"]["dropped"] == {"duplicate": 4}
    assert report["documents"]["read"] == 6
    report = run_pre([path], split=ALL_TRAIN, lang="en", dedupe=False).report
    assert report["duplicates"] == 0 and report["documents"]["kept"] == 6


def test_label_conflicts_between_duplicates(corpus_dir, helpers, run_pre, out):
    path = helpers.write_lines(corpus_dir / "conf.txt", [
        "__label__pos works fine", "__label__pos works  fine", "__label__neg works fine", "__label__neg broke"])
    report = run_pre([path], split=ALL_TRAIN, lang="en").report
    assert [(d["text"], d["label"]) for d in out.split("train")] == [("works fine", "pos"), ("broke", "neg")]
    assert report["duplicates"] == 2
    assert report["label_conflicts"]["count"] == 1
    example = report["label_conflicts"]["examples"][0]
    assert (example["kept_label"], example["dropped_label"]) == ("pos", "neg")
    assert example["kept"].endswith("conf.txt:1") and example["dropped"].endswith("conf.txt:3")
    assert any("different label" in w for w in report["warnings"])


# -- segmentation -------------------------------------------------------------------
def test_chinese_tokens_are_jiebas(corpus_dir, helpers, run_pre, out):
    import jieba

    lines = ZH + ["我用iPhone拍照片，效果很好", "南京市长江大桥1917--1960年的历史"]
    run_pre([helpers.write_lines(corpus_dir / "zh.txt", lines)], split=ALL_TRAIN, lang="zh")
    docs = out.split("train")
    assert len(docs) == len(lines)
    for doc in docs:
        assert doc["tokens"] == [t for t in jieba.lcut(doc["text"]) if not t.isspace()], doc["text"]
        assert doc["lang"] == "zh"


def _preprocess_with_user_dict(root, path, user_dict) -> None:
    preprocess(Workspace(root), [path], config=PreprocessConfig(workers=1, split=ALL_TRAIN, user_dict=str(user_dict)),
               lang="zh", force=True)


def test_user_dict_changes_segmentation(corpus_dir, helpers, run_pre, out):
    sentence = "小蓝鲸智能音箱很好用"
    path = helpers.write_lines(corpus_dir / "zh.txt", [sentence])
    run_pre([path], split=ALL_TRAIN, lang="zh")
    before = out.split("train")[0]["tokens"]
    assert "小蓝鲸" not in before and "蓝鲸" in before
    user_dict = helpers.write_lines(corpus_dir / "terms.txt", ["小蓝鲸 20 nz"])
    # jieba keeps one dictionary per process and a user dictionary stays in it: run in a
    # child process (forked: the dictionaries are already loaded) so other tests see none.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as pool:
        pool.submit(_preprocess_with_user_dict, out.ws.root, path, user_dict).result()
    after = out.split("train")[0]["tokens"]
    assert after[0] == "小蓝鲸" and "".join(after) == sentence
    # Kept beside the data, so that prediction segments the same way.
    assert (out.dir / "user_dict.txt").read_text(encoding="utf-8") == "小蓝鲸 20 nz\n"
    assert out.meta()["segment"]["user_dict"] == "user_dict.txt"


def test_english_needs_no_nltk_data(corpus_dir, helpers, run_pre, out, monkeypatch, tmp_path):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "no_nltk_data")])
    with pytest.raises(LookupError):
        nltk.data.find("tokenizers/punkt_tab")
    path = helpers.write_lines(corpus_dir / "en.txt", ["Hello, world. It's made in the U.S. by Dr. Smith!"])
    run_pre([path], split=ALL_TRAIN, lang="en")
    assert out.split("train")[0]["tokens"] == [
        "Hello", ",", "world", ".", "It", "'s", "made", "in", "the", "U.S.", "by", "Dr.", "Smith", "!"]


@pytest.mark.parametrize("options, tokens", [
    ({}, ["Running", "Dogs", "RAN", "quickly"]),
    ({"lowercase": True}, ["running", "dogs", "ran", "quickly"]),
    ({"lowercase": True, "stem": True}, ["run", "dog", "ran", "quickli"]),
])
def test_lowercase_and_stem(corpus_dir, helpers, run_pre, out, options, tokens):
    path = helpers.write_lines(corpus_dir / "en.txt", ["Running Dogs RAN quickly"])
    run_pre([path], split=ALL_TRAIN, lang="en", **options)
    assert out.split("train")[0]["tokens"] == tokens
    assert out.meta()["segmenter"]["lowercase"] == options.get("lowercase", False)


def test_lang_auto_decides_per_document(corpus_dir, helpers, run_pre, out):
    lines = ["这部手机的拍照效果非常好", "This isn't bad at all.", "物流太慢了，等了一个星期",
             "Battery life is amazing", "性价比很高"]
    report = run_pre([helpers.write_lines(corpus_dir / "mixed.txt", lines)], split=ALL_TRAIN, lang="auto").report
    assert report["langs"] == {"zh": 3, "en": 2}
    docs = out.split("train")
    assert [d["lang"] for d in docs] == ["zh", "en", "zh", "en", "zh"]
    assert docs[1]["tokens"] == ["This", "is", "n't", "bad", "at", "all", "."]
    import jieba

    assert docs[2]["tokens"] == jieba.lcut(docs[2]["text"])


def test_mixed_chinese_english_keeps_english_words_whole(corpus_dir, helpers, run_pre, out):
    lines = ["我用iPhone拍照片，效果很好", "这个App的UI设计很Nice", "Machine Learning入门教程"]
    run_pre([helpers.write_lines(corpus_dir / "mix.txt", lines)], split=ALL_TRAIN, lang="auto")
    docs = out.split("train")
    assert [d["lang"] for d in docs] == ["zh", "zh", "zh"]
    tokens = [t for d in docs for t in d["tokens"]]
    for word in ("iPhone", "App", "UI", "Nice", "Machine", "Learning"):
        assert word in tokens


# -- stopwords ----------------------------------------------------------------------
def _stopword_corpus(helpers, folder):
    return helpers.write_lines(folder / "s.txt", ["这是我的手机", "the phone is great", "foo bar baz"])


def test_builtin_stopwords_written_not_applied(corpus_dir, helpers, run_pre, out):
    run_pre([_stopword_corpus(helpers, corpus_dir)], split=ALL_TRAIN, lang="auto")
    words = (out.dir / "stopwords.txt").read_text(encoding="utf-8").splitlines()
    assert "的" in words and "the" in words
    tokens = [t for d in out.split("train") for t in d["tokens"]]
    assert "的" in tokens and "the" in tokens  # processed data keeps every token
    meta = out.meta()
    assert meta["stopwords"] == "builtin" and meta["stopword_count"] == len(words)


def test_builtin_stopwords_follow_the_language(corpus_dir, helpers, run_pre, out):
    run_pre([helpers.write_lines(corpus_dir / "zh.txt", ZH)], split=ALL_TRAIN, lang="zh")
    words = set((out.dir / "stopwords.txt").read_text(encoding="utf-8").splitlines())
    assert "的" in words and "the" not in words


def test_user_stopword_file(corpus_dir, helpers, run_pre, out):
    stop = helpers.write_lines(corpus_dir / "stop.txt", ["# my list", "foo", "", "bar"])
    run_pre([_stopword_corpus(helpers, corpus_dir)], split=ALL_TRAIN, lang="auto", stopwords=str(stop))
    assert (out.dir / "stopwords.txt").read_text(encoding="utf-8") == "bar\nfoo\n"
    assert "foo" in out.split("train")[2]["tokens"]
    assert out.meta()["stopwords"] == f"file:{stop}"
    assert out.meta()["stopword_count"] == 2


def test_no_stopwords(corpus_dir, helpers, run_pre, out):
    run_pre([_stopword_corpus(helpers, corpus_dir)], split=ALL_TRAIN, lang="auto", stopwords="none")
    assert (out.dir / "stopwords.txt").read_text(encoding="utf-8") == ""
    assert out.meta()["stopwords"] == "none" and out.meta()["stopword_count"] == 0


# -- vocabulary ---------------------------------------------------------------------
def test_vocab_from_training_split_only(corpus_dir, helpers, run_pre, out):
    train = helpers.write_lines(corpus_dir / "train.txt", ["apple banana", "apple cherry"])
    dev = helpers.write_lines(corpus_dir / "dev.txt", ["apple dragonfruit", "banana"])
    test = helpers.write_lines(corpus_dir / "test.txt", ["zebra apple"])
    report = run_pre(train=train, dev=dev, test=test, lang="en", min_count=1).report
    vocab = out.vocab()
    assert "zebra" not in vocab and "dragonfruit" not in vocab
    assert {t: c for t, c in vocab.items() if t not in SPECIAL_TOKENS} == {"apple": 2, "banana": 1, "cherry": 1}
    # dev: apple dragonfruit banana -> one of three tokens (and of three types) unknown.
    assert report["oov_dev"] == {"token_rate": round(1 / 3, 4), "unk_rate": round(1 / 3, 4), "type_rate": round(1 / 3, 4)}
    assert report["types_train"] == 3 and report["vocab_pieces"] == 0

    # with pieces: the words, plus their characters counted by word occurrences
    report = run_pre(train=train, dev=dev, test=test, lang="en", min_count=1, pieces=True).report
    vocab = out.vocab()
    assert {t: vocab[t] for t in ("apple", "a", "##p", "##a", "b", "c", "##y")} == {
        "apple": 2, "a": 2, "##p": 4, "##a": 3, "b": 1, "c": 1, "##y": 1}
    assert "d" not in vocab and "z" not in vocab
    assert report["vocab_pieces"] == len(vocab) - 5 - 3
    # dragonfruit is outside the vocabulary and no training word starts with 'd': still [UNK]
    assert report["oov_dev"]["unk_rate"] == round(1 / 3, 4)


def test_vocab_file_layout_min_count_and_max_size(corpus_dir, helpers, run_pre, out):
    path = helpers.write_lines(corpus_dir / "v.txt", ["apple banana", "apple banana cherry", "apple date"])
    report = run_pre([path], split=ALL_TRAIN, lang="en").report  # min_count 2 by default
    lines = out.vocab_lines()
    assert lines == ["[PAD]\t0", "[UNK]\t0", "[CLS]\t0", "[SEP]\t0", "[MASK]\t0", "apple\t3", "banana\t2"]
    assert report["vocab_size"] == 7 and out.meta()["vocab"]["size"] == 7

    run_pre([path], split=ALL_TRAIN, lang="en", min_count=1)
    assert [line.split("\t")[0] for line in out.vocab_lines()][5:] == ["apple", "banana", "cherry", "date"]

    report = run_pre([path], split=ALL_TRAIN, lang="en", min_count=1, max_vocab=6).report
    assert out.vocab_lines() == ["[PAD]\t0", "[UNK]\t0", "[CLS]\t0", "[SEP]\t0", "[MASK]\t0", "apple\t3"]
    assert report["vocab_size"] == 6


# -- report -------------------------------------------------------------------------
def test_report_contents(corpus_dir, helpers, run_pre, out):
    train = helpers.write_lines(corpus_dir / "train.txt", [
        "__label__pos good good phone", "__label__neg bad phone", "__label__pos good screen",
        "__label__pos good  screen", "__label__neg x"])
    dev = helpers.write_lines(corpus_dir / "dev.txt", ["__label__pos good camera"])
    test = helpers.write_lines(corpus_dir / "test.txt", ["__label__neg bad bad battery"])
    report = run_pre(train=train, dev=dev, test=test, lang="en", min_chars=2, min_count=1).report
    assert json.loads(json.dumps(report)) == out.report()  # the file holds what the call returned
    report = out.report()
    assert report["documents"] == {"read": 7, "kept": 5, "rejected": 0,
                                   "dropped": {"duplicate": 1, "shorter than --min-chars": 1}}
    assert report["duplicates"] == 1
    assert report["splits"] == {"train": 3, "dev": 1, "test": 1}
    assert report["tokens"] == {"train": 7, "dev": 2, "test": 3}
    assert report["types_train"] == 4
    assert report["vocab_size"] == 5 + 4
    assert report["oov_dev"] == {"token_rate": 0.5, "unk_rate": 0.5, "type_rate": 0.5}
    # chars: 15 9 11 | 11 | 15; tokens: 3 2 2 | 2 | 3
    assert report["lengths"]["chars"] == {"p50": 11, "p90": 15, "p95": 15, "p99": 15, "max": 15, "mean": 12.2}
    assert report["lengths"]["tokens"] == {"p50": 2, "p90": 3, "p95": 3, "p99": 3, "max": 3, "mean": 2.4}
    assert report["top_tokens"] == [["good", 3], ["phone", 2], ["bad", 1], ["screen", 1]]
    assert report["labels"] == {"train": {"neg": 1, "pos": 2}, "dev": {"pos": 1}, "test": {"neg": 1}}
    assert report["langs"] == {"en": 5}
    assert report["rejects"] == {"count": 0, "first": []}
    assert report["workers"] == 1


def test_cli_success_prints_summary(ws, helpers, run_cli, out):
    helpers.write_table(ws.root / "reviews.csv", ["review", "stars"],
                        [[f"review {i} of the product", "5" if i % 2 else "1"] for i in range(20)])
    result = run_cli(["preprocess", "reviews.csv", "--text-field", "review", "--label-field", "stars", "-j", "1"], ws.root)
    assert result.exit_code == 0, result.output
    assert "20 read, 20 kept, 0 rejected" in result.stdout
    assert result.stderr == ""  # no progress bar outside a terminal
    assert {p.name for p in out.dir.iterdir()} == {"train.parquet", "dev.parquet", "test.parquet", "vocab.txt",
                                                   "stopwords.txt", "report.json", "meta.json", "rejects.jsonl"}
    assert sum(out.report()["splits"].values()) == 20


# -- workers ------------------------------------------------------------------------
def _record_calls(monkeypatch, owner, name: str, log: Path, value=os.getpid) -> Path:
    """Wrap `owner.name` so that each call, in whichever process, appends `value()` to `log`."""
    original = getattr(owner, name)

    def recording(*args, **kwargs):
        with open(log, "a") as handle:
            handle.write(f"{value()}\n")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return log


def test_two_workers_give_the_same_output(corpus_dir, helpers, run_pre, out, monkeypatch):
    from bigmodel_cli.data.parallel import OrderedWorkers

    lines = [f"__label__{'pos' if i % 3 else 'neg'} {ZH[i % len(ZH)]}第{i}条" if i % 2 else
             f"__label__{'pos' if i % 3 else 'neg'} review {i}: works as described" for i in range(700)]
    path = helpers.write_lines(corpus_dir / "big.txt", lines)
    names = ["train.parquet", "dev.parquet", "test.parquet", "vocab.txt"]
    one = run_pre([path], workers=1).report
    expected = {n: (out.dir / n).read_bytes() for n in names}
    ships, ship_counts = [], OrderedWorkers.ship_counts
    monkeypatch.setattr(OrderedWorkers, "ship_counts", lambda self: ships.append(len(self.children)) or ship_counts(self))
    two = run_pre([path], workers=2).report
    assert ships == [1]  # the worker was asked once, near the end, for its counts so far
    assert two["workers"] == 2
    assert {n: (out.dir / n).read_bytes() for n in names} == expected
    assert {k: v for k, v in two.items() if k not in ("workers", "seconds", "throughput")} == \
        {k: v for k, v in one.items() if k not in ("workers", "seconds", "throughput")}
    assert two["documents"]["kept"] == 700


@pytest.mark.parametrize("first_batch_only", [False, True])
@pytest.mark.parametrize("name", ["mixed.jsonl.gz", "mixed.csv", "gbk.txt"])
def test_two_workers_match_one_with_bad_records_drops_and_duplicates(corpus_dir, helpers, run_pre, out, name,
                                                                     monkeypatch, tmp_path, first_batch_only):
    # The read-ahead helper's records (bad ones included) are taken as they are, and the
    # main process reads on from the line after its last whole batch: the output is one
    # worker's past bad lines, drops (too short), duplicates and decoding, whether the
    # helper got through the file or (first_batch_only) stopped after one batch.
    from bigmodel_cli.data import preprocess, read_ahead

    if first_batch_only:
        monkeypatch.setattr(read_ahead, "MAX_SPOOL_BYTES", 1)

    texts = [f"{ZH[i % 600 % len(ZH)]}第{i % 600}条 <i>斜体</i>" if i % 11 else "短" for i in range(1200)]
    labels = ["pos" if i % 3 else "neg" for i in range(1200)]
    if name.endswith(".jsonl.gz"):
        lines = [json.dumps({"text": t, "label": lab}, ensure_ascii=False) for t, lab in zip(texts, labels)]
        for at in (5, 300, 301, 777):
            lines[at] = "{not json" if at % 2 else json.dumps({"body": "no text field"})
        path = helpers.write_lines(corpus_dir / name, lines)
    elif name.endswith(".csv"):
        path = helpers.write_table(corpus_dir / name, ["text", "label"], [[t, lab] for t, lab in zip(texts, labels)])
    else:
        path = helpers.write_lines(corpus_dir / name, [f"__label__{lab} {t}" for t, lab in zip(texts, labels)], encoding="gbk")
    options = {"min_chars": 2, "text_field": "text", "label_field": "label"} if not name.endswith(".txt") else {"min_chars": 2}
    names = ["train.parquet", "dev.parquet", "test.parquet", "vocab.txt", "rejects.jsonl"]
    one = run_pre([path], lang="zh", workers=1, **options).report
    expected = {n: (out.dir / n).read_bytes() for n in names}
    calls = _record_calls(monkeypatch, preprocess.DocProcessor, "clean_doc", tmp_path / "calls.txt")
    two = run_pre([path], lang="zh", workers=2, **options).report
    assert {n: (out.dir / n).read_bytes() for n in names} == expected
    cleaned_here = calls.read_text().split().count(str(os.getpid()))
    if first_batch_only:
        assert len(texts) - read_ahead.BATCH_DOCS - 4 <= cleaned_here <= len(texts) - read_ahead.BATCH_DOCS
    else:
        assert cleaned_here < len(texts) // 2  # the helper's records were used past the bad ones
    same = {k: v for k, v in one.items() if k not in ("workers", "seconds", "throughput")}
    assert {k: v for k, v in two.items() if k not in ("workers", "seconds", "throughput")} == same
    assert one["duplicates"] > 0 and one["documents"]["dropped"].get("shorter than --min-chars", 0) > 0
    assert one["documents"]["rejected"] == (4 if name.endswith(".jsonl.gz") else 0)


def test_workers_share_the_dictionary_the_main_process_loaded(corpus_dir, helpers, run_pre, out, monkeypatch, tmp_path):
    # Loaded once before the workers fork, the dictionary's pages are shared, not copied
    # into every worker (about 90 MB each), and no worker spends time loading its own.
    from bigmodel_cli.data import segment

    loads = _record_calls(monkeypatch, segment.jieba_cache, "initialize", tmp_path / "loads.txt")
    path = helpers.write_lines(corpus_dir / "zh.txt", [f"{ZH[i % len(ZH)]}第{i}条" for i in range(1500)])
    report = run_pre([path], lang="zh", workers=3).report
    assert report["workers"] == 3 and report["documents"]["kept"] == 1500
    assert loads.read_text().split() == [str(os.getpid())]


def test_a_helper_cleans_the_first_documents_while_the_dictionary_loads(corpus_dir, helpers, run_pre, out, monkeypatch,
                                                                       tmp_path):
    # Each document is cleaned once: by the helper (in its own process, during the load)
    # or by the main process, never by both; and the output is the one-worker output.
    from bigmodel_cli.data import preprocess

    path = helpers.write_lines(corpus_dir / "zh.txt", [f"{ZH[i % len(ZH)]}第{i}条 <b>粗体</b>" for i in range(1500)])
    run_pre([path], lang="zh", workers=1)
    expected = {n: (out.dir / n).read_bytes() for n in ("train.parquet", "dev.parquet", "test.parquet", "vocab.txt")}
    calls = _record_calls(monkeypatch, preprocess.DocProcessor, "clean_doc", tmp_path / "calls.txt")
    report = run_pre([path], lang="zh", workers=2).report
    assert report["documents"]["kept"] == 1500
    assert {n: (out.dir / n).read_bytes() for n in expected} == expected
    by_process = Counter(calls.read_text().split())
    here = by_process.pop(str(os.getpid()), 0)
    assert len(by_process) == 1  # one helper
    ahead = sum(by_process.values())
    assert ahead + here == 1500 and ahead >= 256  # at least a batch in the time the dictionary took


def test_a_failed_dictionary_load_stops_the_helper_and_keeps_no_output(corpus_dir, helpers, run_pre, out, monkeypatch):
    from bigmodel_cli.data import preprocess
    from bigmodel_cli.errors import UserError

    def broken(self):
        raise UserError("terms.txt line 3: not 'word [count] [tag]'")

    monkeypatch.setattr(preprocess.DocProcessor, "load", broken)
    # enough documents that the helper is still cleaning when the load fails
    path = helpers.write_lines(corpus_dir / "zh.txt", [f"{ZH[i % len(ZH)]}第{i}条" for i in range(30_000)])
    with pytest.raises(UserError, match="terms.txt line 3"):
        run_pre([path], lang="zh", workers=2)
    assert mp.active_children() == []  # the helper was stopped, not left to run
    assert not out.dir.exists() or not any(out.dir.iterdir())


def test_progress_bar_on_a_terminal_shows_documents_and_rate(ws, corpus_dir, helpers):
    import io

    from rich.console import Console

    from bigmodel_cli.data.preprocess import preprocess
    from bigmodel_cli.workspace.config import PreprocessConfig

    path = helpers.write_lines(corpus_dir / "zh.txt", [f"{ZH[i % len(ZH)]}第{i}条" for i in range(300)])
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160)
    preprocess(ws, [path], config=PreprocessConfig(workers=1), lang="zh", force=True, show_progress=True, console=console)
    shown = screen.getvalue()
    assert "preprocess" in shown and "300 docs" in shown and "docs/s" in shown


def test_without_a_bar_rich_is_not_imported(ws, corpus_dir, helpers):
    # A library call without a bar skips rich's import (30 ms, most of a small run's setup).
    import subprocess
    import sys

    path = helpers.write_lines(corpus_dir / "zh.txt", [f"{ZH[i % len(ZH)]}第{i}条" for i in range(50)])
    code = ("import sys; from pathlib import Path; from bigmodel_cli.workspace.config import PreprocessConfig; "
            "from bigmodel_cli.data.preprocess import preprocess; from bigmodel_cli.workspace.layout import Workspace; "
            f"ws = Workspace.find(Path({str(ws.root)!r})); "
            f"preprocess(ws, [Path({str(path)!r})], config=PreprocessConfig(workers=1), lang='zh', force=True); "
            "print('rich.progress' in sys.modules, 'rich' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_top_counts_breaks_ties_by_token_whatever_the_counting_order():
    from collections import Counter

    from bigmodel_cli.data.preprocess import top_counts

    words = ["b", "a", "c", "a", "b", "d", "e", "e"]
    one, other = Counter(words), Counter(reversed(words))
    assert top_counts(one, 3) == top_counts(other, 3) == [("a", 2), ("b", 2), ("e", 2)]
    assert top_counts(one, 10) == [("a", 2), ("b", 2), ("e", 2), ("c", 1), ("d", 1)]
    assert one.most_common(3) != other.most_common(3)  # the order most_common would have given depends on it


