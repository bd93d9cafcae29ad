"""Decode-step benchmark of one 7B layer (bf16): the decode GEMV (`xlstm_hf.kernels.decode_triton.skinny_linear`)
against cuBLAS plus the elementwise kernel its epilogue replaces, per projection, and the whole layer step on the
decode kernels against the general fused path. Times are from CUDA-graph replays (`do_bench_cudagraph`, how the
decode loop runs), each call on one of several weight copies so that no weight is served from L2. Needs a CUDA GPU.

    python benchmarks/decode_layer.py --help
    python benchmarks/decode_layer.py --out results/decode_layer.json
    python benchmarks/decode_layer.py --sweep        # tilings of the decode GEMV at each projection, then stop
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json

import results
import torch
import torch.nn.functional as F

from xlstm_hf.arguments import positive_int

COPIES = 4  # weight copies per timed call: 4 x the smallest projection (32 MiB) is more than an H200's L2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[1, 32])
    parser.add_argument("--layers", type=positive_int, default=4,
                        help="layers of the layer-step timing (per-layer mean)")
    parser.add_argument("--sweep", action="store_true", help="time tilings of the decode GEMV, then stop")
    parser.add_argument("--out", type=results.file_to_write, help="write the results as JSON here")
    return parser.parse_args(argv)


def per_call_us(calls) -> float:
    """Median µs of one of `calls` (a list of COPIES closures), replayed from a CUDA graph."""
    from triton.testing import do_bench_cudagraph

    timed = do_bench_cudagraph(lambda: [call() for call in calls], rep=100, return_mode="median")
    return timed / len(calls) * 1000


def projections(batch: int):
    """(name, weight bytes, cuBLAS + elementwise closures, decode GEMV closures taking a tiling) for each
    projection of a layer step."""
    from xlstm_hf.kernels.decode_triton import skinny_linear
    from xlstm_hf.kernels.elementwise_triton import silu_mul

    shapes = results.seven_b_gemms()
    (packed, hidden), ffn = shapes["projections"], shapes["down"][1]
    rand = lambda *shape: torch.randn(*shape, device="cuda", dtype=torch.bfloat16)  # noqa: E731
    weights = lambda n, k: [rand(n, k) * k**-0.5 for _ in range(COPIES)]  # noqa: E731
    x, h, x_ffn, residual = rand(batch, hidden), rand(batch, hidden), rand(batch, ffn), rand(batch, hidden)
    proj, out = weights(packed, hidden), weights(hidden, hidden)
    up, down = weights(2 * ffn, hidden), weights(hidden, ffn)
    bias = rand(packed)
    return [
        ("q k v o i f", proj[0].nbytes, [lambda w=w: F.linear(x, w, bias) for w in proj],
         lambda t: [lambda w=w: skinny_linear(x, w, bias, tiling=t) for w in proj]),
        ("out + residual", out[0].nbytes, [lambda w=w: residual + F.linear(h, w) for w in out],
         lambda t: [lambda w=w: skinny_linear(h, w, residual=residual, tiling=t) for w in out]),
        ("up, silu gating", up[0].nbytes, [lambda w=w: silu_mul(*F.linear(x, w).split(ffn, -1)) for w in up],
         lambda t: [lambda w=w: skinny_linear(x, w, gated=True, tiling=t) for w in up]),
        ("down + residual", down[0].nbytes, [lambda w=w: residual + F.linear(x_ffn, w) for w in down],
         lambda t: [lambda w=w: skinny_linear(x_ffn, w, residual=residual, tiling=t) for w in down]),
    ]


def time_projections(batch: int) -> list[dict]:
    rows = []
    for name, nbytes, cublas, ours in projections(batch):
        for system, calls in (("cuBLAS + elementwise", cublas), ("decode GEMV", ours(None))):
            us = per_call_us(calls)
            rows.append(dict(part="projection", batch=batch, name=name, system=system, us=us, tb_s=nbytes / us / 1e6))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def time_layer_step(batch: int, layers: int) -> list[dict]:
    """Mean µs per layer of `layers` 7B blocks stepping one token, on the decode kernels and on the general fused
    path (cuBLAS projections, the elementwise kernels)."""
    from xlstm_hf import XLSTMConfig, XLSTMForCausalLM
    from xlstm_hf.modeling_xlstm import XLSTMBlock

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = XLSTMForCausalLM(XLSTMConfig(num_hidden_layers=layers)).to(torch.bfloat16).eval()
    cache = model.backbone.new_cache(batch)
    x = torch.randn(batch, 1, model.config.hidden_size, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(batch, 1, dtype=torch.bool, device="cuda")

    def step():
        y = x
        for block, layer in zip(model.backbone.blocks, cache.layers):
            y, _ = block(y, layer.state, mask)

    rows = []
    fused_step = XLSTMBlock.fused_step
    with torch.no_grad():
        for system in ("decode kernels", "general fused path"):
            XLSTMBlock.fused_step = fused_step if system == "decode kernels" else lambda *args: None
            try:
                us = per_call_us([step]) / layers
            finally:
                XLSTMBlock.fused_step = fused_step
            rows.append(dict(part="layer step", batch=batch, system=system, us=us))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def sweep(batches: list[int]) -> None:
    """Tilings of the decode GEMV per projection, each checked against cuBLAS's result before it is timed."""
    from xlstm_hf.kernels.decode_triton import SKINNY_TILING

    tilings = [dataclasses.replace(SKINNY_TILING, bn=bn, bk=bk, gated_bn=bn, gated_bn_many_rows=bn, gated_bk=bk,
                                   stages=stages, deep_stages=stages)
               for bn, bk, stages in itertools.product((16, 32, 64), (128, 256), (3, 4, 5))]
    for batch in batches:
        for name, nbytes, cublas, ours in projections(batch):
            timed = []
            for tiling in [SKINNY_TILING, *tilings]:
                try:
                    diff = results.relative_difference(ours(tiling)[0](), cublas[0]())
                    if diff > 2e-2:
                        print(f"  {tiling}: wrong output (relative difference {diff:.2e})")
                        continue
                    timed.append((per_call_us(ours(tiling)), tiling))
                except Exception as error:  # noqa: BLE001  (a tiling that needs more shared memory than there is)
                    print(f"  {tiling}: {str(error)[:80]}")
            default = next((us for us, t in timed if t is SKINNY_TILING), float("nan"))
            print(f"batch {batch}, {name}: cuBLAS + elementwise {per_call_us(cublas):.1f} µs, default "
                  f"{default:.1f} µs; fastest:")
            others = [pair for pair in timed if pair[1] is not SKINNY_TILING]
            for us, t in sorted(others, key=lambda pair: pair[0])[:4]:
                print(f"  {us:.1f} µs ({nbytes / us / 1e6:.2f} TB/s) bn {t.bn} bk {t.bk} stages {t.stages}")


def table(rows: list[dict]) -> str:
    out = ["| batch | projection | cuBLAS + elementwise µs | decode GEMV µs (TB/s) |", "|---|---|---|---|"]
    for first, second in zip(rows[::2], rows[1::2]):
        if first["part"] == "projection":
            out.append(f"| {first['batch']} | {first['name']} | {first['us']:.1f} | {second['us']:.1f} "
                       f"({second['tb_s']:.2f}) |")
    out += ["", "| batch | layer step µs, decode kernels | general fused path |", "|---|---|---|"]
    out += [f"| {a['batch']} | {a['us']:.1f} | {b['us']:.1f} |" for a, b in zip(rows[::2], rows[1::2])
            if a["part"] == "layer step"]
    return "\n".join(out)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/decode_layer.py needs a CUDA GPU")
    if args.sweep:
        sweep(args.batches)
        return
    info = results.environment()
    print(json.dumps(info), flush=True)
    rows = [row for batch in args.batches for row in time_projections(batch)]
    rows += [row for batch in args.batches for row in time_layer_step(batch, args.layers)]
    print(table(rows))
    results.write(args.out, info, args, rows)


if __name__ == "__main__":
    main()
