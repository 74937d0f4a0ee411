"""The helper that cleans the first documents while the dictionaries load."""

from __future__ import annotations

import os
import threading

import pytest

import bigmodel_cli.clean_ahead as clean_ahead
from bigmodel_cli.clean_ahead import BATCH_DOCS, CleanAhead, _helper

TEXTS = [f"Text {i} ＡＢＣ" for i in range(3 * BATCH_DOCS + 17)]


def clean_marked(text: str) -> tuple[str, int]:
    """A stand-in for DocProcessor.clean_doc that says which process ran it."""
    return text.lower(), os.getpid()


def no_fork(monkeypatch) -> None:
    monkeypatch.setattr(clean_ahead.mp, "get_all_start_methods", lambda: ["spawn"])


def spool_with(path, texts, clean, stop_after_first_batch: bool) -> None:
    stop = threading.Event()
    if stop_after_first_batch:
        stop.set()
    _helper(lambda: iter(texts), clean, str(path), stop)


@pytest.mark.skipif("fork" not in clean_ahead.mp.get_all_start_methods(), reason="the helper needs fork")
def test_the_helper_cleans_in_order_in_its_own_process(tmp_path):
    ahead = CleanAhead(lambda: iter(TEXTS), clean_marked, tmp_path / "spool")
    ahead._process.join(timeout=60)  # let it reach the end of the input (it stops there by itself)
    ahead.stop()
    results = [ahead(text) for text in TEXTS]
    ahead.close()
    assert [clean for clean, _ in results] == [t.lower() for t in TEXTS]
    helper_pids = {pid for _, pid in results}
    assert os.getpid() not in helper_pids and len(helper_pids) == 1


def test_stopped_early_it_gives_its_whole_batches_and_the_rest_is_cleaned_here(tmp_path, monkeypatch):
    no_fork(monkeypatch)
    spool_with(tmp_path / "spool", TEXTS, lambda t: (t.lower(), "ahead"), stop_after_first_batch=True)
    ahead = CleanAhead(lambda: iter(TEXTS), lambda t: (t.lower(), "here"), tmp_path / "spool")
    ahead.stop()
    results = [ahead(text) for text in TEXTS]
    assert [clean for clean, _ in results] == [t.lower() for t in TEXTS]
    assert [where for _, where in results] == ["ahead"] * BATCH_DOCS + ["here"] * (len(TEXTS) - BATCH_DOCS)


def test_a_batch_cut_short_is_not_used(tmp_path, monkeypatch):
    no_fork(monkeypatch)
    spool = tmp_path / "spool"
    spool_with(spool, TEXTS, lambda t: (t.lower(), "ahead"), stop_after_first_batch=False)
    whole = spool.read_bytes()
    spool.write_bytes(whole[: len(whole) * 2 // 3])  # as if the helper was killed mid-write
    ahead = CleanAhead(lambda: iter(TEXTS), lambda t: (t.lower(), "here"), spool)
    ahead.stop()
    results = [ahead(text) for text in TEXTS]
    where = [w for _, w in results]
    assert [clean for clean, _ in results] == [t.lower() for t in TEXTS]
    assert where[0] == "ahead" and where[-1] == "here"
    assert where == sorted(where)  # every "ahead" before every "here": a prefix was used, no more
    assert where.count("ahead") % BATCH_DOCS == 0


def test_a_text_read_differently_makes_it_clean_everything_here_from_there(tmp_path, monkeypatch):
    no_fork(monkeypatch)
    spooled = TEXTS[:]
    spooled[10] = "something else"
    spool_with(tmp_path / "spool", spooled, lambda t: (t.lower(), "ahead"), stop_after_first_batch=False)
    ahead = CleanAhead(lambda: iter(TEXTS), lambda t: (t.lower(), "here"), tmp_path / "spool")
    ahead.stop()
    results = [ahead(text) for text in TEXTS]
    assert [clean for clean, _ in results] == [t.lower() for t in TEXTS]
    assert [where for _, where in results] == ["ahead"] * 10 + ["here"] * (len(TEXTS) - 10)


def test_an_error_in_the_helper_leaves_what_it_finished(tmp_path, monkeypatch):
    no_fork(monkeypatch)

    def texts():
        yield from TEXTS[: BATCH_DOCS + 5]
        raise ValueError("a bad record")

    _helper(texts, lambda t: (t.lower(), "ahead"), str(tmp_path / "spool"), threading.Event())
    ahead = CleanAhead(lambda: iter(TEXTS), lambda t: (t.lower(), "here"), tmp_path / "spool")
    ahead.stop()
    where = [ahead(text)[1] for text in TEXTS]
    assert where == ["ahead"] * BATCH_DOCS + ["here"] * (len(TEXTS) - BATCH_DOCS)


def test_without_a_helper_everything_is_cleaned_here(tmp_path, monkeypatch):
    no_fork(monkeypatch)
    ahead = CleanAhead(lambda: iter(TEXTS), lambda t: (t.lower(), "here"), tmp_path / "spool")
    ahead.stop()
    assert {ahead(text)[1] for text in TEXTS} == {"here"}
    assert not (tmp_path / "spool").exists()
