"""Triton kernel for the sLSTM recurrence (forward): the whole sequence in one launch.

Written from the equations of :mod:`xlstm_hf.kernels.slstm_torch`, its specification (same layout and arguments).
One program per (head, block of batch rows): it loads the head's four recurrent matrices R[h, :, g, :] once, keeps
them and the state (h, c, n, m) on chip for the whole sequence, and per time step reads the gate inputs, adds
h_{t-1} R (four (rows x DH) @ (DH x DH) products), applies the stabilised exponential gating and writes h_t.
This holds for heads up to `RESIDENT_HEAD_DIM` wide (64 for fp32 models, 128 for bf16/fp16, whose matrices are then
kept in half precision as in the xlstm package's CUDA kernel). Wider heads (the paper's 125M-1.3B models: 192-512)
run a streamed variant, still one launch: the matrices are read from L2 in tiles every step, h_{t-1} is read back
from the output and c, n, m from the state buffers (keeping a wide head on chip would take several programs per
head and a grid-wide barrier per step). Plain pointer arithmetic only (no block pointers),
so the kernel builds on Triton 3.6 through 3.9. Forward only: training runs the PyTorch reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .slstm_torch import SLSTMState

# The widest head whose four recurrent matrices fit on chip (shared memory, sm_90): 4 x 64 x 64 in fp32 (fp32 models),
# 4 x 128 x 128 in half precision (bf16/fp16 models, as the xlstm package's CUDA kernel keeps them). Wider heads run
# the streamed kernel.
RESIDENT_HEAD_DIM = {torch.float32: 64, torch.float16: 128, torch.bfloat16: 128}


@triton.jit
def _recurrent_input(h, r, IEEE: tl.constexpr):
    """h_{t-1} @ R_g, accumulated in fp32: exact fp32 products for fp32 models, else in R's (half) dtype."""
    if IEEE:
        return tl.dot(h, r, input_precision="ieee")
    return tl.dot(h.to(r.dtype), r)


@triton.jit
def _cell_update(i, f, z, o, h, c, n, m, keep, HAS_MASK: tl.constexpr):
    """One step of the stabilised exponential gating from the gate pre-activations; rows where `keep` is False
    (padding) keep their state."""
    log_sigmoid_f = tl.minimum(f, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f)))
    # A fresh state (n = 0) has m = -inf: the forget gate is then exactly 0.
    log_f_plus_m = tl.where(n == 0.0, float("-inf"), log_sigmoid_f + m)
    m_new = tl.maximum(log_f_plus_m, i)
    i_act = tl.exp(i - m_new)
    f_act = tl.exp(log_f_plus_m - m_new)
    c_new = f_act * c + i_act * (2.0 * tl.sigmoid(2.0 * z) - 1.0)  # tanh(z)
    n_new = f_act * n + i_act
    h_new = tl.sigmoid(o) * c_new / n_new
    if HAS_MASK:
        keep = keep[:, None]
        h_new = tl.where(keep, h_new, h)
        c_new = tl.where(keep, c_new, c)
        n_new = tl.where(keep, n_new, n)
        m_new = tl.where(keep, m_new, m)
    return h_new, c_new, n_new, m_new


