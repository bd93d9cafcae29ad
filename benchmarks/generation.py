"""Inference through `model.generate` (greedy, min_new_tokens = max_new_tokens), random bf16 weights of the 7B
config (speed does not depend on the values): time to first token and decode speed against prompt length, and peak
GPU memory, for xlstm_hf (decode from CUDA graphs, and eager) and transformers' own xLSTM.

    python benchmarks/generation.py --help
    python benchmarks/generation.py --prompt-lengths 0 2048 16384 --new-tokens 128 --out results/generation.json

A prompt length of 0 means one BOS token. `--tiny` runs a small config on the CPU (no timing claims; for CI).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import results
import torch


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[0, 2048, 16384])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["xlstm_hf", "xlstm_hf_eager", "transformers_xlstm"],
                        choices=["xlstm_hf", "xlstm_hf_eager", "transformers_xlstm"])
    parser.add_argument("--peer-new-tokens", type=int, default=16, help="new tokens for the slow peer")
    parser.add_argument("--tiny", action="store_true", help="a small config on the CPU (no timing claims)")
    parser.add_argument("--out", help="write the results as JSON here")
    return parser.parse_args(argv)


def build(variant: str, tiny: bool, device: str):
    size = dict(hidden_size=128, num_hidden_layers=2, num_heads=2, vocab_size=1024) if tiny else {}
    dtype = torch.float32 if tiny else torch.bfloat16
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build the weights in their dtype directly: no fp32 copy of 7B
    try:
        with torch.device(device):
            if variant == "transformers_xlstm":
                from transformers import xLSTMConfig, xLSTMForCausalLM

                model = xLSTMForCausalLM(xLSTMConfig(**size))
            else:
                from xlstm_hf import XLSTMConfig, XLSTMForCausalLM

                model = XLSTMForCausalLM(XLSTMConfig(**size))
                model.cuda_graphs = variant == "xlstm_hf"
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def timed_generate(model, ids, new_tokens: int, device: str) -> tuple[float, float]:
    """Seconds for generate, and the peak memory (GiB) it reached on the GPU."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False)
    sync()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return time.perf_counter() - start, peak


def run_variant(args, variant: str, device: str) -> list[dict]:
    model = build(variant, args.tiny, device)
    vocab = model.config.vocab_size
    new_tokens = args.peer_new_tokens if variant == "transformers_xlstm" else args.new_tokens
    timed_generate(model, torch.randint(3, vocab, (args.batch, 64), device=device), 4, device)  # warm-up, compile
    rows = []
    for length in args.prompt_lengths:
        ids = torch.randint(3, vocab, (args.batch, max(length, 1)), device=device)
        with contextlib.suppress(torch.cuda.OutOfMemoryError):
            ttft, _ = timed_generate(model, ids, 1, device)
            total, peak = timed_generate(model, ids, new_tokens, device)
            decode = args.batch * (new_tokens - 1) / max(total - ttft, 1e-9)
            row = dict(variant=variant, prompt=length, batch=args.batch, ttft_ms=1000 * ttft,
                       decode_tok_s=decode, new_tokens=new_tokens, peak_gib=peak)
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        rows.append(dict(variant=variant, prompt=length, batch=args.batch, error="out of memory"))
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| system | prompt | TTFT ms | decode tok/s | peak GiB |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['prompt']} | {r['error']} | | |")
        else:
            lines.append(f"| {r['variant']} | {r['prompt']} | {r['ttft_ms']:.1f} | {r['decode_tok_s']:.1f} | "
                         f"{r['peak_gib']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/generation.py needs a CUDA GPU (or --tiny for the CPU)")
    info = results.environment()
    print(json.dumps(info), flush=True)
    rows = [row for variant in args.variants for row in run_variant(args, variant, device)]
    print(table(rows))
    results.write(args.out, info, args, rows)


if __name__ == "__main__":
    main()
