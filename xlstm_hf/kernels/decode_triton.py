"""Triton kernels for a decode step: linear layers over a few rows (one token each), for inference.

A decode step reads every weight once and does little else: its time is the weights' bytes over the memory
bandwidth, plus what each launch costs. :func:`skinny_linear` is a GEMV for up to `MAX_ROWS` rows that streams the
weight through the tensor cores in (BN, BK) tiles, every row of x in one tile. At the 7B's shapes it reaches more of
the bandwidth than cuBLAS does, in one launch (cuBLAS runs two of a layer's four GEMVs as split-K plus a reduction
kernel). Its epilogue takes the elementwise work that follows a projection:

* the bias, then `residual + y` (rounded as the two ops), or
* `gated`: `silu(y_gate) * y_z` from a weight of the gate rows then the z rows (the FFN's two up projections,
  packed or in the fused layout).

Prologues (the norms before a projection) are not fused: computing x in registers before the dot broke the
pipelining of the weight tiles, and such a GEMV took twice as long on an H200 as the norm kernel and the plain
GEMV together. The modules of `xlstm_hf.modeling_xlstm` are the reference (`tests/test_decode_triton.py`).
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .checks import check_shapes
from .elementwise_triton import _round, _rows, _sigmoid
from .mlstm_triton import _dot

MAX_ROWS = 64  # beyond this a GEMM library does better than a tile of rows per weight tile


@dataclasses.dataclass(frozen=True)
class SkinnyTiling:
    """Weight tile (bn rows of the output, bk of the input) and launch settings; `gated_*` for the two-tile gated
    form (`gated_bn_many_rows` for more than 16 rows). A launch of fewer than `few_programs` programs (a narrow
    output: about one per multiprocessor) gets `deep_stages` of pipelining to keep enough of the weight in flight;
    stages are capped so that their tiles fit in `shared_memory` bytes (an A100 has 163 KiB a block, Hopper 227).
    From sweeps at the 7B's shapes on an H200 (`benchmarks/decode_layer.py --sweep`, docs/benchmarks.md)."""

    bn: int = 32
    bk: int = 256
    gated_bn: int = 32
    gated_bn_many_rows: int = 64
    gated_bk: int = 128
    warps: int = 4
    stages: int = 3
    deep_stages: int = 5
    few_programs: int = 160
    shared_memory: int = 160 * 1024

    def launch(self, rows: int, n: int, gated: bool, itemsize: int) -> tuple[int, int, int, int]:
        """(BM, BN, BK, stages) for `rows` rows of x, `n` outputs and elements of `itemsize` bytes."""
        bm = max(16, triton.next_power_of_2(rows))
        bn = (self.gated_bn if bm <= 16 else self.gated_bn_many_rows) if gated else self.bn
        bk = self.gated_bk if gated else self.bk
        stages = self.stages if triton.cdiv(n, bn) >= self.few_programs else self.deep_stages
        per_stage = (bm + bn * (2 if gated else 1)) * bk * itemsize
        return bm, bn, bk, max(1, min(stages, self.shared_memory // per_stage))


SKINNY_TILING = SkinnyTiling()


@triton.jit
def _skinny_linear(
    X, W, BIAS, Y, RES, n_rows, n_out, n_in, s_xm, s_wn, s_ym, s_rm, z_offset,
    HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Y[:, cols] = epilogue(X @ W[cols].T + BIAS[cols]); EPILOGUE 0: none, 1: + RES, 2: silu(gate) * z with the z
    rows `z_offset` below the gate rows."""
    rows = tl.arange(0, BM)  # every row in one tile: each weight tile is read once
    cols = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok, col_ok = rows < n_rows, cols < n_out
    dtype = Y.dtype.element_ty
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc_z = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, n_in, BK):
        ks = k0 + tl.arange(0, BK)
        k_ok = ks < n_in
        x = tl.load(X + rows[:, None] * s_xm + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = col_ok[:, None] & k_ok[None, :]
        w = tl.load(W + cols[:, None] * s_wn + ks[None, :], mask=w_mask, other=0.0)
        acc += _dot(x, tl.trans(w), IEEE)
        if EPILOGUE == 2:
            w_z = tl.load(W + (cols[:, None] + z_offset) * s_wn + ks[None, :], mask=w_mask, other=0.0)
            acc_z += _dot(x, tl.trans(w_z), IEEE)
    if HAS_BIAS:
        acc += tl.load(BIAS + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if EPILOGUE == 2:
            acc_z += tl.load(BIAS + z_offset + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    y = _round(acc, dtype)
    out_mask = row_ok[:, None] & col_ok[None, :]
    if EPILOGUE == 1:
        residual = tl.load(RES + rows[:, None] * s_rm + cols[None, :], mask=out_mask, other=0.0)
        y = _round(y + residual.to(tl.float32), dtype)
    if EPILOGUE == 2:
        y = _round(_round(y * _sigmoid(y), dtype) * _round(acc_z, dtype), dtype)
    tl.store(Y + rows[:, None] * s_ym + cols[None, :], y.to(dtype), mask=out_mask)


def skinny_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    residual: torch.Tensor | None = None,
    gated: bool = False,
    tiling: SkinnyTiling | None = None,
) -> torch.Tensor:
    """`x @ weight.T + bias` for x (..., K) of at most `MAX_ROWS` rows and weight (N, K) in x's dtype; then
    `residual` (..., N) added, or (`gated`: weight and bias of 2N rows, gate then z) `silu(gate) * z`. Returns
    (..., N) in x's dtype. Rows may be strided; the last dims must be unit-stride."""
    tiling = tiling or SKINNY_TILING
    rows = _rows(x)
    M, K = rows.shape
    N = weight.shape[0] // 2 if gated else weight.shape[0]
    if M > MAX_ROWS:
        raise ValueError(f"skinny_linear takes at most {MAX_ROWS} rows, got {M}")
    if weight.shape[1] != K or weight.stride(1) != 1 or weight.dtype != x.dtype:
        raise ValueError(f"weight must be ({'2N' if gated else 'N'}, {K}) in {x.dtype} with unit-stride rows, got "
                         f"{tuple(weight.shape)} in {weight.dtype}")
    if residual is not None and gated:
        raise ValueError("skinny_linear adds a residual or gates, not both")
    if gated and weight.shape[0] % 2:
        raise ValueError(f"gated: weight must have 2N rows (gate, then z), got {weight.shape[0]}")
    if bias is not None:
        check_shapes("skinny_linear", x.device, bias=(bias, (weight.shape[0],)))
        bias = bias.contiguous()
    if residual is not None:
        check_shapes("skinny_linear", x.device, residual=(residual, (*x.shape[:-1], N)))
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    bm, bn, bk, stages = tiling.launch(M, N, gated, x.element_size())
    res = _rows(residual) if residual is not None else y
    _skinny_linear[(triton.cdiv(N, bn),)](
        rows, weight, bias if bias is not None else y, y, res, M, N, K, rows.stride(0), weight.stride(0), y.stride(0),
        res.stride(0), N, HAS_BIAS=bias is not None, EPILOGUE=2 if gated else int(residual is not None), BM=bm, BN=bn,
        BK=bk, IEEE=x.dtype == torch.float32, num_warps=tiling.warps, num_stages=stages,
    )
    return y.view(*x.shape[:-1], N)
