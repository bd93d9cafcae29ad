"""sLSTM kernel benchmark: the whole-sequence recurrence of one sLSTM layer, forward and forward+backward, side by side.

Our fused Triton kernel and our PyTorch reference against the `xlstm` package's sLSTM cell on its CUDA kernel
(compiled at first use with the CUDA toolkit; reported as failed when that does not build) and on its vanilla PyTorch
backend, on the same weights and inputs; each row also gives the largest difference of h from the package's vanilla
backend in float64. Forward+backward differentiates the sum of h with respect to the gate inputs and the recurrent
weights (and, for the package's cells, their bias). Median times from `triton.testing.do_bench` on a CUDA GPU;
`--tiny` runs small sizes on the CPU instead (PyTorch variants only, wall-clock), to check the script.

    python benchmarks/slstm.py --help
    python benchmarks/slstm.py --batch 16 --heads 4 --head-dim 64 --lengths 256 1024 4096 --out results/slstm.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable

import results
import torch

from xlstm_hf.arguments import positive_int

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


# Sizes of a run on the GPU, and of --tiny's on the CPU: the latter only for the options left out.
SIZES = dict(lengths=[256, 1024, 4096], batch=16, heads=4, head_dim=64)
TINY_SIZES = dict(lengths=[8], batch=2, heads=2, head_dim=8)
VARIANTS = ["xlstm_hf_triton", "xlstm_hf_torch", "xlstm_cuda", "xlstm_vanilla"]
CPU_VARIANTS = ["xlstm_hf_torch", "xlstm_vanilla"]


def parse_args(argv=None) -> argparse.Namespace:
    """The options; a size left out takes --tiny's value or the GPU run's, and --tiny refuses variants that all need
    CUDA (they would give no row at all)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in SIZES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=positive_int, nargs="+" if name == "lengths" else None,
                            help=f"default: {value}; with --tiny, {TINY_SIZES[name]}")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--tiny", action="store_true",
                        help=f"small sizes on the CPU, PyTorch variants only ({', '.join(CPU_VARIANTS)})")
    parser.add_argument("--out", type=results.file_to_write, help="write the results as JSON here")
    args = parser.parse_args(argv)
    for name, value in (TINY_SIZES if args.tiny else SIZES).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.tiny and not set(args.variants) & set(CPU_VARIANTS):
        parser.error(f"--variants {' '.join(args.variants)}: none runs on the CPU of --tiny "
                     f"(those that do: {', '.join(CPU_VARIANTS)})")
    return args


def package_cell(backend: str, B: int, NH: int, DH: int, dtype: str, R: torch.Tensor, bias: torch.Tensor, device):
    """The xlstm package's sLSTM cell with our weights: R (NH, DH, 4, DH) is its external kernel layout, our bias
    (4, NH, DH) its (NH, 4, DH) transposed. The vanilla backend computes in the weights' dtype, so it gets `dtype`;
    the CUDA backend keeps float32 weights and casts inside."""
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

    config = sLSTMCellConfig(hidden_size=NH * DH, num_heads=NH, backend=backend, batch_size=B, dtype=dtype,
                             function="slstm")
    cell = sLSTMCell(config).to(device)
    cell.recurrent_kernel[:] = R.to(device)
    cell.bias[:] = bias.transpose(0, 1).to(device)
    return cell if backend == "cuda" else cell.to(DTYPES[dtype])  # training mode: its CUDA backward needs it


