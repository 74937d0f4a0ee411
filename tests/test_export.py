"""`bigmodel export`: Hugging Face folders that transformers loads with the same logits and
the same token ids, and ONNX checked with onnxruntime."""

from __future__ import annotations

import json

import pytest
import torch

from bigmodel_cli.data.vocab import SPECIAL_TOKENS
from bigmodel_cli.model.transformer import ModelConfig, Transformer

WORDS = list(SPECIAL_TOKENS) + ["房间", "很", "干净", "服务", "好", "the", "room", ","]
KINDS = {
    "mlm": (dict(), "BertForMaskedLM"),
    "clm": (dict(causal=True), "BertLMHeadModel"),
    "clf": (dict(num_labels=3, labels=["neg", "neu", "pos"], lm_head=False), "BertForSequenceClassification"),
}


def model_of(kind: str) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=len(WORDS), layers=2, dim=16, heads=2, ffn=32, max_positions=20,
                                    dropout=0.0, attention_dropout=0.0, **KINDS[kind][0]))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def ours(model: Transformer, ids, mask):
    hidden, _ = model.encode(ids, attention_mask=mask, causal=model.cfg.causal)
    return model.classify(hidden, mask) if model.cfg.num_labels else model.lm_logits(hidden)


@pytest.mark.parametrize("kind", list(KINDS))
def test_hf_export_loads_with_identical_logits(ws, save_run, run_cli, kind):
    transformers = pytest.importorskip("transformers")
    model = model_of(kind)
    save_run(ws, kind, model, WORDS)
    result = run_cli(["export", kind, "--format", "hf"], ws.root)
    assert result.exit_code == 0, result.output
    out = ws.root / "exports" / f"{kind}-hf"
    arch = KINDS[kind][1]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [arch] and arch in result.output
    hf = getattr(transformers, arch).from_pretrained(out).eval()
    from safetensors.torch import load_file

    stored = load_file(out / "model.safetensors")
    assert "cls.predictions.decoder.weight" not in stored  # tied: stored once
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 3], [2, 10, 11, 12, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits
        mine = ours(model, ids, mask.bool())
    if kind == "clf":
        assert torch.allclose(theirs, mine, atol=1e-4)
        assert hf.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    else:
        real = mask.bool()
        assert torch.allclose(theirs[real], mine[real], atol=1e-4)
    # the exported tokenizer maps pre-segmented words to our ids exactly
    tokenizer = transformers.BertTokenizer.from_pretrained(out)
    assert tokenizer("房间 很 干净 , the room unseen")["input_ids"] == [2, 5, 6, 7, 12, 10, 11, 1, 3]
    assert "jieba" in (out / "README.md").read_text(encoding="utf-8")


def test_mean_pooling_classifier_cannot_be_a_hf_classifier(ws, save_run, run_cli):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=len(WORDS), layers=1, dim=16, heads=2, ffn=32, max_positions=20,
                                    num_labels=2, pooling="mean", lm_head=False))
    save_run(ws, "mean", model, WORDS)
    result = run_cli(["export", "mean"], ws.root)
    assert result.exit_code == 2 and "pools by mean" in result.output and "--pooling cls" in result.output


def test_unknown_run_and_format(ws, save_run, run_cli):
    save_run(ws, "mlm", model_of("mlm"), WORDS)
    bad = run_cli(["export", "nope"], ws.root)
    assert bad.exit_code == 2 and "no run named 'nope'" in bad.output and "mlm" in bad.output
    fmt = run_cli(["export", "mlm", "--format", "tflite"], ws.root)
    assert fmt.exit_code == 2 and "--format must be one of hf, onnx" in fmt.output


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlm", "clf"])
def test_onnx_export_is_verified_with_onnxruntime(ws, save_run, run_cli, kind):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = model_of(kind)
    save_run(ws, kind, model, WORDS)
    result = run_cli(["export", kind, "--format", "onnx"], ws.root)
    assert result.exit_code == 0, result.output
    assert "verified with onnxruntime" in result.output
    session = ort.InferenceSession(str(ws.root / "exports" / f"{kind}-onnx" / "model.onnx"))
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 10, 11, 3]])
    mask = torch.ones_like(ids)
    got = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        assert abs(got - ours(model, ids, mask.bool()).numpy()).max() < 1e-4


def test_exported_tokenizer_splits_unknown_words_into_our_pieces(ws, save_run, run_cli):
    """With character pieces in the vocabulary, Hugging Face's tokenizer splits an unknown word
    exactly as bigmodel does, so the ids match beyond the word vocabulary too."""
    transformers = pytest.importorskip("transformers")
    from bigmodel_cli.data.tokenizer import TextPipeline

    words = WORDS + ["房", "干", "坑", "##间", "##净", "##爹", "t", "##h", "##e"]
    model = Transformer(ModelConfig(vocab_size=len(words), layers=1, dim=16, heads=2, ffn=32, max_positions=20))
    folder = save_run(ws, "mlm", model, words)
    assert run_cli(["export", "mlm", "--format", "hf"], ws.root).exit_code == 0
    tokenizer = transformers.BertTokenizer.from_pretrained(ws.root / "exports" / "mlm-hf")
    segmented = ["房间", "坑爹", "干净间", "teh", "unseen", "房坑"]
    ours = TextPipeline(folder).encode(segmented)
    assert tokenizer(" ".join(segmented))["input_ids"] == ours
    assert [words[i] for i in ours] == ["[CLS]", "房间", "坑", "##爹", "干净", "##间", "t", "##e", "##h",
                                         "[UNK]", "[UNK]", "[SEP]"]
