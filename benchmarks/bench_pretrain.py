"""Masked-LM training throughput against Hugging Face's BertForMaskedLM, on CPU.

    python benchmarks/bench_pretrain.py [--quick] [--compile] [--allocator] [--onednn]

The small preset (4 layers, 256 wide, 4 heads, FFN 1024, vocabulary 30,000, 512 positions,
dropout 0.1), a batch of 32 x 128 random token ids with 15% of the positions chosen for
prediction (BERT's 80/10/10 replacement), and a full training step with the fused AdamW (lr
1e-4, the same settings for both): forward, loss, backward, optimizer step, zero_grad.

* peaks first: the matrix-multiply GFLOP/s of this machine, fp32 through torch's default
  path (MKL), fp32 through oneDNN where a public switch routes it there, and bf16; the best
  over a few shapes is the peak that the MFU column divides by;
* reference: `transformers.BertForMaskedLM` (attn_implementation="sdpa", fp32);
* ours: `bigmodel_cli.model.transformer.Transformer` with the same weights (copied by `hf_name`), checked
  to give the same loss, trained on encode -> mlm_loss / count;
* variants of ours: bf16 autocast; with --compile, torch.compile in fp32 and in bf16; with
  --onednn, fp32 matrix products through oneDNN (`torch.backends.mkldnn.matmul.fp32_precision
  = "bf16"`, which keeps fp32 arithmetic only on CPUs without bf16 units); with --allocator, a
  second process whose glibc allocator keeps freed memory (`mallopt`) runs Hugging Face and ours
  again, so that both allocators are shown side by side.

Every variant runs in turn, `--steps` steps each, for `--rounds` rounds (the order reversed
every other round), after warm-up steps, so that drift in machine speed hits all alike; the
table gives the median step. The machine may be shared: each round also measures the share of
the CPUs that other processes used meanwhile (/proc/stat); rounds above --max-other do not
count, and more rounds run (up to --max-rounds) until every variant has --rounds clean ones.
Before each, the benchmark waits (up to --wait-quiet seconds) for the other processes to calm.

MFU = useful FLOPs per step (`training_flops`: the encoder for every token, the prediction
head for the masked positions only; Hugging Face's head over all positions is not counted as
useful) / median step time / the measured peak of the matching dtype.

Prints the table and writes benchmarks/results/pretrain.json (pretrain_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import ctypes.util
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import machine, median, save  # noqa: E402

from bigmodel_cli.model.transformer import (  # noqa: E402
    IGNORE,
    ModelConfig,
    Transformer,
    hf_name,
    training_flops,
)

BATCH, SEQ, VOCAB, MASK_ID, FIRST_WORD = 32, 128, 30000, 4, 5
LR = 1e-4


def model_config() -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, layers=4, dim=256, heads=4, ffn=1024, max_positions=512)


# -- switches --------------------------------------------------------------------------------
def tune_allocator() -> bool:
    """glibc: serve big buffers from the heap and never give freed memory back to the OS, so
    that a step reuses the last step's pages instead of mapping (and faulting in) new ones."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))


def has_onednn_switch() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.backends.mkldnn, "matmul")


@contextlib.contextmanager
def onednn_fp32():
    """fp32 matrix products through oneDNN. "bf16" is the only x86 setting of this public switch
    that routes fp32 there (it allows bf16 arithmetic; a CPU without bf16 units computes in fp32);
    "ieee" and the default keep torch's own path."""
    old = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = old


def cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


# -- the matrix-multiply peaks -----------------------------------------------------------------
SHAPES = [(4096, 256, 1024), (4096, 1024, 256), (4096, 256, 256), (2048, 2048, 2048)]


def matmul_peaks(repeat: int) -> dict:
    """Best GFLOP/s over SHAPES (m x k times k x n), per path, and each path's relative error
    against float64 (so that a path that silently computes in bf16 shows)."""
    gen = torch.Generator().manual_seed(0)
    paths = {"fp32": (torch.float32, contextlib.nullcontext)}
    if has_onednn_switch():
        paths["fp32_onednn"] = (torch.float32, onednn_fp32)
    paths["bf16"] = (torch.bfloat16, contextlib.nullcontext)
    out: dict = {}
    for name, (dtype, context) in paths.items():
        shapes, errors = {}, []
        for m, k, n in SHAPES:
            a64, b64 = torch.randn(m, k, generator=gen, dtype=torch.float64), torch.randn(k, n, generator=gen, dtype=torch.float64)
            a, b = a64.to(dtype), b64.to(dtype)
            with context():
                for _ in range(2):
                    c = a @ b
                best = float("inf")
                for _ in range(repeat):
                    t = time.perf_counter()
                    c = a @ b
                    best = min(best, time.perf_counter() - t)
            shapes[f"{m}x{k}x{n}"] = 2 * m * k * n / best / 1e9
            ref = a.double() @ b.double()  # the rounded inputs: only the product's own error counts
            errors.append(float((c.double() - ref).norm() / ref.norm()))
        out[name] = {"gflops": max(shapes.values()), "shapes": shapes, "rel_error": max(errors)}
    return out


