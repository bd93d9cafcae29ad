"""Fused Triton kernels for the elementwise work around the mLSTM cell, for inference (no autograd).

Each kernel does in one pass what the model's PyTorch modules do in several, with the same arithmetic: statistics
in float32, and every intermediate rounded to the activation dtype where the modules round it, so the results match
them to the last bit in most positions. Prefill moves a fraction of the memory traffic, and a decode step launches
a fraction of the kernels. The PyTorch modules in `xlstm_hf.modeling_xlstm` are the reference
(`tests/test_elementwise_triton.py` compares them).

* :func:`rms_norm`: RMSNorm with a weight, optionally after the residual add (`x + residual`, also returned).
* :func:`head_norm_gate`: `sigmoid(o) * (MultiHeadLayerNorm(h) * weight)`, reading h as the cell leaves it.
* :func:`silu_mul`: `silu(gate) * z`, the FFN's gating.
* :func:`soft_cap_gates`: the soft-capped input and forget gates, with padded positions set to (-inf, +inf);
  :func:`step_gates` the same for one decode step, with the snapshot of n and m that the step kernel reads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .checks import check_shapes, padding_mask


@triton.jit
def _round(x, dtype: tl.constexpr):
    """Round a float32 value to the activation dtype and back, as a PyTorch op in that dtype stores it."""
    return x.to(dtype).to(tl.float32)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # 1 - 2 / (exp(2x) + 1): exact limits at +-inf, no cancellation for large |x|
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _rms_norm(X, RES, W, OUT, SUM, s_x, s_r, s_o, s_s, d, eps, HAS_RESIDUAL: tl.constexpr, BD: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BD)
    mask = cols < d
    dtype = OUT.dtype.element_ty
    x = tl.load(X + row * s_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x = _round(x + tl.load(RES + row * s_r + cols, mask=mask, other=0.0).to(tl.float32), dtype)
        tl.store(SUM + row * s_s + cols, x.to(dtype), mask=mask)
    normed = _round(x * tl.rsqrt(tl.sum(x * x, axis=0) / d + eps), dtype)
    weight = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + row * s_o + cols, (normed * weight).to(dtype), mask=mask)


@triton.jit
def _head_norm(h, weight, cols_ok, dv, eps, dtype: tl.constexpr):
    """`LayerNorm(h) * weight` over the columns of a (rows, BD) fp32 tile, of which `cols_ok` marks the `dv` real ones
    (h 0 elsewhere), each op rounded to `dtype` as the modules' ops are. `_output_gate` follows; a caller loads o
    only then, which keeps a wide tile's registers free until the end."""
    mean = tl.sum(h, axis=1) / dv
    centred = tl.where(cols_ok[None, :], h - mean[:, None], 0.0)
    var = tl.sum(centred * centred, axis=1) / dv
    normed = _round(centred * tl.rsqrt(var + eps)[:, None], dtype)
    return _round(normed * weight[None, :], dtype)


@triton.jit
def _output_gate(normed, o, dtype: tl.constexpr):
    """`sigmoid(o) * normed`, the sigmoid rounded to `dtype` as the module's op stores it."""
    return _round(_sigmoid(o), dtype) * normed


@triton.jit
def _head_norm_gate(H, O, W, OUT, s_hb, s_hh, s_hs, s_ob, s_os, s_outb, s_outs, length, dv, eps,
                    BD: tl.constexpr):
    """One program per (batch * position, head): h[b, head, s, :] normalised, weighted and gated."""
    pid, head = tl.program_id(0), tl.program_id(1)
    b, s = pid // length, pid % length
    cols = tl.arange(0, BD)
    mask = cols < dv
    h = tl.load(H + b * s_hb + head * s_hh + s * s_hs + cols, mask=mask, other=0.0).to(tl.float32)
    weight = tl.load(W + head * dv + cols, mask=mask, other=0.0).to(tl.float32)
    o = tl.load(O + b * s_ob + s * s_os + head * dv + cols, mask=mask, other=0.0).to(tl.float32)
    dtype = OUT.dtype.element_ty
    out = _output_gate(_head_norm(h[None, :], weight, mask, dv, eps, dtype), o[None, :], dtype)
    tl.store(OUT + b * s_outb + s * s_outs + head * dv + cols[None, :], out.to(OUT.dtype.element_ty),
             mask=mask[None, :])


