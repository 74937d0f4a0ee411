"""The TF-IDF + LR baseline is as strong as a careful user would make it: char_wb n-grams for
space-separated languages (scikit-learn's analyzer, kept in the plain-data save format), a C
grid that reaches 100, and a cache key that retrains an older cache."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from bigmodel_cli.evaluation import baseline as bl
from bigmodel_cli.workspace.config import EvaluateConfig

FILLER = "the a of and to in is was it for on with as by at from this that be".split()


def english(text: str) -> bl.Doc:
    return bl.Doc(text.split(), text, "en")


@pytest.mark.parametrize("text", ["The  Quick brown-fox a I xy", "hello\tworld\n, ok", "Straße ÉCOLE", ""])
def test_char_wb_ngrams_equal_scikit_learns_analyzer(text):
    analyzer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5)).build_analyzer()
    assert bl.char_wb_ngrams(text, 2, 5) == analyzer(text)


def test_a_word_seen_only_inside_longer_words_still_gets_features(tmp_path):
    texts = ["unhappiness is bad", "the unhappiness stays", "a great joy", "joy is great", "great fun today", "sad unhappiness"]
    labels = ["neg", "neg", "pos", "pos", "pos", "neg"]
    baseline = bl.train([english(t) for t in texts], labels, [], [], EvaluateConfig())
    assert baseline.char_wb == 5 and baseline.info["features"]["chars"] > 0
    assert " unh" in baseline.chars and "happi" in baseline.chars and "ness " in baseline.chars
    x = baseline.features([english("happy")]).toarray()[0]
    words, chars = x[:len(baseline.words)], x[len(baseline.words):]
    assert not words.any() and chars.any()  # "happy" is no word of training, but "hap", "happ", "app" are
    assert baseline.predict_proba([english("happy")])[0, baseline.classes.index("neg")] > 0.5
    baseline.save(tmp_path, "k")  # saved and loaded as plain data, with its char_wb setting
    again = bl.Baseline.load(tmp_path)
    assert again.char_wb == 5 and np.allclose(again.predict_proba([english("happy"), english("joy")]),
                                              baseline.predict_proba([english("happy"), english("joy")]))


def test_chinese_keeps_plain_character_ngrams_and_other_languages_get_char_wb():
    zh = bl.Doc(["好", "吃"], "好吃", "zh")
    assert bl.char_terms(zh, 2, 5) == ["好", "吃", "好吃"]
    assert bl.char_terms(english("Go"), 2, 5) == [" g", "go", "o ", " go", "go ", " go "]
    assert bl.char_terms(english("Go"), 2, 0) == []


def test_c_of_100_is_chosen_when_it_is_best_on_dev(monkeypatch):
    import sklearn.linear_model

    class OnlyHundredLearns(sklearn.linear_model.LogisticRegression):
        """Dev predictions are right only at C = 100 (every other C predicts one class)."""

        def predict(self, x):
            predicted = super().predict(x)
            return predicted if self.C == 100 else np.zeros_like(predicted)

    monkeypatch.setattr(sklearn.linear_model, "LogisticRegression", OnlyHundredLearns)
    texts = ["good great fine", "great good day", "fine good stuff", "bad awful poor", "poor bad day", "awful bad stuff"]
    docs, labels = [english(t) for t in texts], ["pos"] * 3 + ["neg"] * 3
    baseline = bl.train(docs, labels, docs, labels, EvaluateConfig())
    scores = baseline.info["dev_macro_f1_by_C"]
    assert list(scores) == ["0.3", "1.0", "3.0", "10.0", "30.0", "100.0"]  # the default grid reaches 100
    assert baseline.info["C"] == 100.0 and scores["100.0"] == 1.0 > max(v for c, v in scores.items() if c != "100.0")
    assert baseline.predict_proba(docs).argmax(1).tolist() == [baseline.classes.index(y) for y in labels]


def test_cache_key_changes_with_the_features(make_ws, monkeypatch):
    ws = make_ws("en")
    data = ws.processed
    cfg = EvaluateConfig()
    key = bl.cache_key(ws, cfg, data)
    # the key an older bigmodel wrote (no version, no char_wb) never matches
    old = hashlib.sha256(json.dumps([[], [cfg.baseline_c, cfg.baseline_char_ngrams, cfg.baseline_stopwords]]).encode()).hexdigest()
    assert key != old
    assert bl.cache_key(ws, EvaluateConfig(baseline_char_wb=0), data) != key
    monkeypatch.setattr(bl, "CACHE_VERSION", bl.CACHE_VERSION + 1)
    assert bl.cache_key(ws, cfg, data) != key
