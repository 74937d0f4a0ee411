"""The flat-array dictionary cache must give jieba's own dictionary, and fail safe."""

import logging
from pathlib import Path

import jieba
import pytest

from bigmodel_cli.data import jieba_cache

jieba.setLogLevel(logging.WARNING)
DICT = Path(jieba.get_dict_file().name)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_round_trip_gives_the_same_dictionary(cache):
    reference = jieba.Tokenizer()
    reference.initialize()

    first = jieba.Tokenizer()
    jieba_cache.initialize(first, "jieba", DICT)  # builds the cache
    files = list(cache.glob("jieba-prefix-*.bin"))
    assert len(files) == 1

    second = jieba.Tokenizer()
    jieba_cache.initialize(second, "jieba", DICT)  # reads it
    assert second.initialized
    assert second.total == reference.total
    assert second.FREQ == reference.FREQ
    text = "我在该宾馆入住了大约有20几次了吧，床垫实在是太太太硬了。"
    assert second.lcut(text) == reference.lcut(text)


def test_corrupt_cache_falls_back_to_the_library(cache):
    jieba_cache.initialize(jieba.Tokenizer(), "jieba", DICT)
    (path,) = cache.glob("jieba-prefix-*.bin")
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    tokenizer = jieba.Tokenizer()
    jieba_cache.initialize(tokenizer, "jieba", DICT)
    assert tokenizer.initialized and len(tokenizer.FREQ) > 300_000
    # and the damaged file is rebuilt, so the next start is fast again
    again = jieba.Tokenizer()
    jieba_cache.initialize(again, "jieba", DICT)
    assert again.FREQ == tokenizer.FREQ and path.stat().st_size > 1000


def test_unwritable_cache_folder_still_initialises(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BIGMODEL_CACHE", str(blocker / "cache"))
    tokenizer = jieba.Tokenizer()
    jieba_cache.initialize(tokenizer, "jieba", DICT)
    assert tokenizer.initialized and tokenizer.lcut("我爱北京天安门") == ["我", "爱", "北京", "天安门"]


def test_words_only_read_gives_the_words_and_their_counts(cache):
    full = jieba.Tokenizer()
    jieba_cache.initialize(full, "jieba", DICT)  # builds the cache
    words = jieba.Tokenizer()
    jieba_cache.initialize(words, "jieba", DICT, words_only=True)
    assert words.FREQ == {w: n for w, n in full.FREQ.items() if n}
    assert 300_000 < len(words.FREQ) < len(full.FREQ) and words.total == full.total
    # and the first start, which builds the cache, gives the words alone too
    cache_files = list(cache.glob("*.bin"))
    for path in cache_files:
        path.unlink()
    first = jieba.Tokenizer()
    jieba_cache.initialize(first, "jieba", DICT, words_only=True)
    assert first.FREQ == words.FREQ


def test_cache_of_another_format_is_not_read(cache):
    jieba_cache.initialize(jieba.Tokenizer(), "jieba", DICT)
    (path,) = cache.glob("jieba-prefix-*.bin")
    header, rest = path.read_bytes().split(b"\n", 1)
    path.write_bytes(header.replace(b'"format": 2', b'"format": 1') + b"\n" + rest)
    assert jieba_cache._read(path, False) is None