@triton.jit
def _slstm_forward(
    GX, R, H0, C0, N0, M0, MASK, OUT, HT, CT, NT, MT,
    B, S,
    NH: tl.constexpr, DH: tl.constexpr, BD: tl.constexpr, BB: tl.constexpr,
    HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
):
    head = tl.program_id(0)
    rows = tl.program_id(1) * BB + tl.arange(0, BB)
    cols = tl.arange(0, BD)
    row_ok, col_ok = rows < B, cols < DH
    tile_ok = row_ok[:, None] & col_ok[None, :]

    # The head's recurrent matrices R[head, d, g, e], one (DH x DH) tile per gate, loaded once for the whole sequence.
    r_offs = head * DH * 4 * DH + cols[:, None] * 4 * DH + cols[None, :]
    r_ok = col_ok[:, None] & col_ok[None, :]
    r_i = tl.load(R + r_offs + 0 * DH, mask=r_ok, other=0.0)
    r_f = tl.load(R + r_offs + 1 * DH, mask=r_ok, other=0.0)
    r_z = tl.load(R + r_offs + 2 * DH, mask=r_ok, other=0.0)
    r_o = tl.load(R + r_offs + 3 * DH, mask=r_ok, other=0.0)

    state_offs = rows[:, None] * NH * DH + head * DH + cols[None, :]
    h = tl.load(H0 + state_offs, mask=tile_ok, other=0.0)
    c = tl.load(C0 + state_offs, mask=tile_ok, other=0.0)
    n = tl.load(N0 + state_offs, mask=tile_ok, other=0.0)
    m = tl.load(M0 + state_offs, mask=tile_ok, other=0.0)

    gate_stride = NH * DH
    gx_offs = rows[:, None] * S * 4 * gate_stride + head * DH + cols[None, :]
    out_offs = rows[:, None] * S * gate_stride + head * DH + cols[None, :]
    for t in range(S):
        gx = GX + gx_offs + t * 4 * gate_stride
        i = tl.load(gx, mask=tile_ok, other=0.0).to(tl.float32) + _recurrent_input(h, r_i, IEEE)
        f = tl.load(gx + gate_stride, mask=tile_ok, other=0.0).to(tl.float32) + _recurrent_input(h, r_f, IEEE)
        z = tl.load(gx + 2 * gate_stride, mask=tile_ok, other=0.0).to(tl.float32) + _recurrent_input(h, r_z, IEEE)
        o = tl.load(gx + 3 * gate_stride, mask=tile_ok, other=0.0).to(tl.float32) + _recurrent_input(h, r_o, IEEE)
        keep = tl.load(MASK + rows * S + t, mask=row_ok, other=0) != 0 if HAS_MASK else None
        h, c, n, m = _cell_update(i, f, z, o, h, c, n, m, keep, HAS_MASK)
        tl.store(OUT + out_offs + t * gate_stride, h.to(OUT.dtype.element_ty), mask=tile_ok)

    tl.store(HT + state_offs, h, mask=tile_ok)
    tl.store(CT + state_offs, c, mask=tile_ok)
    tl.store(NT + state_offs, n, mask=tile_ok)
    tl.store(MT + state_offs, m, mask=tile_ok)


@triton.jit
def _slstm_forward_streamed(
    GX, R, H0, MASK, OUT, CT, NT, MT,
    B, S,
    NH: tl.constexpr, DH: tl.constexpr, BE: tl.constexpr, BB: tl.constexpr,
    HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
):
    """Heads too wide for the resident kernel: per step and block of BE units, h_{t-1} R is accumulated over blocks
    of the input units, R streamed from L2. h_{t-1} is read back from OUT (H0 at t = 0) and c, n, m live in
    CT, NT, MT (holding the initial state on entry), updated in place; a barrier ends every step."""
    head = tl.program_id(0)
    rows = tl.program_id(1) * BB + tl.arange(0, BB)
    row_ok = rows < B
    gate_stride = NH * DH
    for t in range(S):
        keep = tl.load(MASK + rows * S + t, mask=row_ok, other=0) != 0 if HAS_MASK else None
        for e0 in range(0, DH, BE):
            units = e0 + tl.arange(0, BE)
            tile_ok = row_ok[:, None] & (units < DH)[None, :]
            acc_i = tl.zeros((BB, BE), dtype=tl.float32)
            acc_f = tl.zeros((BB, BE), dtype=tl.float32)
            acc_z = tl.zeros((BB, BE), dtype=tl.float32)
            acc_o = tl.zeros((BB, BE), dtype=tl.float32)
            for d0 in range(0, DH, BE):
                inputs = d0 + tl.arange(0, BE)
                h_prev = _previous_h(H0, OUT, rows, inputs, row_ok, t, S, NH, DH, head)
                r_offs = head * DH * 4 * DH + inputs[:, None] * 4 * DH + units[None, :]
                r_ok = (inputs < DH)[:, None] & (units < DH)[None, :]
                acc_i += _recurrent_input(h_prev, tl.load(R + r_offs + 0 * DH, mask=r_ok, other=0.0), IEEE)
                acc_f += _recurrent_input(h_prev, tl.load(R + r_offs + 1 * DH, mask=r_ok, other=0.0), IEEE)
                acc_z += _recurrent_input(h_prev, tl.load(R + r_offs + 2 * DH, mask=r_ok, other=0.0), IEEE)
                acc_o += _recurrent_input(h_prev, tl.load(R + r_offs + 3 * DH, mask=r_ok, other=0.0), IEEE)
            gx = GX + rows[:, None] * S * 4 * gate_stride + t * 4 * gate_stride + head * DH + units[None, :]
            i = tl.load(gx, mask=tile_ok, other=0.0).to(tl.float32) + acc_i
            f = tl.load(gx + gate_stride, mask=tile_ok, other=0.0).to(tl.float32) + acc_f
            z = tl.load(gx + 2 * gate_stride, mask=tile_ok, other=0.0).to(tl.float32) + acc_z
            o = tl.load(gx + 3 * gate_stride, mask=tile_ok, other=0.0).to(tl.float32) + acc_o
            state_offs = rows[:, None] * gate_stride + head * DH + units[None, :]
            h = _previous_h(H0, OUT, rows, units, row_ok, t, S, NH, DH, head)
            c = tl.load(CT + state_offs, mask=tile_ok, other=0.0)
            n = tl.load(NT + state_offs, mask=tile_ok, other=0.0)
            m = tl.load(MT + state_offs, mask=tile_ok, other=0.0)
            h, c, n, m = _cell_update(i, f, z, o, h, c, n, m, keep, HAS_MASK)
            tl.store(CT + state_offs, c, mask=tile_ok)
            tl.store(NT + state_offs, n, mask=tile_ok)
            tl.store(MT + state_offs, m, mask=tile_ok)
            out = OUT + rows[:, None] * S * gate_stride + t * gate_stride + head * DH + units[None, :]
            tl.store(out, h.to(OUT.dtype.element_ty), mask=tile_ok)
        tl.debug_barrier()  # h_t complete before step t + 1 reads it