# -- data and models ---------------------------------------------------------------------------
def make_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids; 15% of the positions chosen, of which 80% become [MASK], 10% a random word."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_WORD, VOCAB, (BATCH, SEQ), generator=gen)
    chosen = torch.rand(BATCH, SEQ, generator=gen) < 0.15
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    how = torch.rand(BATCH, SEQ, generator=gen)
    inputs = ids.clone()
    inputs[chosen & (how < 0.8)] = MASK_ID
    swap = chosen & (how >= 0.8) & (how < 0.9)
    inputs[swap] = torch.randint(FIRST_WORD, VOCAB, (int(swap.sum()),), generator=gen)
    return inputs, labels


def build_models() -> tuple[nn.Module, Transformer]:
    from transformers import BertConfig, BertForMaskedLM

    cfg = model_config()
    torch.manual_seed(0)
    ours = Transformer(cfg)
    hf_cfg = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, num_hidden_layers=cfg.layers,
                        num_attention_heads=cfg.heads, intermediate_size=cfg.ffn, hidden_act="gelu",
                        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
                        max_position_embeddings=cfg.max_positions, type_vocab_size=cfg.type_vocab_size,
                        layer_norm_eps=cfg.layer_norm_eps, pad_token_id=cfg.pad_id, attn_implementation="sdpa")
    hf = BertForMaskedLM(hf_cfg)
    if hf.config._attn_implementation != "sdpa":
        raise SystemExit(f"Hugging Face picked attention {hf.config._attn_implementation!r}, not sdpa")
    state = hf.state_dict()
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if not name.startswith("pooler."):  # BertForMaskedLM has no pooler
                state[hf_name(name)].copy_(param)
    return hf, ours


