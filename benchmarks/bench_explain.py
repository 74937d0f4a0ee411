"""Integrated gradients: batched interpolation against one forward+backward pass per step.

The small preset (4 layers x 256, vocabulary 30,000) as a classifier, a 128-token input,
50 steps. bigmodel's `Explainer.integrated_gradients` runs the steps `--internal-batch-size`
at a time; the reference is the textbook loop, 50 separate forward+backward passes of one
interpolated input each. Both compute the same attributions (checked).

    python benchmarks/bench_explain.py [--steps 50] [--batch 16] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine, median, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=25, help="internal batch size (the explain default)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from bigmodel_cli.data.vocab import SPECIAL_TOKENS, Vocab
    from bigmodel_cli.explain.explain import Explainer
    from bigmodel_cli.model.transformer import ModelConfig, Transformer

    torch.manual_seed(0)
    words = [f"w{i}" for i in range(30000 - len(SPECIAL_TOKENS))]
    vocab = Vocab(list(SPECIAL_TOKENS) + words, [0] * 30000)
    model = Transformer(ModelConfig(vocab_size=30000, layers=4, dim=256, heads=4, ffn=1024, num_labels=2,
                                    lm_head=False, labels=["neg", "pos"])).eval()
    explainer = Explainer(model, vocab)
    ids, positions = explainer.encode_words([words[i] for i in torch.randint(0, len(words), (args.tokens - 2,)).tolist()])
    x = torch.tensor([ids])
    target = 1

    def batched():
        return explainer.integrated_gradients(x, target, args.steps, args.batch, "pad", positions)[0]

    def one_by_one():
        return explainer.integrated_gradients(x, target, args.steps, 1, "pad", positions)[0]

    a, b = batched(), one_by_one()  # warm-up, and the same answer
    assert torch.allclose(a, b, atol=1e-4 * float(a.abs().max())), "batched and one-by-one IG differ"
    ours, ref = [], []
    for _ in range(args.repeat):  # alternating, so both see the same machine load
        t = time.perf_counter(); batched(); ours.append(time.perf_counter() - t)
        t = time.perf_counter(); one_by_one(); ref.append(time.perf_counter() - t)
    result = {"benchmark": "explain_ig", "steps": args.steps, "internal_batch_size": args.batch, "tokens": args.tokens,
              "model": "small (4 x 256, vocab 30,000)", "threads": torch.get_num_threads(),
              "batched_s": round(median(ours), 3), "one_by_one_s": round(median(ref), 3),
              "speedup": round(median(ref) / median(ours), 2), "machine": machine()}
    print(f"integrated gradients, {args.steps} steps, {args.tokens} tokens, small preset, {torch.get_num_threads()} threads")
    print(f"  batched ({args.batch} per pass): {result['batched_s']:.2f} s   one pass per step: {result['one_by_one_s']:.2f} s"
          f"   ratio {result['speedup']:.2f}x")
    print(f"  written to {save('explain', result)}")


if __name__ == "__main__":
    main()
