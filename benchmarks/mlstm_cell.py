"""mLSTM kernel benchmark: one 7B layer (B 1, 8 heads, q/k dim 256, v dim 512, bf16), side by side in one run.

Forward and forward+backward of the chunkwise kernels at several lengths, against `mlstm_kernels` (triton_limit_chunk,
triton_xl_chunk) when it imports and torch SDPA flash attention of a Llama-2-7B layer (32 heads of 128, causal);
then the fused recurrent step at several batch sizes against mlstm_kernels' Triton step and the PyTorch reference.
Median times from `triton.testing.do_bench`. Needs a CUDA GPU.

    python benchmarks/mlstm_cell.py --help
    python benchmarks/mlstm_cell.py --out results/kernels.json
    python benchmarks/mlstm_cell.py --prefill --lengths 2048 16384      # the inference prefill's fusions and tilings
    python benchmarks/mlstm_cell.py --prefill --lengths 2048 --chunk-sizes 64 128 256
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable

import results
import torch
import torch.nn.functional as F

from xlstm_hf.arguments import at_least, positive_int


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=positive_int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--heads", type=positive_int, default=8)
    parser.add_argument("--dqk", type=positive_int, default=256)
    parser.add_argument("--dv", type=positive_int, default=512)
    parser.add_argument("--chunk-sizes", type=at_least(16), nargs="+", default=[128],
                        help="our kernels' chunk sizes to time (powers of two)")
    parser.add_argument("--step-batches", type=positive_int, nargs="+", default=[1, 32])
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument("--profile", action="store_true", help="per-kernel times of our fw+bw at each S, then stop")
    parser.add_argument("--sweep", action="store_true",
                        help="time our kernels' tilings at each S and chunk size, then stop")
    parser.add_argument("--prefill", action="store_true",
                        help="time the mLSTM layer's inference prefill around the cell, fused against separate "
                             "kernels, at each S and chunk size (--chunk-sizes) and under other tilings, then stop")
    parser.add_argument("--skip", nargs="*", default=[], metavar="TEXT",
                        help="skip the variants (sequence, SDPA, step) whose name contains TEXT (e.g. xl_chunk)")
    parser.add_argument("--out", type=results.file_to_write, help="write the results as JSON here")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # internal: time one variant in this process
    return parser.parse_args(argv)


def bench(fn: Callable[[], object], grad_to_none=None) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def gate_inputs(B, NH, S, DQK, DV, dtype, requires_grad):
    gen = torch.Generator(device="cuda").manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, device="cuda", generator=gen)  # noqa: E731
    q, k, v = rand(B, NH, S, DQK).to(dtype), rand(B, NH, S, DQK).to(dtype), rand(B, NH, S, DV).to(dtype)
    i, f = (3 * rand(B, NH, S) - 2).to(dtype), (3 * rand(B, NH, S) + 3).to(dtype)
    return [x.requires_grad_(requires_grad) for x in (q, k, v, i, f)]


def sequence_variants(args) -> dict[str, Callable]:
    from xlstm_hf.kernels.mlstm_triton import mlstm_chunkwise_triton

    def chunkwise(L: int) -> Callable:
        return lambda q, k, v, i, f: mlstm_chunkwise_triton(q, k, v, i, f, chunk_size=L)[0]

    variants = {f"xlstm_hf L={L}": chunkwise(L) for L in args.chunk_sizes}
    try:
        from mlstm_kernels.torch import get_mlstm_kernel

        for name, chunk in (("triton_limit_chunk", 64), ("triton_xl_chunk", 128), ("triton_xl_chunk", 64)):
            kernel = get_mlstm_kernel(f"chunkwise--{name}")
            variants[f"mlstm_kernels {name} L={chunk}"] = (lambda kernel, chunk: lambda q, k, v, i, f: kernel(
                q, k, v, i, f, chunk_size=chunk, autocast_kernel_dtype=torch.bfloat16))(kernel, chunk)
    except Exception as error:  # noqa: BLE001  (an optional peer)
        print(f"mlstm_kernels not usable here: {error!r}", file=sys.stderr)
    return variants


def time_variant(args, name: str) -> list[dict]:
    """Time one variant at every length (run in its own process: a peer's compiler abort must not end the run)."""
    from xlstm_hf.kernels import mlstm_chunkwise

    fn = sequence_variants(args)[name]
    B, NH, DQK, DV = args.batch, args.heads, args.dqk, args.dv
    rows = []
    for S in args.lengths:
        inputs = gate_inputs(B, NH, S, DQK, DV, torch.bfloat16, requires_grad=not args.no_backward)
        with torch.no_grad():
            out = fn(*inputs)
        row = dict(kind="sequence", name=name, S=S, fw_ms=bench(lambda: fn(*inputs)))
        if S == min(args.lengths):  # accuracy against the float64 reference, one head
            with torch.no_grad():
                ref, _ = mlstm_chunkwise(*(x[:, :1].double() for x in inputs), chunk_size=64)
            row["rel_err_vs_fp64"] = ((out[:, :1].double() - ref).abs().max() / ref.abs().max()).item()
        if not args.no_backward:
            grad = torch.randn_like(out)
            row["fwbw_ms"] = bench(lambda: fn(*inputs).backward(grad), grad_to_none=inputs)
        rows.append(row)
    return rows


SDPA = "SDPA flash, Llama-2 layer"


def time_sdpa(args) -> list[dict]:
    """A Llama-2-7B attention layer: 32 heads of 128, causal, the flash kernel."""
    rows = []
    for S in args.lengths:
        q, k, v = (torch.randn(args.batch, 32, S, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        sdpa = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            row = dict(kind="sequence", name=SDPA, S=S, fw_ms=bench(sdpa))
            if not args.no_backward:
                grad = torch.randn_like(q)
                row["fwbw_ms"] = bench(lambda: sdpa().backward(grad), grad_to_none=[q, k, v])
        rows.append(row)
    return rows


def time_sequence(args, argv) -> list[dict]:
    rows = []
    for name in sequence_variants(args):
        if skipped(args, name):
            continue
        run = subprocess.run([sys.executable, __file__, *argv, "--only", name], capture_output=True, text=True)
        if run.returncode:
            print(f"{name}: failed (exit {run.returncode}): {run.stderr.strip().splitlines()[-1:]}", flush=True)
            rows += [dict(kind="sequence", name=name, S=S, failed=run.stderr.strip().splitlines()[-1:])
                     for S in args.lengths]
            continue
        for line in run.stdout.splitlines():
            rows.append(json.loads(line))
            print(line, flush=True)
    rows += [] if skipped(args, SDPA) else time_sdpa(args)
    return rows


def skipped(args, name: str) -> bool:
    return any(text in name for text in args.skip)


def profile_ours(args) -> None:
    from torch.profiler import ProfilerActivity, profile

    from xlstm_hf.kernels.mlstm_triton import mlstm_chunkwise_triton

    L = args.chunk_sizes[0]
    for S in args.lengths:
        inputs = gate_inputs(args.batch, args.heads, S, args.dqk, args.dv, torch.bfloat16, requires_grad=True)
        grad = torch.randn(args.batch, args.heads, S, args.dv, device="cuda", dtype=torch.bfloat16)
        for name, step in (("fw", lambda: mlstm_chunkwise_triton(*inputs, chunk_size=L)[0]),
                           ("fw+bw", lambda: mlstm_chunkwise_triton(*inputs, chunk_size=L)[0].backward(grad))):
            wall = bench(step, grad_to_none=inputs)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
            events = prof.key_averages()
            gpu_ms = sum(e.self_device_time_total for e in events) / 3 / 1000
            # GPU busy time below the wall time: the host (Python, launches) sets the pace.
            print(f"profile {name}: S={S}, L={L}: wall {wall:.3f} ms, GPU kernels {gpu_ms:.3f} ms, "
                  f"{sum(e.count for e in events) // 3} kernels a call")
            print(events.table(sort_by="self_device_time_total", row_limit=12))


def time_step(args) -> list[dict]:
    from xlstm_hf.kernels import mlstm_recurrent_step
    from xlstm_hf.kernels.mlstm_triton import mlstm_step_triton

    rows = []
    NH, DQK, DV = args.heads, args.dqk, args.dv
    for B in args.step_batches:
        q, k, v, i, f = (x[:, :, 0].contiguous() for x in gate_inputs(B, NH, 1, DQK, DV, torch.bfloat16, False))
        state = [torch.zeros(B, NH, DQK, DV, device="cuda"), torch.zeros(B, NH, DQK, device="cuda"),
                 torch.zeros(B, NH, device="cuda")]
        variants = {
            "xlstm_hf step": lambda: mlstm_step_triton(q, k, v, i, f, state),
            "torch reference step": lambda: mlstm_recurrent_step(q, k, v, i, f, state),
        }
        try:
            from mlstm_kernels.torch.recurrent.triton_step import mlstm_recurrent_step__triton

            m1 = state[2][..., None].clone()
            variants["mlstm_kernels triton step"] = lambda: mlstm_recurrent_step__triton(
                q, k, v, i[..., None], f[..., None], state[0], state[1], m1)
        except Exception as error:  # noqa: BLE001
            print(f"mlstm_kernels step not usable here: {error!r}", file=sys.stderr)
        from triton.testing import do_bench_cudagraph

        for name, fn in variants.items():
            if skipped(args, name):
                continue
            # Replayed from a CUDA graph, as the decode loop runs it: the GPU's time, not Python's launch overhead.
            row = dict(kind="step", name=name, B=B, us=1000 * do_bench_cudagraph(fn, rep=100, return_mode="median"),
                       eager_us=1000 * bench(fn))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# A variant whose output differs from the reference by more than this (relative to its largest value) computes
# something else: it is reported as wrong, never timed.
WRONG = 1e-2


# Recurrence tilings (forward and backward state kernels) both sweeps try. At B 1 and 2K a prefill walks only 16
# chunks, so more, smaller state tiles might hide its latency.
STATE_TILINGS = [dict(state_stages=2), dict(state_warps=4), dict(state_bk=64, state_bv=64),
                 dict(state_bk=32, state_bv=128), dict(state_bk=32, state_bv=64, state_warps=4),
                 dict(state_bk=128, state_bv=128)]


def sweep(args) -> None:
    """Forward tilings (state kernels, then output kernel), then gradient tilings, at every length and chunk size.
    Each tiling's output is checked against the default's: one that computes something else is reported as wrong,
    never as fast (on an H200 with Triton 3.6, out_bt=128 with out_bv=256 was)."""
    from xlstm_hf.kernels.mlstm_triton import TILING, mlstm_chunkwise_triton

    fields = [
        ("state", [dict(), *STATE_TILINGS, dict(bw_state_stages=3)]),
        ("out", [dict(out_bv=256), dict(out_bt=128, out_bv=128), dict(out_bt=128, out_bv=256),
                 dict(out_bv=128, out_warps=4), dict(out_stages=2)]),
        ("grad", [dict(grad_bt=128, grad_warps=8), dict(grad_bt=64, grad_bk=64, grad_bv=128, grad_warps=8)]),
    ]
    for S in args.lengths:
        inputs = gate_inputs(args.batch, args.heads, S, args.dqk, args.dv, torch.bfloat16, requires_grad=True)
        grad = torch.randn(args.batch, args.heads, S, args.dv, device="cuda", dtype=torch.bfloat16)
        for L in args.chunk_sizes:
            with torch.no_grad():
                reference = mlstm_chunkwise_triton(*inputs, chunk_size=L)[0]
            for part, options in fields:
                for option in options:
                    tiling = dataclasses.replace(TILING, **option)
                    fn = lambda: mlstm_chunkwise_triton(*inputs, chunk_size=L, tiling=tiling)[0]  # noqa: E731
                    row = dict(S=S, L=L, part=part, **option)
                    try:
                        with torch.no_grad():
                            diff = results.relative_difference(fn(), reference)
                        row["rel_diff_to_default"] = float(f"{diff:.2e}")
                        if diff > WRONG:
                            row["error"] = "wrong output"
                        else:
                            row["fw_ms"] = round(bench(fn), 4)
                            if part != "out" and not args.no_backward:
                                row["fwbw_ms"] = round(bench(lambda: fn().backward(grad), grad_to_none=inputs), 4)
                    except Exception as error:  # noqa: BLE001  (a tiling that does not fit is a result too)
                        row["error"] = repr(error)[:120]
                    print(json.dumps(row), flush=True)


# Output-kernel tilings the prefill is also timed with: its 64 x 512 fp32 tile takes all 255 registers at 8 warps;
# out_bv=256 cannot hold a head's 512 v dims, so the head norm runs as a kernel of its own after it.
PREFILL_OUT_TILINGS = [dict(out_warps=16), dict(out_bt=32), dict(out_bt=32, out_warps=4), dict(out_stages=2),
                       dict(out_bv=256), dict(out_bk=32), dict(out_bk=32, out_warps=16)]


def layer_prefill(args) -> None:
    """The mLSTM layer's inference work in and around the cell at each S: `mlstm_prefill_triton` (the gates' soft cap
    in the gate preparation, the head norm and output gate in the output kernel's epilogue) against the same work as
    separate kernels (`soft_cap_gates`, the chunkwise forward, `head_norm_gate`). The inputs are views of one packed
    projection, as in the model. The fused prefill runs at each of `--chunk-sizes`, with the default tiling, each
    of the output tilings above and each of `STATE_TILINGS`. GPU time from CUDA-graph replays; eager time per call
    (the host's, where it sets the pace)."""
    from triton.testing import do_bench_cudagraph

    from xlstm_hf.kernels.elementwise_triton import head_norm_gate, soft_cap_gates
    from xlstm_hf.kernels.mlstm_triton import DEFAULT_CHUNK_SIZE, TILING, mlstm_chunkwise_triton, mlstm_prefill_triton

    B, NH, DQK, DV, cap = args.batch, args.heads, args.dqk, args.dv, 15.0
    for S in args.lengths:
        projection = torch.randn(B, S, NH * (2 * DQK + 2 * DV + 2), device="cuda", dtype=torch.bfloat16)
        q, k, v, o, i, f = projection.split([NH * DQK, NH * DQK, NH * DV, NH * DV, NH, NH], -1)
        q, k, v = (t.view(B, S, NH, -1).transpose(1, 2) for t in (q, k, v))
        weight = torch.randn(NH * DV, device="cuda", dtype=torch.bfloat16)

        def separate():
            i_capped, f_capped = soft_cap_gates(i, f, cap)
            h, _ = mlstm_chunkwise_triton(q, k, v, i_capped.transpose(1, 2), f_capped.transpose(1, 2))
            return head_norm_gate(h, o, weight, 1e-6)

        def fused(chunk_size, **option):
            tiling = dataclasses.replace(TILING, **option)
            return lambda: mlstm_prefill_triton(q, k, v, i.transpose(1, 2), f.transpose(1, 2), None, cap, None, o,
                                                weight, chunk_size=chunk_size, tiling=tiling)[0]

        variants = {("separate kernels", DEFAULT_CHUNK_SIZE): separate}
        for L in args.chunk_sizes:
            variants.update({(f"fused prefill {option}" if option else "fused prefill", L): fused(L, **option)
                             for option in [{}, *PREFILL_OUT_TILINGS, *STATE_TILINGS]})
        with torch.no_grad():
            reference = separate()
            for (name, L), fn in variants.items():
                row = dict(kind="prefill", name=name, B=B, S=S, L=L)
                try:
                    row["rel_diff"] = float(f"{results.relative_difference(fn(), reference):.2e}")
                except Exception as error:  # a tiling that does not build on this card (shared memory, registers)
                    row["error"] = f"{type(error).__name__}: {error}"[:200]
                    print(json.dumps(row), flush=True)
                    continue
                if row["rel_diff"] > WRONG:
                    row["error"] = "wrong output"
                else:
                    row.update(gpu_us=round(1000 * do_bench_cudagraph(fn, rep=100, return_mode="median"), 1),
                               eager_us=round(1000 * bench(fn), 1))
                print(json.dumps(row), flush=True)


def table(rows: list[dict]) -> str:
    lines = ["| kernel | S | fw ms | fw+bw ms | rel. error vs fp64 |", "|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] != "sequence":
            continue
        if "failed" in r:
            lines.append(f"| {r['name']} | {r['S']} | failed | failed | {r['failed']} |")
            continue
        err = f"{r['rel_err_vs_fp64']:.1e}" if "rel_err_vs_fp64" in r else ""
        lines.append(f"| {r['name']} | {r['S']} | {r['fw_ms']:.3f} | {r.get('fwbw_ms', float('nan')):.3f} | {err} |")
    lines += ["", "| step kernel | batch | µs per layer (CUDA graph) | µs eager |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['B']} | {r['us']:.1f} | {r['eager_us']:.1f} |" for r in rows if r["kind"] == "step"]
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/mlstm_cell.py needs a CUDA GPU")
    if args.only:
        for row in time_variant(args, args.only):
            print(json.dumps(row), flush=True)
        return
    if args.sweep or args.profile or args.prefill:
        (sweep if args.sweep else profile_ours if args.profile else layer_prefill)(args)
        return
    info = results.environment()
    print(json.dumps(info))
    rows = time_sequence(args, argv) + time_step(args)
    print(table(rows))
    results.write(args.out, info, args, rows)


if __name__ == "__main__":
    main()
