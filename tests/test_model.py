"""The one model: attention paths agree, the fast MLM loss is the plain one, and every
weight lands on Hugging Face's BERT classes with identical outputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bigmodel_cli.model.transformer import (
    HF_NAMES,
    IGNORE,
    ModelConfig,
    Transformer,
    dropout,
    hf_name,
    training_flops,
)


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{"vocab_size": 60, "layers": 2, "dim": 32, "heads": 4, "ffn": 64, "max_positions": 24,
                         "dropout": 0.0, "attention_dropout": 0.0, **kw})
    model = Transformer(cfg).eval()
    with torch.no_grad():  # move LayerNorms and biases off 1 and 0 so that mix-ups show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def batch(pad_from: int | None = 9):
    torch.manual_seed(1)
    ids = torch.randint(5, 60, (3, 12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    if pad_from is not None:
        ids[1, pad_from:] = 0
        mask[1, pad_from:] = False
    return ids, mask


@pytest.mark.parametrize("causal", [False, True])
def test_explicit_attention_equals_sdpa(causal):
    model = tiny()
    ids, mask = batch()
    fast, none = model.encode(ids, attention_mask=mask, causal=causal)
    slow, weights = model.encode(ids, attention_mask=mask, causal=causal, need_weights=True)
    assert none is None and len(weights) == 2 and weights[0].shape == (3, 4, 12, 12)
    real = mask[:, :, None].expand_as(fast)
    assert torch.allclose(fast[real], slow[real], atol=1e-5)
    assert torch.allclose(weights[0].sum(-1), torch.ones(3, 4, 12), atol=1e-5)
    assert float(weights[0][1, :, :, 9:].detach().abs().max()) == 0.0  # padding gets no attention
    if causal:
        assert float(torch.triu(weights[1][0].detach(), diagonal=1).abs().max()) == 0.0


def test_attention_is_softmax_of_scaled_scores():
    model = tiny(layers=1)
    ids, _ = batch(None)
    _, weights = model.encode(ids, need_weights=True)
    attn = model.blocks[0].attn
    x = model.embeddings(ids)
    q = attn.query(x).view(3, 12, 4, 8).transpose(1, 2)
    k = attn.key(x).view(3, 12, 4, 8).transpose(1, 2)
    expected = (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1)
    assert torch.allclose(weights[0], expected, atol=1e-6)


def test_mlm_loss_at_masked_positions_equals_full_logits_loss():
    model = tiny()
    ids, _ = batch(None)
    labels = torch.full_like(ids, IGNORE)
    labels[0, 3], labels[1, 5], labels[2, 0] = 7, 8, 9
    hidden, _ = model.encode(ids)
    loss, n, correct = model.mlm_loss(hidden, labels)
    full = F.cross_entropy(model.lm_logits(hidden).flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    assert int(n) == 3 and torch.allclose(loss, full, atol=1e-5)
    # two positions labelled with the full logits' argmax, one with another token: 2 correct
    guess = model.lm_logits(hidden).argmax(-1)
    labels[0, 3], labels[1, 5], labels[2, 0] = guess[0, 3], guess[1, 5], (guess[2, 0] + 1) % 60
    assert int(model.mlm_loss(hidden, labels)[2]) == 2


def test_clm_loss_is_next_token_loss_skipping_padding():
    model = tiny()
    ids, _ = batch(9)
    hidden, _ = model.encode(ids, causal=True)
    loss, n, _ = model.clm_loss(hidden, ids)
    logits = model.lm_logits(hidden)[:, :-1]
    target = ids[:, 1:].clone()
    target[target == 0] = IGNORE
    expected = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE, reduction="sum")
    assert int(n) == 3 * 11 - 3 and torch.allclose(loss, expected, atol=1e-4)


def test_fused_head_cross_entropy_equals_unfused_loss_hits_and_gradients():
    model = tiny()
    head, embedding = model.lm_head, model.embeddings.tokens.weight
    torch.manual_seed(2)
    h = torch.randn(40, 32, requires_grad=True)
    target = torch.randint(0, 60, (40,))
    target[:5] = F.linear(head.transform(h), embedding, head.bias)[:5].argmax(-1).detach()  # some hits
    loss, correct = head.loss(h, embedding, target)
    (0.3 * loss).backward()
    fused = [t.grad.clone() for t in (h, embedding, head.bias)]
    for t in (h, embedding, head.bias):
        t.grad = None
    logits = F.linear(head.transform(h), embedding, head.bias)
    expected = F.cross_entropy(logits, target, reduction="sum")
    (0.3 * expected).backward()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert int(correct) == int((logits.argmax(-1) == target).sum()) >= 5
    for got, t in zip(fused, (h, embedding, head.bias)):
        assert torch.allclose(got, t.grad, atol=1e-5), float((got - t.grad).abs().max())


def test_cpu_dropout_drops_p_scales_the_rest_and_is_seeded():
    x = torch.full((1000, 1001), 2.0, requires_grad=True)  # numel not a multiple of 4
    torch.manual_seed(5)
    y = dropout(x, 0.25, training=True)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.25) < 0.003
    assert torch.allclose(y[y != 0], torch.tensor(2.0 / 0.75))
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, (y.detach() != 0).float() / 0.75)  # gradient flows only where kept
    torch.manual_seed(5)
    assert torch.equal(dropout(x, 0.25, training=True), y)
    assert dropout(x, 0.25, training=False) is x and dropout(x, 0.0, training=True) is x
    # every 16-bit lane of the random words counts: no position is always kept or dropped
    hits = sum((dropout(torch.ones(8), 0.5, True) == 0).float() for _ in range(400))
    assert 140 < float(hits.min()) and float(hits.max()) < 260


def test_training_attention_is_softmax_then_dropout_then_values():
    model = tiny(layers=1, attention_dropout=0.3).train()
    attn = model.blocks[0].attn
    x = torch.randn(3, 12, 32)
    torch.manual_seed(7)
    got, _ = attn(x, None, False, False)
    torch.manual_seed(7)
    keep = dropout(torch.ones(3, 4, 12, 12), 0.3, training=True)  # the same draw, in the same order
    q, k, v = (proj(x).view(3, 12, 4, 8).transpose(1, 2) for proj in (attn.query, attn.key, attn.value))
    y = ((q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1) * keep) @ v
    assert torch.allclose(got, attn.out(y.transpose(1, 2).reshape(3, 12, 32)), atol=1e-5)
    assert float((keep == 0).float().mean()) > 0.1  # dropout really happened


def test_causal_prefix_does_not_see_the_future():
    model = tiny()
    ids, _ = batch(None)
    changed = ids.clone()
    changed[:, 8:] = 5
    a, _ = model.encode(ids, causal=True)
    b, _ = model.encode(changed, causal=True)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6) and not torch.allclose(a[:, 8:], b[:, 8:])


def test_sequence_beyond_position_table_is_refused():
    model = tiny()
    with pytest.raises(ValueError, match="position table"):
        model.encode(torch.ones(1, 25, dtype=torch.long))


def test_weight_decay_only_on_matrices():
    model = tiny(num_labels=2)
    decay, other = model.optimizer_groups(0.01)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in other["params"])
    assert other["weight_decay"] == 0.0
    assert len(decay["params"]) + len(other["params"]) == len(list(model.parameters()))


def test_only_used_heads_exist():
    assert not hasattr(tiny(), "pooler") and hasattr(tiny(), "lm_head")
    clf = tiny(num_labels=3, lm_head=False)
    assert hasattr(clf, "pooler") and not hasattr(clf, "lm_head")
    assert not hasattr(tiny(num_labels=3, pooling="mean"), "pooler")


def test_every_weight_has_a_hugging_face_name():
    model = tiny(num_labels=2)
    names = {hf_name(k) for k in model.state_dict()}
    assert len(names) == len(model.state_dict())
    assert "bert.encoder.layer.1.attention.self.query.weight" in names and "cls.predictions.bias" in names
    assert len(HF_NAMES) == 15


def test_training_flops_count_the_head_only_where_predicted():
    cfg = ModelConfig(vocab_size=30000, layers=4, dim=256, heads=4, ffn=1024)
    few, many = training_flops(cfg, 32, 128, 600), training_flops(cfg, 32, 128, 4096)
    assert many - few == 3 * 2 * (4096 - 600) * (256 * 256 + 256 * 30000)


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")  # the test extra installs it


def _hf_config(transformers, model: Transformer, **kw):
    c = model.cfg
    return transformers.BertConfig(vocab_size=c.vocab_size, hidden_size=c.dim, num_hidden_layers=c.layers,
                                   num_attention_heads=c.heads, intermediate_size=c.ffn, max_position_embeddings=c.max_positions,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=c.layer_norm_eps,
                                   pad_token_id=c.pad_id, **kw)


def _load(hf, model: Transformer):
    state = {hf_name(k): v for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    # the decoder is tied to the word embeddings (and its bias to cls.predictions.bias)
    assert set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"} and not unexpected
    return hf.eval()


def test_identical_logits_as_hf_masked_lm(transformers):
    model = tiny()
    ids, mask = batch()
    hf = _load(transformers.BertForMaskedLM(_hf_config(transformers, model)), model)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask.long()).logits
        ours = model.lm_logits(model.encode(ids, attention_mask=mask)[0])
    assert torch.allclose(theirs[mask], ours[mask], atol=1e-5)


def test_identical_logits_as_hf_causal_lm(transformers):
    model = tiny(causal=True)
    ids, _ = batch(None)
    hf = _load(transformers.BertLMHeadModel(_hf_config(transformers, model, is_decoder=True)), model)
    with torch.no_grad():
        theirs = hf(input_ids=ids).logits
        ours = model.lm_logits(model.encode(ids, causal=True)[0])
    assert torch.allclose(theirs, ours, atol=1e-5)


def test_identical_logits_as_hf_sequence_classifier(transformers):
    model = tiny(num_labels=3, lm_head=False)
    ids, mask = batch()
    hf = _load(transformers.BertForSequenceClassification(_hf_config(transformers, model, num_labels=3)), model)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask.long()).logits
        ours = model.classify(model.encode(ids, attention_mask=mask)[0], mask)
    assert torch.allclose(theirs, ours, atol=1e-5)
