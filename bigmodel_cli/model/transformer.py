"""The one Transformer of bigmodel: a BERT encoder with masked-LM, causal-LM and
classification heads. Pretrain, finetune and explain all use this file.

The architecture is BERT's exactly (learned absolute positions, token types, post-LayerNorm
blocks, exact-erf GELU, tied output embeddings, tanh pooler), so every weight has one
counterpart in Hugging Face's BertForMaskedLM / BertLMHeadModel /
BertForSequenceClassification: `HF_NAMES` below is that table, and an export is a rename.

Speed choices, none of them visible in the results:
- attention goes through `scaled_dot_product_attention` (fused kernels) unless the caller
  asks for the attention weights, or trains with dropout on CPU, when the explicit
  softmax(QKᵀ/√d_k)·V path runs instead;
- the masked-LM loss runs the prediction head only at the masked positions. Hugging Face
  projects every position onto the whole vocabulary (batch x length x vocab logits) and then
  ignores 85% of them; on CPU that projection is most of a training step;
- on CPU the head's cross-entropy is one fused function (`_LinearCrossEntropy`), and
  dropout draws its mask four elements per random number (`dropout`). Together these took
  a small model's training step from 0.96 s to about 0.8 s on 2 cores.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label of positions that carry no loss, as in PyTorch's cross_entropy


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, with a cheaper mask on CPU, where torch draws one float per element on a
    single thread (`bernoulli_`) and applies a boolean mask: together about a sixth of a
    small model's training step. Here one 64-bit draw gives four 16-bit lanes, an element
    is dropped when its lane is below round(p * 65536) - 32768 (probability p within
    1/65536), and the mask is kept as floats (0 or 1/(1-p)), which multiply fastest."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or x.dtype != torch.float32 or torch.compiler.is_compiling():
        return F.dropout(x, p, True)  # fused on GPU; torch.compile draws its own masks
    return _CpuDropout.apply(x, p)


class _CpuDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None)  # all 64 bits
        lanes = words.view(torch.int16)[:n].view(x.shape)
        mask = torch.ge(lanes, round(p * 65536) - 32768, out=torch.empty_like(x)).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        mask, = ctx.saved_tensors
        return grad * mask, None


class Dropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


# name: (layers, dim, heads, ffn). tiny and small as in Google's BERT miniatures, base as BERT-base.
SIZES = {
    "tiny": (2, 128, 2, 512),
    "small": (4, 256, 4, 1024),
    "base": (12, 768, 12, 3072),
}


@dataclass
class ModelConfig:
    vocab_size: int
    layers: int = 4
    dim: int = 256
    heads: int = 4
    ffn: int = 1024
    max_positions: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_id: int = 0
    causal: bool = False  # trained as a causal LM (BertLMHeadModel); encode() still takes causal= per call
    lm_head: bool = True  # the masked/causal LM prediction head (pretraining and generation)
    # Classification head: number of labels (0: none), their names, and how the sequence is
    # pooled: "cls" (BERT's tanh pooler over [CLS]) or "mean" (average of the real tokens).
    num_labels: int = 0
    labels: list = field(default_factory=list)
    pooling: str = "cls"
    classifier_dropout: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def checked(cls, data: Any, where: str) -> "ModelConfig":
        """from_dict for a config read from disk (which a person may have edited): every
        problem in one line naming the file and the fields, not a TypeError inside torch."""
        from bigmodel_cli.errors import UserError

        problems = config_problems(data)
        if problems:
            raise UserError(f"{where}: {'; '.join(problems)}",
                            hint="the run's config was changed by hand or is damaged; restore it or train the run again")
        return cls.from_dict(data)


_POSITIVE = ("vocab_size", "layers", "dim", "heads", "ffn", "max_positions", "type_vocab_size")
_FRACTIONS = ("dropout", "attention_dropout", "classifier_dropout")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a number


def is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def config_problems(data: Any) -> list[str]:
    """What is wrong with a model config dict, field by field ([] when it builds a model)."""
    if not isinstance(data, dict):
        return ["not a JSON object"]
    problems = [] if "vocab_size" in data else ["field 'vocab_size' is missing"]
    defaults = {f.name: f.default for f in ModelConfig.__dataclass_fields__.values()}

    def get(key: str) -> Any:
        return data.get(key, defaults.get(key))
    for key in _POSITIVE:
        if key in data and not (is_int(data[key]) and data[key] >= 1):
            problems.append(f"field '{key}' must be a positive integer, got {data[key]!r}")
    for key in _FRACTIONS:
        if key in data and not (is_num(data[key]) and 0 <= data[key] < 1):
            problems.append(f"field '{key}' must be a number in [0, 1), got {data[key]!r}")
    if "layer_norm_eps" in data and not (is_num(data["layer_norm_eps"]) and data["layer_norm_eps"] > 0):
        problems.append(f"field 'layer_norm_eps' must be a positive number, got {data['layer_norm_eps']!r}")
    for key in ("causal", "lm_head"):
        if key in data and not isinstance(data[key], bool):
            problems.append(f"field '{key}' must be true or false, got {data[key]!r}")
    if "pooling" in data and data["pooling"] not in ("cls", "mean"):
        problems.append(f"field 'pooling' must be \"cls\" or \"mean\", got {data['pooling']!r}")
    labels, num_labels = get("labels"), get("num_labels")
    if not (is_int(num_labels) and num_labels >= 0):
        problems.append(f"field 'num_labels' must be 0 or a positive integer, got {num_labels!r}")
    elif not isinstance(labels, list) or (num_labels and labels and len(labels) != num_labels):
        problems.append(f"field 'labels' must list the {num_labels} class names of 'num_labels', got {labels!r}")
    elif not num_labels and not get("lm_head"):
        problems.append("field 'num_labels' is 0 and 'lm_head' is false: the model would have no output")
    dim, heads, vocab, pad = get("dim"), get("heads"), get("vocab_size"), get("pad_id")
    if is_int(dim) and is_int(heads) and dim >= 1 and heads >= 1 and dim % heads:
        problems.append(f"field 'heads' ({heads}) must divide field 'dim' ({dim})")
    if not is_int(pad) or (is_int(vocab) and not 0 <= pad < vocab):
        problems.append(f"field 'pad_id' must be an id below vocab_size, got {pad!r}")
    return problems


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_id)
        self.positions = nn.Embedding(cfg.max_positions, cfg.dim)
        self.types = nn.Embedding(cfg.type_vocab_size, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor, type_ids: torch.Tensor | None = None,
                token_embeds: torch.Tensor | None = None) -> torch.Tensor:
        # token_embeds replaces the token lookup: integrated gradients interpolates there.
        x = self.tokens(ids) if token_embeds is None else token_embeds
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = x + self.positions(positions)
        x = x + (self.types(type_ids) if type_ids is not None else self.types.weight[0])
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.dim, cfg.dim)
        self.key = nn.Linear(cfg.dim, cfg.dim)
        self.value = nn.Linear(cfg.dim, cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.dropout_p = cfg.attention_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, causal: bool,
                need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, D = x.shape
        q, k, v = (proj(x).view(B, T, self.heads, D // self.heads).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        p = self.dropout_p if self.training else 0.0
        if causal:
            allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            mask = allowed if mask is None else mask & allowed
        weights = None
        # On CPU, SDPA's fused kernels have no dropout: with it, SDPA runs these same
        # products and draws its mask with the slow bernoulli_ that `dropout` avoids.
        if not need_weights and not (p > 0 and x.device.type == "cpu"):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            # softmax(QKᵀ/√d_k)·V written out, so the weights can be returned. Scaling q
            # rather than the scores touches T x d_k numbers instead of T x T.
            scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            y = dropout(weights, p, self.training) @ v
        return self.out(y.transpose(1, 2).reshape(B, T, D)), weights


class Block(nn.Module):
    """Post-LayerNorm, as in BERT: x = norm(x + sublayer(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(cfg.dim, cfg.ffn)
        self.ffn_out = nn.Linear(cfg.ffn, cfg.dim)
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x, mask, causal, need_weights):
        a, weights = self.attn(x, mask, causal, need_weights)
        x = self.attn_norm(x + self.dropout(a))
        x = self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))
        return x, weights