@triton.jit
def _silu_mul(G, Z, OUT, s_g, s_z, s_o, d, BD: tl.constexpr):
    row, block = tl.program_id(0), tl.program_id(1)
    cols = block * BD + tl.arange(0, BD)
    mask = cols < d
    dtype = OUT.dtype.element_ty
    g = tl.load(G + row * s_g + cols, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(Z + row * s_z + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + row * s_o + cols, (_round(g * _sigmoid(g), dtype) * z).to(dtype), mask=mask)


@triton.jit
def _capped_gates(i, f, cap, keep, dtype: tl.constexpr, HAS_MASK: tl.constexpr, HAS_CAP: tl.constexpr = True):
    """Soft-capped i and f (with HAS_CAP) as `soft_cap(x, cap) = cap * tanh(x / cap)` in the activation dtype (a
    rounding after each of the three ops); where `keep` is False (padding), i = -inf and f = +inf."""
    if HAS_CAP:
        i = _round(cap * _round(_tanh(_round(i / cap, dtype)), dtype), dtype)
        f = _round(cap * _round(_tanh(_round(f / cap, dtype)), dtype), dtype)
    if HAS_MASK:
        i = tl.where(keep, i, float("-inf"))
        f = tl.where(keep, f, float("inf"))
    return i, f


@triton.jit
def _soft_cap_gates(I, F, MASK, I_OUT, F_OUT, s_i, s_f, n, heads, cap, HAS_MASK: tl.constexpr, BN: tl.constexpr):
    """Rows of (batch * position), `heads` gates each; i and f rows may be strided (views of one projection)."""
    offs = tl.program_id(0) * BN + tl.arange(0, BN)
    inside = offs < n
    row, head = offs // heads, offs % heads
    i = tl.load(I + row * s_i + head, mask=inside, other=0.0).to(tl.float32)
    f = tl.load(F + row * s_f + head, mask=inside, other=0.0).to(tl.float32)
    keep = inside
    if HAS_MASK:
        keep = tl.load(MASK + row, mask=inside, other=1) != 0
    i, f = _capped_gates(i, f, cap, keep, I_OUT.dtype.element_ty, HAS_MASK)
    tl.store(I_OUT + offs, i.to(I_OUT.dtype.element_ty), mask=inside)
    tl.store(F_OUT + offs, f.to(F_OUT.dtype.element_ty), mask=inside)


@triton.jit
def _step_gates(I, F, MASK, N, M, I_OUT, F_OUT, N_OLD, M_OLD, s_i, s_f, heads, dqk, cap, HAS_MASK: tl.constexpr,
                BK: tl.constexpr):
    """One program per (batch, head): its capped gates, and a copy of its n and m."""
    pid = tl.program_id(0)
    row, head = pid // heads, pid % heads
    i = tl.load(I + row * s_i + head).to(tl.float32)
    f = tl.load(F + row * s_f + head).to(tl.float32)
    keep = True
    if HAS_MASK:
        keep = tl.load(MASK + row) != 0
    i, f = _capped_gates(i, f, cap, keep, I_OUT.dtype.element_ty, HAS_MASK)
    tl.store(I_OUT + pid, i.to(I_OUT.dtype.element_ty))
    tl.store(F_OUT + pid, f.to(F_OUT.dtype.element_ty))
    offs = tl.arange(0, BK)
    tl.store(N_OLD + pid * dqk + offs, tl.load(N + pid * dqk + offs, mask=offs < dqk), mask=offs < dqk)
    tl.store(M_OLD + pid, tl.load(M + pid))


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as (rows, last dim) with a unit stride on the last dim, copying only when it has to."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()


def _mask_bytes(mask: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """A padding mask from `checks.padding_mask` as bytes, one per position; `placeholder` stands in for the pointer
    when there is no mask."""
    return mask.reshape(-1).view(torch.uint8) if mask is not None else placeholder


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm(x + residual) * weight, and x + residual (x itself when no residual is given)."""
    d = x.shape[-1]
    rows_x = _rows(x)
    out = torch.empty(rows_x.shape, device=x.device, dtype=x.dtype)
    total = torch.empty_like(out) if residual is not None else rows_x
    rows_r = _rows(residual) if residual is not None else rows_x
    _rms_norm[(rows_x.shape[0],)](rows_x, rows_r, weight.contiguous(), out, total, rows_x.stride(0), rows_r.stride(0),
                                  out.stride(0), total.stride(0), d, eps, HAS_RESIDUAL=residual is not None,
                                  BD=triton.next_power_of_2(d), num_warps=8 if d >= 4096 else 4)
    return out.view(x.shape), total.view(x.shape) if residual is not None else x


def head_norm_gate(h: torch.Tensor, o: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`sigmoid(o) * (MultiHeadLayerNorm(h) * weight)`: h (B, NH, S, DV) from the cell, o (B, S, NH * DV);
    returns (B, S, NH * DV)."""
    B, NH, S, DV = h.shape
    if h.stride(-1) != 1:
        h = h.contiguous()
    if o.stride(-1) != 1:
        o = o.contiguous()
    out = torch.empty(B, S, NH * DV, device=h.device, dtype=o.dtype)
    _head_norm_gate[(B * S, NH)](h, o, weight.contiguous(), out, h.stride(0), h.stride(1), h.stride(2), o.stride(0),
                                 o.stride(1), out.stride(0), out.stride(1), S, DV, eps,
                                 BD=triton.next_power_of_2(DV), num_warps=4)
    return out


def silu_mul(gate: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """silu(gate) * z, rows of the last dim (either may be a strided view of a fused projection)."""
    d = gate.shape[-1]
    rows_g, rows_z = _rows(gate), _rows(z)
    out = torch.empty(rows_g.shape, device=gate.device, dtype=gate.dtype)
    block = min(2048, triton.next_power_of_2(d))
    _silu_mul[(rows_g.shape[0], triton.cdiv(d, block))](rows_g, rows_z, out, rows_g.stride(0), rows_z.stride(0),
                                                         out.stride(0), d, BD=block, num_warps=4)
    return out.view(gate.shape)


def soft_cap_gates(i: torch.Tensor, f: torch.Tensor, cap: float,
                   mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-capped gate pre-activations (B, S, NH); where `mask` (B, S) is False, i = -inf and f = +inf (the
    position leaves the state untouched)."""
    B, S, NH = i.shape
    check_shapes("soft_cap_gates", i.device, f=(f, i.shape))
    mask = padding_mask("soft_cap_gates", mask, B, S, i.device)
    rows_i, rows_f = _rows(i), _rows(f)
    i_out, f_out = torch.empty(B, S, NH, device=i.device, dtype=i.dtype), torch.empty(B, S, NH, device=i.device,
                                                                                       dtype=i.dtype)
    n = B * S * NH
    if not n:
        return i_out, f_out
    block = min(1024, triton.next_power_of_2(n))
    _soft_cap_gates[(triton.cdiv(n, block),)](rows_i, rows_f, _mask_bytes(mask, i_out), i_out, f_out, rows_i.stride(0),
                                              rows_f.stride(0), n, NH, cap, HAS_MASK=mask is not None, BN=block,
                                              num_warps=4)
    return i_out, f_out


def step_gates(i: torch.Tensor, f: torch.Tensor, cap: float, mask: torch.Tensor | None, n: torch.Tensor,
               m: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """:func:`soft_cap_gates` for one decode step, i and f (B, NH), `mask` (B, 1) or None; with a copy of the state's
    n (B, NH, DQK) and m (B, NH), contiguous, in the same launch: the snapshot `mlstm_step_triton` reads. Returns
    (i, f, n copy, m copy)."""
    B, NH = i.shape
    dqk = n.shape[-1]
    check_shapes("step_gates", i.device, f=(f, i.shape), n=(n, (B, NH, dqk)), m=(m, (B, NH)))
    if not (n.is_contiguous() and m.is_contiguous()):
        raise ValueError("step_gates: the state's n and m must be contiguous")
    mask = padding_mask("step_gates", mask, B, 1, i.device)
    i, f = (x if x.stride(1) == 1 else x.contiguous() for x in (i, f))  # the kernel steps through heads by 1
    i_out, f_out = (torch.empty(B, NH, device=i.device, dtype=i.dtype) for _ in range(2))
    n_old, m_old = torch.empty_like(n), torch.empty_like(m)
    _step_gates[(B * NH,)](i, f, _mask_bytes(mask, i_out), n, m, i_out, f_out, n_old, m_old, i.stride(0), f.stride(0),
                           NH, dqk, cap, HAS_MASK=mask is not None, BK=triton.next_power_of_2(dqk), num_warps=1)
    return i_out, f_out, n_old, m_old