def same_loss(hf: nn.Module, ours: Transformer, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    hf.eval(), ours.eval()
    with torch.no_grad():
        theirs = float(hf(input_ids=inputs, labels=labels).loss)
        hidden, _ = ours.encode(inputs)
        loss, count, _ = ours.mlm_loss(hidden, labels)
    hf.train(), ours.train()
    return theirs, float(loss / count)


class MLMObjective(nn.Module):
    """encode and mlm_loss as one module, as the training loop wraps them (and compiles them)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, inputs, labels):
        hidden, _ = self.model.encode(inputs)
        return self.model.mlm_loss(hidden, labels)


def hf_step(model, optimizer, inputs, labels):
    def step():
        model(input_ids=inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def our_step(runner, optimizer, inputs, labels, dtype=None, context=contextlib.nullcontext):
    def step():
        with context():
            with torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext():
                loss, count, _ = runner(inputs, labels)
            (loss / count).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return step


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    """The fused AdamW kernel, for both: `bigmodel pretrain` uses it, and so does Hugging
    Face's Trainer by default (`optim="adamw_torch_fused"`)."""
    return torch.optim.AdamW(model.parameters(), lr=LR, fused=True)


def make_variants(names: list[str]) -> tuple[dict, dict]:
    """Step functions, each with its own copy of the same initial weights and its own AdamW."""
    hf, ours = build_models()
    inputs, labels = make_batch()
    check = dict(zip(("hf_loss", "our_loss"), same_loss(hf, ours, inputs, labels)))
    check["predicted"] = int((labels != IGNORE).sum())
    steps = {}
    for name in names:
        if name.startswith("hf_fp32"):
            steps[name] = hf_step(hf, adamw(hf), inputs, labels)
            continue
        model = copy.deepcopy(ours)
        runner = torch.compile(MLMObjective(model)) if "compile" in name else MLMObjective(model)
        dtype = torch.bfloat16 if "bf16" in name else None
        context = onednn_fp32 if "onednn" in name else contextlib.nullcontext
        steps[name] = our_step(runner, adamw(model), inputs, labels, dtype, context)
    return steps, check


# -- timing ------------------------------------------------------------------------------------
def _busy_ticks() -> int:
    with open("/proc/stat", encoding="ascii") as handle:
        ticks = list(map(int, handle.readline().split()[1:9]))
    return sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait


def _own_ticks() -> float:
    t = os.times()
    return (t.user + t.system) * os.sysconf("SC_CLK_TCK")


def time_steps(step, count: int) -> dict:
    """Seconds of each step, and the share of the CPUs that other processes used meanwhile."""
    times = []
    try:
        busy, own, start = _busy_ticks(), _own_ticks(), time.perf_counter()
    except OSError:
        busy = None
    for _ in range(count):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    other = None
    if busy is not None:
        wall = time.perf_counter() - start
        foreign = (_busy_ticks() - busy) - (_own_ticks() - own)
        other = max(0.0, foreign / os.sysconf("SC_CLK_TCK") / wall / (os.cpu_count() or 1))
    return {"times": times, "other": other}


def wait_quiet(limit: float, threshold: float, sample: float = 2.0) -> bool:
    """Wait (at most `limit` seconds) until other processes use at most `threshold` of the CPUs."""
    end = time.monotonic() + limit
    while True:
        try:
            busy, own, start = _busy_ticks(), _own_ticks(), time.perf_counter()
            time.sleep(sample)
            foreign = (_busy_ticks() - busy) - (_own_ticks() - own)
        except OSError:
            return True
        if foreign / os.sysconf("SC_CLK_TCK") / (time.perf_counter() - start) / (os.cpu_count() or 1) <= threshold:
            return True
        if time.monotonic() > end:
            return False


def _worker(conn, names: list[str], threads: int | None, warmup: int) -> None:
    """A second process with the tuned allocator: builds its variants, then runs steps on request."""
    tuned = tune_allocator()
    if threads:
        torch.set_num_threads(threads)
    steps, check = make_variants(names)
    first = {}
    for name, step in steps.items():
        t = time.perf_counter()
        step()
        first[name] = time.perf_counter() - t
        time_steps(step, warmup - 1)
    conn.send({"tuned": tuned, "check": check, "first_step": first})
    while True:
        message = conn.recv()
        if message is None:
            break
        name, count = message
        conn.send(time_steps(steps[name], count))
    conn.close()


# -- main --------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds of 1 step, fewer peak repeats")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--compile", action="store_true", help="add ours with torch.compile, fp32 and bf16")
    parser.add_argument("--onednn", action="store_true", help="add ours fp32 with matrix products through oneDNN")
    parser.add_argument("--allocator", action="store_true",
                        help="add Hugging Face and ours in a second process whose glibc allocator keeps freed memory")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--max-other", type=float, default=0.1,
                        help="a variant's round counts only if other processes used at most this share of the CPUs")
    parser.add_argument("--wait-quiet", type=float, default=60,
                        help="before each variant's round, wait up to this many seconds for --max-other to hold")
    parser.add_argument("--max-rounds", type=int, default=0,
                        help="rounds at most, repeating disturbed ones (default: 3 x --rounds)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 1, 1
    args.warmup = max(1, args.warmup)
    args.max_rounds = args.max_rounds or 3 * args.rounds
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = model_config()
    flags = cpu_flags()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, "
          f"avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}, amx_bf16 {'yes' if 'amx_bf16' in flags else 'no'}")
    peaks = matmul_peaks(3 if args.quick else 10)
    for name, peak in peaks.items():
        shapes = ", ".join(f"{s} {g:.0f}" for s, g in peak["shapes"].items())
        print(f"matmul peak {name:12s} {peak['gflops']:6.0f} GFLOP/s  (rel. error {peak['rel_error']:.1e}; {shapes})")
    peak_fp32 = max(v["gflops"] for k, v in peaks.items() if k.startswith("fp32"))
    peak_bf16 = peaks["bf16"]["gflops"]

    names = ["hf_fp32", "ours_fp32", "ours_bf16"]
    if args.onednn and has_onednn_switch():
        names.insert(2, "ours_fp32_onednn")
    if args.compile:
        names += ["ours_fp32_compile", "ours_bf16_compile"]
    steps, check = make_variants(names)
    print(f"same weights, same loss: Hugging Face {check['hf_loss']:.6f}, ours {check['our_loss']:.6f}")
    if abs(check["hf_loss"] - check["our_loss"]) > 1e-4 * abs(check["hf_loss"]):
        raise SystemExit("the two models disagree: not the same architecture")

    first = {}
    for name, step in steps.items():  # warm-up; the first compiled step is the compilation
        t = time.perf_counter()
        step()
        first[name] = time.perf_counter() - t
        time_steps(step, args.warmup - 1)
    remote_names, conn, process = [], None, None
    if args.allocator:
        remote_names = ["hf_fp32+malloc", "ours_fp32+malloc"]
        ctx = mp.get_context("spawn")
        conn, child = ctx.Pipe()
        process = ctx.Process(target=_worker, args=(child, remote_names, args.threads, args.warmup), daemon=True)
        process.start()
        hello = conn.recv()
        if not hello["tuned"]:
            print("mallopt was refused: the second process runs with glibc's default allocator")
        first.update(hello["first_step"])

    def run(name: str, count: int) -> dict:
        if name in steps:
            return time_steps(steps[name], count)
        conn.send((name, count))
        return conn.recv()

    order = names + remote_names
    runs = {name: [] for name in order}

    def clean(rnd: dict) -> bool:
        return rnd["other"] is None or rnd["other"] <= args.max_other

    r = 0
    while r < args.rounds or (r < args.max_rounds and any(sum(map(clean, v)) < args.rounds for v in runs.values())):
        for name in (order if r % 2 == 0 else order[::-1]):
            if args.wait_quiet:
                wait_quiet(args.wait_quiet, args.max_other)
            runs[name].append(run(name, args.steps))
        r += 1
        print(f"round {r}: " + ", ".join(f"{n} {median(runs[n][-1]['times']):.2f}s"
                                        + ("" if clean(runs[n][-1]) else f" ({runs[n][-1]['other']:.0%} other)") for n in order))
    if conn is not None:
        conn.send(None)
        process.join(timeout=30)

    flops = training_flops(cfg, BATCH, SEQ, check["predicted"])
    tokens = BATCH * SEQ
    rows = {}
    for name in order:
        kept = [rnd for rnd in runs[name] if clean(rnd)] or runs[name]  # all of them if none is clean
        times = [t for rnd in kept for t in rnd["times"]]
        others = [rnd["other"] for rnd in kept if rnd["other"] is not None]
        step = median(times)
        reference = "hf_fp32+malloc" if name.endswith("+malloc") else "hf_fp32"
        peak = peak_bf16 if "bf16" in name else peak_fp32
        rows[name] = {"step_s": step, "best_step_s": min(times), "tokens_per_s": tokens / step,
                      "mfu": flops / step / (peak * 1e9), "peak_used_gflops": peak,
                      "first_step_s": first[name], "other_load": max(others) if others else None,
                      "rounds_kept": len(kept), "rounds_run": len(runs[name]),
                      "vs": reference}
    for name, row in rows.items():
        row["ratio"] = rows[row["vs"]]["step_s"] / row["step_s"]
        row["ratio_vs_hf_fp32"] = rows["hf_fp32"]["step_s"] / row["step_s"]

    print(f"\n{flops / 1e9:.1f} useful GFLOP per step ({check['predicted']} predicted positions of {tokens}); "
          f"peaks fp32 {peak_fp32:.0f}, bf16 {peak_bf16:.0f} GFLOP/s")
    print(f"{'variant':20s} {'step s':>7s} {'best s':>7s} {'tokens/s':>9s} {'vs HF':>6s} {'MFU':>6s} {'other':>6s} {'1st step':>9s}")
    for name, row in rows.items():
        other = f"{row['other_load']:.0%}" if row["other_load"] is not None else "?"
        vs = f"{row['ratio']:.2f}x" + ("*" if row["vs"] != "hf_fp32" else " ")
        print(f"{name:20s} {row['step_s']:7.3f} {row['best_step_s']:7.3f} {row['tokens_per_s']:9.0f} {vs:>7s}"
              f"{row['mfu']:6.1%} {other:>6s} {row['first_step_s']:8.1f}s")
    if remote_names:
        print("* against hf_fp32+malloc (the same process and allocator)")
    print(f"other: the largest share of the CPUs that other processes used during the rounds counted; rounds over "
          f"{args.max_other:.0%} are not counted (kept/run: " + ", ".join(f"{n} {r['rounds_kept']}/{r['rounds_run']}" for n, r in rows.items()) + ")")

    result = {
        "config": {"layers": cfg.layers, "dim": cfg.dim, "heads": cfg.heads, "ffn": cfg.ffn, "vocab": cfg.vocab_size,
                   "batch": BATCH, "seq": SEQ, "optimizer": f"AdamW (fused) lr {LR}", "dropout": cfg.dropout,
                   "rounds": args.rounds, "steps_per_round": args.steps, "warmup": args.warmup,
                   "threads": torch.get_num_threads()},
        "check": check,
        "useful_flops_per_step": flops,
        "matmul_peaks": peaks,
        "variants": rows,
        "targets": {"ours fp32 vs HF fp32 (target >= 2.7)": rows["ours_fp32"]["ratio"],
                    "ours bf16-mixed vs HF fp32 (target >= 5)": max(r["ratio_vs_hf_fp32"] for n, r in rows.items() if "bf16" in n)},
        "runs": runs,
        "machine": {**machine(), "torch": torch.__version__, "avx512_bf16": "avx512_bf16" in flags,
                    "amx_bf16": "amx_bf16" in flags, "capability": torch.backends.cpu.get_cpu_capability()},
    }
    for name, value in result["targets"].items():
        print(f"{name}: {value:.2f}x")
    print(f"wrote {save('pretrain_quick' if args.quick else 'pretrain', result)}")


if __name__ == "__main__":
    main()
