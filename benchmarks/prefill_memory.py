"""Peak memory of a long-prompt prefill through `model.generate`, against the prompt length.

Each length runs in a fresh process, so every peak is its own. On CUDA the peak is torch's allocator peak; on the CPU
it is the growth of the process's peak resident set during generate (so the model's weights are left out).

    python benchmarks/prefill_memory.py --help
    python benchmarks/prefill_memory.py --lengths 8192 32768 131072 --segment 8192            # small model, CPU
    python benchmarks/prefill_memory.py --preset 7b --dtype bfloat16 --device cuda --lengths 16384 131072
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from xlstm_hf.arguments import device, positive_int

PRESETS = {
    "small": dict(vocab_size=50304, hidden_size=256, num_hidden_layers=4, num_heads=4),
    "7b": dict(),  # XLSTMConfig's defaults are the 7B
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="model size (default: small)")
    parser.add_argument("--lengths", type=positive_int, nargs="+", default=[8192, 32768, 131072],
                        help="prompt lengths")
    parser.add_argument("--segment", type=positive_int, default=16384,
                        help="prefill segment (max_inference_chunksize)")
    parser.add_argument("--device", type=device, default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one length in this process
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, length: int) -> dict:
    import torch
    from results import made_in

    from xlstm_hf import XLSTMConfig, XLSTMForCausalLM

    torch.manual_seed(0)
    config = XLSTMConfig(**PRESETS[args.preset], max_inference_chunksize=args.segment)
    with made_in(getattr(torch, args.dtype), args.device):  # a float32 copy first would set the CPU's peak (RSS)
        model = XLSTMForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, length), device=args.device)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)
    if cuda:
        torch.cuda.synchronize()
        peak, growth = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        growth = peak - base
    return dict(length=length, seconds=time.perf_counter() - start, peak_gib=peak / 2**30,
                growth_gib=growth / 2**30)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args, args.one)))
        return
    print(f"preset={args.preset} device={args.device} dtype={args.dtype} segment={args.segment}")
    print(f"{'prompt':>8} {'seconds':>8} {'peak GiB':>9} {'growth GiB':>11}")
    for length in args.lengths:
        command = [sys.executable, __file__, "--preset", args.preset, "--segment", str(args.segment),
                   "--device", args.device, "--dtype", args.dtype, "--one", str(length)]
        # glibc keeps freed heap pages, so the CPU's peak RSS would also count fragmentation: large blocks go to
        # mmap instead (returned on free), and the peak then shows what is live at once.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        run = subprocess.run(command, capture_output=True, text=True, env=env)
        if run.returncode:
            reason = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit status {run.returncode}"
            raise SystemExit(f"prompt of {length} tokens: {reason}")
        result = json.loads(run.stdout.splitlines()[-1])
        print(f"{result['length']:>8} {result['seconds']:>8.2f} {result['peak_gib']:>9.3f} "
              f"{result['growth_gib']:>11.3f}")


if __name__ == "__main__":
    main()