def variants(args, R, bias, device, dtype
             ) -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], list] | Exception]:
    """name -> (function of the raw gate inputs x (B, S, 4 * H), gate-major, returning h (B, S, NH, DH); the tensors
    its backward computes gradients of), or the error that building it raised."""
    from xlstm_hf.kernels.slstm_torch import slstm_recurrent_sequence

    NH, DH = R.shape[0], R.shape[1]
    ours = lambda x: x.unflatten(-1, (4, NH, DH)) + bias.to(device, x.dtype)  # noqa: E731
    weights = R.to(device).requires_grad_()  # trained: the backward computes their gradient too
    fns = {"xlstm_hf_torch": (lambda x: slstm_recurrent_sequence(ours(x), weights)[0], [weights])}
    if device.type == "cuda":
        from xlstm_hf.kernels.slstm_triton import slstm_triton

        fns["xlstm_hf_triton"] = (lambda x: slstm_triton(ours(x), weights)[0], [weights])
    for backend in ("cuda", "vanilla"):
        if backend == "cuda" and device.type != "cuda":
            continue
        name = f"xlstm_{backend}"
        try:
            cell = package_cell(backend, args.batch, NH, DH, args.dtype, R, bias, device)
        except Exception as error:  # noqa: BLE001  (a failed build is a result, not a crash)
            fns[name] = error
            continue
        fns[name] = ((lambda cell: lambda x: cell(x)[0].transpose(1, 2))(cell),  # its (B, NH, S, DH) -> ours
                     list(cell.parameters()))
    return {name: fn for name, fn in fns.items() if name in args.variants}


def timed(fn: Callable[[], object], on_gpu: bool, grad_to_none: list | None = None) -> float:
    """Milliseconds of `fn()`: do_bench's median on a GPU (`grad_to_none`'s gradients dropped before each call, so no
    call pays for accumulating into the last one's), one call on the CPU."""
    if on_gpu:
        from triton.testing import do_bench

        return do_bench(fn, warmup=10, rep=50, grad_to_none=grad_to_none, return_mode="median")
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def run(args) -> list[dict]:
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = DTYPES[args.dtype]
    gen = torch.Generator().manual_seed(0)
    NH, DH = args.heads, args.head_dim
    R = torch.randn(NH, DH, 4, DH, generator=gen) / DH**0.5
    bias = torch.randn(4, NH, DH, generator=gen)
    rows = []
    for S in args.lengths:
        x = torch.randn(args.batch, S, 4 * NH * DH, generator=gen)
        with torch.no_grad():
            reference = package_cell("vanilla", args.batch, NH, DH, "float32", R, bias, "cpu").double()
            expected = reference(x.double())[0].transpose(1, 2)
            for name, variant in variants(args, R, bias, device, dtype).items():
                row = dict(name=name, B=args.batch, NH=NH, DH=DH, S=S, dtype=args.dtype)
                if isinstance(variant, Exception):
                    rows.append({**row, "failed": f"{type(variant).__name__}: {str(variant)[:200]}"})
                    continue
                fn, trained = variant
                inputs = x.to(device, dtype)
                h = fn(inputs)
                row["max_abs_err_vs_fp64"] = (h.double().cpu() - expected).abs().max().item()
                row["ms"] = timed(lambda: fn(inputs), device.type == "cuda")
                with torch.enable_grad():
                    leaf = inputs.clone().requires_grad_()
                    row["fwbw_ms"] = timed(lambda: fn(leaf).float().sum().backward(), device.type == "cuda",
                                           grad_to_none=[leaf, *trained])
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| kernel | B | heads x dim | S | fw ms | fw+bw ms | max abs err vs fp64 |", "|---" * 7 + "|"]
    for r in rows:
        shape = f"{r['NH']} x {r['DH']}"
        if "failed" in r:
            lines.append(f"| {r['name']} | {r['B']} | {shape} | {r['S']} | failed | | {r['failed']} |")
        else:
            lines.append(f"| {r['name']} | {r['B']} | {shape} | {r['S']} | {r['ms']:.3f} | {r['fwbw_ms']:.3f} | "
                         f"{r['max_abs_err_vs_fp64']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("benchmarks/slstm.py needs a CUDA GPU (or --tiny)")
    try:  # the float64 reference of every row
        importlib.import_module("xlstm.blocks.slstm.cell")
    except ImportError as error:
        raise SystemExit(f"benchmarks/slstm.py needs the xlstm package (pip install xlstm) for its float64 reference: "
                         f"{error}") from None
    info = results.environment()
    print(json.dumps(info))
    rows = run(args)
    print(table(rows))
    results.write(args.out, info, args, rows)


if __name__ == "__main__":
    main()
