"""`bigmodel generate`: continue a prompt with a causal (clm) pretrain run.

Sampling is the usual chain: temperature, then top-k, then top-p (nucleus); temperature 0
is greedy. Special tokens are never produced; [SEP] (end of document) stops.
"""

from __future__ import annotations

from dataclasses import dataclass

from bigmodel_cli.data.vocab import CLS, MASK, PAD, SEP, UNK
from bigmodel_cli.errors import UserError


@dataclass
class Generation:
    run: str
    prompt: str
    prompt_tokens: list
    tokens: list
    text: str
    stopped: str


def sample_next(logits, temperature: float, top_k: int, top_p: float, generator):
    import torch

    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already cover top_p
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def validate(temperature: float, top_k: int, top_p: float, max_tokens: int) -> list[str]:
    problems = []
    if not temperature >= 0:
        problems.append(f"--temperature must be 0 (greedy) or more, got {temperature}")
    if top_k < 0:
        problems.append(f"--top-k must be 0 (off) or more, got {top_k}")
    if not 0 < top_p <= 1:
        problems.append(f"--top-p must be in (0, 1], got {top_p}")
    if max_tokens < 1:
        problems.append(f"--max-tokens must be a positive integer, got {max_tokens}")
    return problems


def generate(ws, prompt: str, *, run: str | None = None, temperature: float = 0.8, top_k: int = 50, top_p: float = 0.95,
             max_tokens: int = 50, seed: int = 42) -> Generation:
    import torch

    from bigmodel_cli.data.tokenizer import Encoder
    from bigmodel_cli.model.runs import find_run, load_model

    problems = validate(temperature, top_k, top_p, max_tokens)
    if problems:
        raise UserError("; ".join(problems))
    folder = find_run(ws, run, kind="pretrain")
    model, _ = load_model(folder)
    if not model.cfg.causal:
        raise UserError(f"run '{folder.name}' was pretrained as a masked LM, which cannot continue text",
                        hint="pretrain a causal one: bigmodel pretrain --objective clm --name gpt, then --run gpt")
    encoder = Encoder.from_folder(folder)
    vocab = encoder.vocab
    prompt_tokens = encoder.units(prompt)
    prompt_ids = [vocab.id(t) for t in prompt_tokens]
    ids = [vocab.id(CLS)] + prompt_ids
    banned = torch.tensor([vocab.id(t) for t in (PAD, CLS, MASK, UNK)])
    sep = vocab.id(SEP)
    generator = torch.Generator().manual_seed(seed)
    new: list[int] = []
    stopped = "max tokens"
    with torch.no_grad():
        for _ in range(max_tokens):
            window = torch.tensor([ids[-model.cfg.max_positions:]])
            hidden, _ = model.encode(window, causal=True)
            logits = model.lm_logits(hidden[0, -1]).float()
            logits[banned] = float("-inf")
            token = sample_next(logits, temperature, top_k, top_p, generator)
            if token == sep:
                stopped = "end of text"
                break
            ids.append(token)
            new.append(token)
    tokens = [vocab.tokens[i] for i in new]
    return Generation(folder.name, prompt, prompt_tokens, tokens, encoder.decode(prompt_tokens + tokens), stopped)
