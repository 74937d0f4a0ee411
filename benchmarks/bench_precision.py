"""bf16-mixed against float32 training steps, per model size, and what `--precision auto` picks.

    python benchmarks/bench_precision.py [--rounds 5] [--steps 5]

For each preset (tiny 2 x 128, small 4 x 256), a masked-LM training step of ours (forward,
loss at the masked positions, backward, fused AdamW) on a batch of 32 x 128 token ids drawn
from a 20,000-word vocabulary, 15% of positions predicted: float32, then under bf16 autocast.
The two alternate within each round (order reversed every other round) after warm-up steps,
so that drift in the machine's speed hits both; the table gives the median step.

`--precision auto` is then asked (training/budget.py `auto_precision`) for each size on this
machine, and the benchmark says whether its choice is the faster path here.
Writes benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import machine, save
from bigmodel_cli.model.transformer import SIZES, ModelConfig, Transformer
from bigmodel_cli.training.budget import auto_precision, has_bf16_units
from bigmodel_cli.training.loop import make_optimizer
from bigmodel_cli.workspace.config import PretrainConfig

VOCAB, BATCH, SEQ = 20_000, 32, 128


def make_step(size: str, bf16: bool):
    layers, dim, heads, ffn = SIZES[size]
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=VOCAB, layers=layers, dim=dim, heads=heads, ffn=ffn, max_positions=512,
                                    dropout=0.0, attention_dropout=0.0, pad_id=0))
    optimizer = make_optimizer(model, PretrainConfig(), torch.device("cpu"))
    ids = torch.randint(5, VOCAB, (BATCH, SEQ))
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(BATCH, SEQ) < 0.15
    labels[chosen] = ids[chosen]

    def step() -> float:
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden, _ = model.encode(ids)
            loss, count, _ = model.mlm_loss(hidden, labels)
        (loss / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - began

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    device = torch.device("cpu")
    units = has_bf16_units(device)
    print(f"bf16 units (AVX-512 BF16 or AMX): {units}; threads {torch.get_num_threads()}")
    result = {"machine": machine(), "bf16_units": units, "batch": [BATCH, SEQ], "sizes": {}}
    for size in ("tiny", "small"):
        steps = {"32": make_step(size, False), "bf16-mixed": make_step(size, True)}
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for r in range(args.rounds):
            order = list(steps) if r % 2 == 0 else list(reversed(steps))
            for name in order:
                times[name] += [steps[name]() for _ in range(args.steps)]
        median = {name: statistics.median(t) for name, t in times.items()}
        speedup = median["32"] / median["bf16-mixed"]
        choice = auto_precision(device, SIZES[size][1])
        faster = "bf16-mixed" if speedup > 1 else "32"
        result["sizes"][size] = {"seconds_per_step": {k: round(v, 4) for k, v in median.items()},
                                 "steps_per_s": {k: round(1 / v, 2) for k, v in median.items()},
                                 "bf16_speedup": round(speedup, 3), "auto_choice": choice, "auto_is_faster": choice == faster}
        print(f"{size}: fp32 {median['32']:.3f} s/step, bf16-mixed {median['bf16-mixed']:.3f} s/step: "
              f"bf16 {speedup:.2f}x; --precision auto picks {choice} ({'the faster' if choice == faster else 'NOT the faster'})")
    print(f"wrote {save('precision', result)}")


if __name__ == "__main__":
    main()