@triton.jit
def _previous_h(H0, OUT, rows, units, row_ok, t, S, NH: tl.constexpr, DH: tl.constexpr, head):
    """h_{t-1}[rows, units] in float32: the initial state at t = 0, else the output of step t - 1."""
    ok = row_ok[:, None] & (units < DH)[None, :]
    initial = tl.load(H0 + rows[:, None] * NH * DH + head * DH + units[None, :], mask=ok & (t == 0), other=0.0)
    previous = OUT + rows[:, None] * S * NH * DH + (t - 1) * NH * DH + head * DH + units[None, :]
    return initial + tl.load(previous, mask=ok & (t > 0), other=0.0).to(tl.float32)


def supported(dtype: torch.dtype) -> bool:
    """Whether the kernels run this dtype (float64 is the reference's)."""
    return dtype in RESIDENT_HEAD_DIM


def slstm_triton(
    gates_x: torch.Tensor,
    R: torch.Tensor,
    initial_state: SLSTMState | None = None,
    mask: torch.Tensor | None = None,
    resident: bool | None = None,
) -> tuple[torch.Tensor, SLSTMState]:
    """The sLSTM recurrence in one kernel launch; arguments and results as
    :func:`xlstm_hf.kernels.slstm_torch.slstm_recurrent_sequence` (float32 state; no autograd). `resident` picks
    the kernel (default: the resident one when the head fits on chip, see `RESIDENT_HEAD_DIM`)."""
    B, S, _, NH, DH = gates_x.shape
    if not supported(gates_x.dtype):
        raise ValueError(f"slstm_triton runs {sorted(map(str, RESIDENT_HEAD_DIM))}, got {gates_x.dtype}")
    if resident is None:
        resident = DH <= RESIDENT_HEAD_DIM[gates_x.dtype]
    gates_x = gates_x.contiguous()
    R = R.to(torch.float32 if gates_x.dtype == torch.float32 else gates_x.dtype).contiguous()
    if initial_state is None:
        initial_state = tuple(gates_x.new_zeros(B, NH, DH, dtype=torch.float32) for _ in range(4))
    initial_state = tuple(s.to(torch.float32).contiguous() for s in initial_state)
    out = gates_x.new_empty(B, S, NH, DH)
    mask_arg = mask.to(torch.int8).contiguous() if mask is not None else out  # unused without a mask
    block_b, ieee, has_mask = 16, gates_x.dtype == torch.float32, mask is not None
    if resident:
        final_state = tuple(torch.empty_like(s) for s in initial_state)
        block_d = max(16, triton.next_power_of_2(DH))
        _slstm_forward[(NH, triton.cdiv(B, block_b))](
            gates_x, R, *initial_state, mask_arg, out, *final_state, B, S,
            NH=NH, DH=DH, BD=block_d, BB=block_b, HAS_MASK=has_mask, IEEE=ieee, num_warps=4 if block_d <= 32 else 8,
        )
        return out, final_state
    h0, c, n, m = initial_state
    c, n, m = c.clone(), n.clone(), m.clone()  # updated in place
    block_e = max(16, min(64, triton.next_power_of_2(DH)))
    _slstm_forward_streamed[(NH, triton.cdiv(B, block_b))](
        gates_x, R, h0, mask_arg, out, c, n, m, B, S,
        NH=NH, DH=DH, BE=block_e, BB=block_b, HAS_MASK=has_mask, IEEE=ieee, num_warps=4,
    )
    h_last = out[:, -1].float() if S else h0.clone()
    return out, (h_last, c, n, m)


__all__ = ["RESIDENT_HEAD_DIM", "slstm_triton", "supported"]
