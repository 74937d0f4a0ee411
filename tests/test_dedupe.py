"""The compact de-duplication index, alone and inside preprocess across its flushes."""

from __future__ import annotations

import random

import pytest

import bigmodel_cli.data.preprocess as preprocess_module
import bigmodel_cli.data.dedupe as dedupe_module
from bigmodel_cli.data.dedupe import SeenIndex, kept_sources


def test_pack_round_trip():
    for doc_id, label_id, split in [(0, 0, None), (1, 5, "train"), (10**9, (1 << 24) - 1, "test"), (123456, 2, "dev")]:
        assert SeenIndex.unpack(SeenIndex.pack(doc_id, label_id, split)) == (doc_id, label_id, split)
    assert SeenIndex.pack(2**36, 2**24 - 1, None) < 2**63  # fits the int64 arrays


@pytest.mark.parametrize("segment", [1 << 20, 200])
def test_index_finds_every_key_across_flushes(segment):
    rng = random.Random(0)
    keys = list({rng.getrandbits(64) - 2**63 for _ in range(5000)})
    assert len(keys) == 5000
    index = SeenIndex(flush_at=300, segment=segment)
    for start in range(0, len(keys), 256):  # batches, as preprocess adds them
        batch = keys[start:start + 256]
        assert index.find_flushed(batch) == [None] * len(batch)  # none seen yet
        for i, key in enumerate(batch, start):
            index.add(key, SeenIndex.pack(i, i % 7, "train"))
        index.flush_if_full()
    assert len(index) == 5000 and len(index.recent) < 300
    found = index.find_flushed(keys)
    for i, (key, value) in enumerate(zip(keys, found)):
        value = value if value is not None else index.recent[key]
        assert SeenIndex.unpack(value) == (i, i % 7, "train")
    absent = [k + 1 for k in keys[:50] if k + 1 not in set(keys)] + [-2**63, 2**63 - 1]
    assert index.find_flushed(absent) == [None] * len(absent)
    sizes = [len(k) for k, _ in index._segments]
    if segment == 200:  # split into segments of bounded size, each a sorted range above the last
        assert len(sizes) > 10 and max(sizes) <= 2 * segment
        assert all(a[-1] < b[0] for (a, _), (b, _) in zip(index._segments, index._segments[1:]))
    else:
        assert len(sizes) == 1


def test_kept_sources_reads_back_only_the_wanted_ids(tmp_path, helpers):
    train = helpers.write_split(tmp_path, "train", [{"id": 3, "text": "a", "tokens": ["a"], "source": "x.txt:4"},
                                                    {"id": 12, "text": "b, c", "tokens": ["b"], "source": "x.txt:13"}])
    dev = helpers.write_split(tmp_path, "dev", [{"id": 20, "text": "d", "tokens": ["d"], "source": "y.txt:1"}])
    assert kept_sources([train, dev], {12, 20}) == {12: "x.txt:13", 20: "y.txt:1"}
    legacy = tmp_path / "test.jsonl"  # a split an older version wrote
    legacy.write_text('{"id": 3, "text": "a", "source": "x.txt:4"}\n{"id": 12, "text": "b, c", "source": "x.txt:13"}\n',
                      encoding="utf-8")
    assert kept_sources([legacy], {12}) == {12: "x.txt:13"}


@pytest.mark.parametrize("given_splits", [False, True])
def test_preprocess_results_do_not_depend_on_the_flush(corpus_dir, helpers, run_pre, out, monkeypatch, given_splits):
    # 1,200 documents, a third of them copies (some with another label) of documents far
    # earlier, so that first and copy sit on both sides of many flushes.
    rng = random.Random(1)
    lines = []
    for i in range(1200):
        if i > 100 and i % 3 == 0:
            j = rng.randrange(0, i - 50)
            label = "neg" if rng.random() < 0.2 else ("pos" if j % 2 else "neg")
            lines.append(f"__label__{label} document {j} says item{j} works")
        else:
            lines.append(f"__label__{'pos' if i % 2 else 'neg'} document {i} says item{i} works")
    if given_splits:
        train = helpers.write_lines(corpus_dir / "train.txt", lines[:1000])
        dev = helpers.write_lines(corpus_dir / "dev.txt", lines[1000:] + lines[5:15])  # 10 overlap train
        run = lambda: run_pre(train=train, dev=dev, lang="en")  # noqa: E731
    else:
        path = helpers.write_lines(corpus_dir / "docs.txt", lines)
        run = lambda: run_pre([path], lang="en")  # noqa: E731
    names = ["train.parquet", "dev.parquet", "test.parquet", "vocab.txt"]
    unflushed = run().report
    expected = {n: (out.dir / n).read_bytes() for n in names}
    monkeypatch.setattr(preprocess_module, "DEDUPE_FLUSH", 64)
    monkeypatch.setattr(dedupe_module, "SEGMENT", 50)  # many segments too
    flushed = run().report
    assert {n: (out.dir / n).read_bytes() for n in names} == expected
    drop = ("seconds", "throughput")
    assert {k: v for k, v in flushed.items() if k not in drop} == {k: v for k, v in unflushed.items() if k not in drop}
    assert flushed["duplicates"] > 200 and flushed["label_conflicts"]["count"] > 15
    for example in flushed["label_conflicts"]["examples"]:  # the kept copy's source, read back from the output
        assert example["kept"].split(":")[0].endswith(".txt") and example["kept_label"] != example["dropped_label"]
    if given_splits:
        assert flushed["overlap_with_train"]["dev"] >= 10  # the 10 repeated, and copies among the last 200