class LMHead(nn.Module):
    """BERT's prediction head: dense, GELU, LayerNorm, then the tied embedding matrix."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(h), embedding, self.bias)

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(h)))

    def loss(self, h: torch.Tensor, embedding: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy of h's predictions against target, and how many were right."""
        x = self.transform(h)
        if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_compiling():
            return _LinearCrossEntropy.apply(x, embedding, self.bias, target)
        logits = F.linear(x, embedding, self.bias)
        loss = F.cross_entropy(logits.float(), target, reduction="sum")
        return loss, (logits.argmax(-1) == target).sum()


class _LinearCrossEntropy(torch.autograd.Function):
    """cross_entropy(x Wᵀ + b, target, reduction="sum") and the hits (targets scored
    highest), with the (positions x vocabulary) logits made once and reused in place: the
    forward turns them into exp(logit - max), the backward into the gradient softmax -
    onehot. Unfused, torch also copies them, fills a zero matrix of their size and runs
    log-softmax forward and backward, about a tenth of a small model's CPU step."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, target: torch.Tensor):
        logits = torch.addmm(bias, x, weight.t())
        top = logits.amax(-1)  # not max(-1): that also finds the indices, which cost far more
        picked = logits.gather(1, target[:, None]).squeeze(1)
        correct = (picked >= top).sum()  # the target scored highest (an exact tie counts too)
        exp = logits.sub_(top[:, None]).exp_()
        total = exp.sum(-1)
        loss = (total.log() + top - picked).sum()
        ctx.mark_non_differentiable(correct)
        ctx.save_for_backward(x, weight, target)
        ctx.exp, ctx.total = exp, total  # not saved tensors: the backward overwrites exp
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_correct):
        x, weight, target = ctx.saved_tensors
        grad = ctx.exp.mul_((grad_loss / ctx.total)[:, None])  # softmax, scaled
        rows = torch.arange(len(target), device=target.device)
        grad[rows, target] -= grad_loss
        ctx.exp = ctx.total = None
        return grad @ weight, grad.t() @ x, grad.sum(0), None


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        # Only the parts a run uses exist, so that DDP never waits for gradients that
        # will not come: BertForMaskedLM has no pooler, a classifier no LM head.
        if cfg.lm_head:
            self.lm_head = LMHead(cfg)
        if cfg.num_labels and cfg.pooling == "cls":
            self.pooler = nn.Linear(cfg.dim, cfg.dim)
        if cfg.num_labels:
            self.classifier_dropout = Dropout(cfg.classifier_dropout)
            self.classifier = nn.Linear(cfg.dim, cfg.num_labels)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) weights, zero biases, the [PAD] row zero.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def encode(self, ids: torch.Tensor, *, type_ids: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None, causal: bool = False,
               need_weights: bool = False, token_embeds: torch.Tensor | None = None):
        """Hidden states (B, T, dim) and, with need_weights, each layer's (B, heads, T, T)
        attention weights. attention_mask: (B, T), true (or 1) for real tokens."""
        if ids.shape[1] > self.cfg.max_positions:
            raise ValueError(f"sequence of {ids.shape[1]} tokens exceeds the position table ({self.cfg.max_positions})")
        mask = None
        # A mask of all ones is dropped so that SDPA takes its fastest kernel; while tracing
        # (torch.compile, ONNX export) the mask is always kept: the check depends on data.
        if attention_mask is not None and (torch.compiler.is_compiling() or not bool(attention_mask.all())):
            mask = attention_mask.bool()[:, None, None, :]  # keys a query may look at
        x = self.embeddings(ids, type_ids, token_embeds)
        attentions = []
        for block in self.blocks:
            x, weights = block(x, mask, causal, need_weights)
            attentions.append(weights)
        return x, (attentions if need_weights else None)

    # -- heads --------------------------------------------------------------------
    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden, self.embeddings.tokens.weight)

    def mlm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed cross-entropy over the masked positions, their count, and how many the
        model got right. Only masked positions reach the head (see the module docstring)."""
        where = labels != IGNORE
        target = labels[where]
        loss, correct = self.lm_head.loss(hidden[where], self.embeddings.tokens.weight, target)
        return loss, target.new_tensor(target.numel()), correct

    def clm_loss(self, hidden: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy (position t predicts token t+1), count, correct."""
        target = ids[:, 1:].flatten()
        keep = target != self.cfg.pad_id
        target = target[keep]
        loss, correct = self.lm_head.loss(hidden[:, :-1].flatten(0, 1)[keep], self.embeddings.tokens.weight, target)
        return loss, target.new_tensor(target.numel()), correct

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.pooling == "mean":
            if attention_mask is None:
                return hidden.mean(1)
            weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return torch.tanh(self.pooler(hidden[:, 0]))

    def classify(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.classifier_dropout(self.pool(hidden, attention_mask)))

    # -- bookkeeping ----------------------------------------------------------------
    def num_parameters(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if embeddings else n - self.embeddings.tokens.weight.numel() - self.embeddings.positions.weight.numel()

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups, nanoGPT's rule: decay only tensors of two or more dimensions
        (matrices and embeddings), never biases or LayerNorm weights."""
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        other = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def training_flops(cfg: ModelConfig, batch: int, seq: int, predicted: int) -> int:
    """Useful FLOPs of one training step (forward + backward = 3x forward): the encoder's
    matrix products and attention for batch x seq tokens, and the prediction head for the
    `predicted` positions only. Embedding lookups, norms and activations are not counted."""
    tokens = batch * seq
    per_layer = 2 * tokens * (4 * cfg.dim * cfg.dim + 2 * cfg.dim * cfg.ffn)  # q k v out, ffn in/out
    attention = 2 * 2 * batch * seq * seq * cfg.dim  # QKᵀ and weights·V
    head = 2 * predicted * (cfg.dim * cfg.dim + cfg.dim * cfg.vocab_size)
    return 3 * (cfg.layers * (per_layer + attention) + head)


# -- Hugging Face names -------------------------------------------------------------------
# (our name pattern, Hugging Face's). The decoder weight is the token embedding (tied) and
# is written once; cls.predictions.decoder.bias is the same tensor as cls.predictions.bias.
HF_NAMES = [
    (r"embeddings\.tokens\.", "bert.embeddings.word_embeddings."),
    (r"embeddings\.positions\.", "bert.embeddings.position_embeddings."),
    (r"embeddings\.types\.", "bert.embeddings.token_type_embeddings."),
    (r"embeddings\.norm\.", "bert.embeddings.LayerNorm."),
    (r"blocks\.(\d+)\.attn\.(query|key|value)\.", r"bert.encoder.layer.\1.attention.self.\2."),
    (r"blocks\.(\d+)\.attn\.out\.", r"bert.encoder.layer.\1.attention.output.dense."),
    (r"blocks\.(\d+)\.attn_norm\.", r"bert.encoder.layer.\1.attention.output.LayerNorm."),
    (r"blocks\.(\d+)\.ffn_in\.", r"bert.encoder.layer.\1.intermediate.dense."),
    (r"blocks\.(\d+)\.ffn_out\.", r"bert.encoder.layer.\1.output.dense."),
    (r"blocks\.(\d+)\.ffn_norm\.", r"bert.encoder.layer.\1.output.LayerNorm."),
    (r"pooler\.", "bert.pooler.dense."),
    (r"lm_head\.dense\.", "cls.predictions.transform.dense."),
    (r"lm_head\.norm\.", "cls.predictions.transform.LayerNorm."),
    (r"lm_head\.bias$", "cls.predictions.bias"),
    (r"classifier\.", "classifier."),
]


def hf_name(name: str) -> str:
    for pattern, replacement in HF_NAMES:
        renamed, n = re.subn("^" + pattern, replacement, name)
        if n:
            return renamed
    raise KeyError(f"no Hugging Face name for {name}")


def validate_shape(cfg) -> list[str]:
    """--size and the --layers/--dim/--heads/--ffn that override it (pretrain, and finetune
    --from scratch)."""
    problems = []
    if cfg.size not in SIZES:
        problems.append(f"--size must be one of {', '.join(SIZES)}, got '{cfg.size}'")
    for key in ("layers", "dim", "heads", "ffn"):
        if getattr(cfg, key) < 0:
            problems.append(f"--{key} must be a positive integer (0 takes it from --size), got {getattr(cfg, key)}")
    _, dim, heads, _ = architecture(cfg)
    if dim > 0 and heads > 0 and dim % heads:
        problems.append(f"--heads ({heads}) must divide --dim ({dim})")
    return problems


def architecture(cfg) -> tuple[int, int, int, int]:
    """(layers, dim, heads, ffn): the preset, with explicit options winning."""
    layers, dim, heads, ffn = SIZES.get(cfg.size, SIZES["small"])
    dim = cfg.dim or dim
    if cfg.dim and not cfg.ffn:
        ffn = 4 * dim
    return cfg.layers or layers, dim, cfg.heads or heads, cfg.ffn or ffn
