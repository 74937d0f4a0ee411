"""The flat-array dictionary cache must give jieba's own dictionary, and fail safe."""

import logging
from pathlib import Path

import jieba
import pytest

from bigmodel_cli import jieba_cache

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
