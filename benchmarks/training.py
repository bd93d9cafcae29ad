"""Training throughput, side by side: tokens/s of whole optimizer steps (forward, backward, AdamW) on random tokens,
for xlstm_hf (Triton chunkwise forward and backward) and transformers' own xLSTM (with the `xlstm` package's
`mlstm_kernels` when installed: `chunkwise--triton_limit_chunk`; otherwise its native PyTorch kernels).

Setups (`--setups`):
  full_1.3b   the 1.3B config (hidden 2048, 24 blocks, 4 heads), fp32 weights, bf16 autocast, every weight trained
  lora_7b     the 7B, bf16 weights, LoRA rank 16 on the documented target modules, gradient checkpointing

    python benchmarks/training.py --help
    python benchmarks/training.py --setups full_1.3b lora_7b --seq-len 2048 --out results/training.json

Each variant and setup runs in a fresh process. `--tiny` runs small configs on the CPU (no timing claims; for CI).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import results
import torch

from xlstm_hf.arguments import positive_int

VARIANTS = ["xlstm_hf", "transformers_xlstm"]
SETUPS = {
    "full_1.3b": dict(size=dict(hidden_size=2048, num_hidden_layers=24, num_heads=4), lora=False, batch=4),
    "lora_7b": dict(size={}, lora=True, batch=2),
}
TINY = dict(hidden_size=128, num_hidden_layers=2, num_heads=2, vocab_size=1024)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--seq-len", type=positive_int, default=2048)
    parser.add_argument("--steps", type=positive_int, default=5, help="timed optimizer steps (after 2 untimed ones)")
    parser.add_argument("--tiny", action="store_true", help="small configs on the CPU (no timing claims)")
    parser.add_argument("--out", type=results.file_to_write, help="write the results as JSON here")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # internal: "variant/setup" in this process
    return parser.parse_args(argv)


def build(variant: str, setup: dict, tiny: bool, device: str) -> torch.nn.Module:
    """The model of `variant` for `setup`, on `device`: fp32 for full training, bf16 weights under LoRA."""
    size = TINY if tiny else setup["size"]
    with results.made_in(torch.bfloat16 if setup["lora"] and not tiny else torch.float32, device):
        if variant == "xlstm_hf":
            from xlstm_hf import XLSTMConfig, XLSTMForCausalLM

            model = XLSTMForCausalLM(XLSTMConfig(**size, use_cache=False))
        else:
            from transformers import xLSTMConfig, xLSTMForCausalLM
            from transformers.utils import is_xlstm_available

            kernels = {} if tiny or not is_xlstm_available() else dict(
                chunkwise_kernel="chunkwise--triton_limit_chunk", mode="train")
            model = xLSTMForCausalLM(xLSTMConfig(**size, **kernels, use_cache=False))
    if setup["lora"]:
        from peft import LoraConfig, get_peft_model

        from xlstm_hf import LORA_TARGET_MODULES

        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGET_MODULES["single"]))
    return model.train()


def measure(args, variant: str, setup_name: str, device: str) -> dict:
    setup = SETUPS[setup_name]
    model = build(variant, setup, args.tiny, device)
    vocab = model.config.vocab_size
    batch = 2 if args.tiny else setup["batch"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    ids = torch.randint(0, vocab, (batch, args.seq_len), device=device)

    def step() -> float:
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # a host sync: the step is done

    for _ in range(2):  # Triton builds, allocator warm-up
        step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(suite="training", variant=variant, setup=setup_name, batch=batch, seq_len=args.seq_len,
                step_s=seconds, tok_s=batch * args.seq_len / seconds, trained_params=trained,
                peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan"))


def table(rows: list[dict]) -> str:
    lines = ["| setup | system | batch x seq | step s | tokens/s | peak GiB |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('setup', '')} | {r['variant']} | {r['error']} | | | |")
        else:
            lines.append(f"| {r['setup']} | {r['variant']} | {r['batch']} x {r['seq_len']} | {r['step_s']:.3f} | "
                         f"{r['tok_s']:,.0f} | {r['peak_gib']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/training.py needs a CUDA GPU (or --tiny for the CPU)")
    if args.only:
        variant, setup = args.only.split("/")
        results.run_child(lambda: print(json.dumps(measure(args, variant, setup, device)), flush=True),
                          suite="training", variant=variant, setup=setup)
        return
    info = results.environment()
    print(json.dumps(info), flush=True)
    rows = [row for setup in args.setups for variant in args.variants
            for row in results.run_isolated(__file__, argv, f"{variant}/{setup}")]
    print(table(rows))
    results.write(args.out, info, args, rows)


if __name__ == "__main__":
    main()
