"""Triton kernels for the sLSTM recurrence, forward and backward: the whole sequence in one launch each.

Written from the equations of :mod:`xlstm_hf.kernels.slstm_torch`, its specification (same layout and arguments).
One program per (head, block of batch rows): it loads the head's four recurrent matrices R[h, :, g, :] once, keeps
them and the state (h, c, n, m) on chip for the whole sequence, and per time step reads the gate inputs, adds
h_{t-1} R (four (rows x DH) @ (DH x DH) products), applies the stabilised exponential gating and writes h_t.
This holds for heads up to `RESIDENT_HEAD_DIM` wide (64 for fp32 models, 128 for bf16/fp16, whose matrices are then
kept in half precision as in the xlstm package's CUDA kernel). Wider heads (the paper's 125M-1.3B models: 192-512)
run a streamed variant, still one launch: the matrices are read from L2 in tiles every step, h_{t-1} is read back
from the output and c, n, m from the state buffers (keeping a wide head on chip would take several programs per
head and a grid-wide barrier per step).

Under autograd the forward also keeps the state (c, n, m) after every step (12 bytes per token and unit, float32;
h is the output), and the backward is one launch of the reverse-time recurrence, laid out like the forward (R^T
resident, or streamed for wide heads): from the gate pre-activations, recomputed beforehand as gates_x + h_{t-1} R
in one batched product, it carries the gradients of (h, c, n, m) back to the initial state and writes the gates'
gradients; R's is then one contraction of h_{t-1} with them over batch and time. Plain pointer arithmetic only (no
block pointers), so the kernels build on Triton 3.6 through 3.9.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .checks import check_shapes, padding_mask
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
def _load4(P0, P1, P2, P3, offs, ok):
    """Four tiles at the same offsets from four bases (the gates i, f, z, o, or a state h, c, n, m), 0 where masked."""
    return (tl.load(P0 + offs, mask=ok, other=0.0), tl.load(P1 + offs, mask=ok, other=0.0),
            tl.load(P2 + offs, mask=ok, other=0.0), tl.load(P3 + offs, mask=ok, other=0.0))


@triton.jit
def _store4(P0, P1, P2, P3, offs, a, b, c, d, ok):
    """`_load4`'s inverse."""
    tl.store(P0 + offs, a, mask=ok)
    tl.store(P1 + offs, b, mask=ok)
    tl.store(P2 + offs, c, mask=ok)
    tl.store(P3 + offs, d, mask=ok)


@triton.jit
def _resident_layout(B, S, NH: tl.constexpr, DH: tl.constexpr, BD: tl.constexpr, BB: tl.constexpr):
    """A resident kernel's program: its head, block of batch rows and (BB, BD) tile, with the tile's offsets into a
    state (B, NH, DH), into the gates (B, S, 4, NH, DH) at t = 0 and into a sequence (B, S, NH, DH) at t = 0."""
    head = tl.program_id(0)
    rows = tl.program_id(1) * BB + tl.arange(0, BB)
    cols = tl.arange(0, BD)
    row_ok, col_ok = rows < B, cols < DH
    tile_ok = row_ok[:, None] & col_ok[None, :]
    units = head * DH + cols[None, :]
    state_offs = rows[:, None] * NH * DH + units
    gate_offs = rows[:, None] * S * 4 * NH * DH + units
    seq_offs = rows[:, None] * S * NH * DH + units
    return head, rows, cols, row_ok, col_ok, tile_ok, state_offs, gate_offs, seq_offs


@triton.jit
def _recurrent_tiles(R, head, cols, col_ok, DH: tl.constexpr, TRANSPOSE: tl.constexpr):
    """The head's four recurrent matrices R_g[d, e] = R[head, d, g, e] as (DH x DH) tiles, or their transposes."""
    rows_of, cols_of = (cols[None, :], cols[:, None]) if TRANSPOSE else (cols[:, None], cols[None, :])
    offs = head * DH * 4 * DH + rows_of * 4 * DH + cols_of
    return _load4(R, R + DH, R + 2 * DH, R + 3 * DH, offs, col_ok[:, None] & col_ok[None, :])


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
    GX, R, H0, C0, N0, M0, MASK, OUT, HT, CT, NT, MT, CS, NS, MS,
    B, S,
    NH: tl.constexpr, DH: tl.constexpr, BD: tl.constexpr, BB: tl.constexpr,
    HAS_MASK: tl.constexpr, SAVE: tl.constexpr, IEEE: tl.constexpr,
):
    head, rows, cols, row_ok, col_ok, tile_ok, state_offs, gx_offs, out_offs = _resident_layout(B, S, NH, DH, BD, BB)
    gate_stride = NH * DH
    # The head's recurrent matrices, one (DH x DH) tile per gate, loaded once for the whole sequence.
    r_i, r_f, r_z, r_o = _recurrent_tiles(R, head, cols, col_ok, DH, False)
    h, c, n, m = _load4(H0, C0, N0, M0, state_offs, tile_ok)
    for t in range(S):
        gx = GX + gx_offs + t * 4 * gate_stride
        i = tl.load(gx, mask=tile_ok, other=0.0).to(tl.float32) + _recurrent_input(h, r_i, IEEE)
        f = tl.load(gx + gate_stride, mask=tile_ok, other=0.0).to(tl.float32) + _recurrent_input(h, r_f, IEEE)
        z = tl.load(gx + 2 * gate_stride, mask=tile_ok, other=0.0).to(tl.float32) + _recurrent_input(h, r_z, IEEE)
        o = tl.load(gx + 3 * gate_stride, mask=tile_ok, other=0.0).to(tl.float32) + _recurrent_input(h, r_o, IEEE)
        keep = tl.load(MASK + rows * S + t, mask=row_ok, other=0) != 0 if HAS_MASK else None
        h, c, n, m = _cell_update(i, f, z, o, h, c, n, m, keep, HAS_MASK)
        tl.store(OUT + out_offs + t * gate_stride, h.to(OUT.dtype.element_ty), mask=tile_ok)
        if SAVE:
            _save_state(CS, NS, MS, out_offs + t * gate_stride, c, n, m, tile_ok)

    _store4(HT, CT, NT, MT, state_offs, h, c, n, m, tile_ok)


@triton.jit
def _slstm_forward_streamed(
    GX, R, H0, MASK, OUT, CT, NT, MT, CS, NS, MS,
    B, S,
    NH: tl.constexpr, DH: tl.constexpr, BE: tl.constexpr, BB: tl.constexpr,
    HAS_MASK: tl.constexpr, SAVE: tl.constexpr, IEEE: tl.constexpr,
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
            step_offs = rows[:, None] * S * gate_stride + t * gate_stride + head * DH + units[None, :]
            tl.store(OUT + step_offs, h.to(OUT.dtype.element_ty), mask=tile_ok)
            if SAVE:
                _save_state(CS, NS, MS, step_offs, c, n, m, tile_ok)
        tl.debug_barrier()  # h_t complete before step t + 1 reads it


@triton.jit
def _previous_h(H0, OUT, rows, units, row_ok, t, S, NH: tl.constexpr, DH: tl.constexpr, head):
    """h_{t-1}[rows, units] in float32: the initial state at t = 0, else the output of step t - 1."""
    ok = row_ok[:, None] & (units < DH)[None, :]
    initial = tl.load(H0 + rows[:, None] * NH * DH + head * DH + units[None, :], mask=ok & (t == 0), other=0.0)
    previous = OUT + rows[:, None] * S * NH * DH + (t - 1) * NH * DH + head * DH + units[None, :]
    return initial + tl.load(previous, mask=ok & (t > 0), other=0.0).to(tl.float32)


@triton.jit
def _save_state(CS, NS, MS, offs, c, n, m, ok):
    """The state after a step, kept for the backward (h is the output)."""
    tl.store(CS + offs, c, mask=ok)
    tl.store(NS + offs, n, mask=ok)
    tl.store(MS + offs, m, mask=ok)


@triton.jit
def _state_before(INITIAL, SAVED, state_offs, seq_offs, ok, t, STRIDE):
    """One of c, n, m before step t: the initial state at t = 0, else the state saved after step t - 1."""
    initial = tl.load(INITIAL + state_offs, mask=ok & (t == 0), other=0.0)
    return initial + tl.load(SAVED + seq_offs + (t - 1) * STRIDE, mask=ok & (t > 0), other=0.0)


@triton.jit
def _cell_backward(i, f, z, o, c, n, m, dh, dc, dn, dm, keep, HAS_MASK: tl.constexpr):
    """The chain rule through one `_cell_update`, recomputed from its gate pre-activations and the previous state
    (c, n, m), given the gradients of the new state (dh: the output's included). Returns the gates' gradients and
    the previous state's (dh only as far as it bypasses R: padded rows pass the whole state gradient through)."""
    log_sigmoid_f = tl.minimum(f, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f)))
    fresh = n == 0.0
    log_f_plus_m = tl.where(fresh, float("-inf"), log_sigmoid_f + m)
    m_new = tl.maximum(log_f_plus_m, i)
    i_act = tl.exp(i - m_new)
    f_act = tl.exp(log_f_plus_m - m_new)
    tanh_z = 2.0 * tl.sigmoid(2.0 * z) - 1.0
    sigmoid_o = tl.sigmoid(o)
    c_new = f_act * c + i_act * tanh_z
    n_new = f_act * n + i_act
    dc_new = dc + dh * sigmoid_o / n_new
    dn_new = dn - dh * sigmoid_o * c_new / (n_new * n_new)
    d_i_act = dc_new * tanh_z + dn_new
    d_f_act = dc_new * c + dn_new * n
    dm_new = dm - d_i_act * i_act - d_f_act * f_act
    # As torch.maximum: the gradient of m_new goes to the larger argument, halved on a tie.
    to_i = tl.where(i > log_f_plus_m, 1.0, tl.where(i == log_f_plus_m, 0.5, 0.0))
    # A fresh state's forget path is a constant (-inf): no gradient to f or m.
    d_log_f_plus_m = tl.where(fresh, 0.0, d_f_act * f_act + dm_new * (1.0 - to_i))
    di = d_i_act * i_act + dm_new * to_i
    df = d_log_f_plus_m * tl.sigmoid(-f)
    dz = dc_new * i_act * (1.0 - tanh_z * tanh_z)
    do = dh * c_new / n_new * sigmoid_o * (1.0 - sigmoid_o)
    dc_prev, dn_prev, dm_prev = dc_new * f_act, dn_new * f_act, d_log_f_plus_m
    dh_prev = tl.zeros_like(dh)
    if HAS_MASK:
        keep = keep[:, None]
        di, df = tl.where(keep, di, 0.0), tl.where(keep, df, 0.0)
        dz, do = tl.where(keep, dz, 0.0), tl.where(keep, do, 0.0)
        dh_prev = tl.where(keep, dh_prev, dh)
        dc_prev = tl.where(keep, dc_prev, dc)
        dn_prev = tl.where(keep, dn_prev, dn)
        dm_prev = tl.where(keep, dm_prev, dm)
    return di, df, dz, do, dh_prev, dc_prev, dn_prev, dm_prev


@triton.jit
def _slstm_backward(
    G, R, C0, N0, M0, CS, NS, MS, MASK, DOUT, DHS, DCS, DNS, DMS,
    B, S,
    NH: tl.constexpr, DH: tl.constexpr, BD: tl.constexpr, BB: tl.constexpr,
    HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
):
    """The reverse-time recurrence, R^T resident on chip (heads up to `RESIDENT_HEAD_DIM`). G holds the gate
    pre-activations (B, S, 4, NH, DH) in float32 and is overwritten with their gradients; DHS, DCS, DNS, DMS hold
    the gradients of the final state and are overwritten with those of the initial state."""
    head, rows, cols, row_ok, col_ok, tile_ok, state_offs, g_offs, seq_offs = _resident_layout(B, S, NH, DH, BD, BB)
    gate_stride = NH * DH
    # dh_{t-1} = sum_g dg_t @ R_g^T.
    rt_i, rt_f, rt_z, rt_o = _recurrent_tiles(R, head, cols, col_ok, DH, True)
    dh, dc, dn, dm = _load4(DHS, DCS, DNS, DMS, state_offs, tile_ok)
    for t in range(S - 1, -1, -1):
        g = G + g_offs + t * 4 * gate_stride
        i, f, z, o = _load4(g, g + gate_stride, g + 2 * gate_stride, g + 3 * gate_stride, 0, tile_ok)
        c = _state_before(C0, CS, state_offs, seq_offs, tile_ok, t, gate_stride)
        n = _state_before(N0, NS, state_offs, seq_offs, tile_ok, t, gate_stride)
        m = _state_before(M0, MS, state_offs, seq_offs, tile_ok, t, gate_stride)
        keep = tl.load(MASK + rows * S + t, mask=row_ok, other=0) != 0 if HAS_MASK else None
        dh += tl.load(DOUT + seq_offs + t * gate_stride, mask=tile_ok, other=0.0).to(tl.float32)
        di, df, dz, do, dh, dc, dn, dm = _cell_backward(i, f, z, o, c, n, m, dh, dc, dn, dm, keep, HAS_MASK)
        _store4(g, g + gate_stride, g + 2 * gate_stride, g + 3 * gate_stride, 0, di, df, dz, do, tile_ok)
        dh += _recurrent_input(di, rt_i, IEEE) + _recurrent_input(df, rt_f, IEEE)
        dh += _recurrent_input(dz, rt_z, IEEE) + _recurrent_input(do, rt_o, IEEE)

    _store4(DHS, DCS, DNS, DMS, state_offs, dh, dc, dn, dm, tile_ok)


@triton.jit
def _slstm_backward_streamed(
    G, R, C0, N0, M0, CS, NS, MS, MASK, DOUT, DHS, DCS, DNS, DMS,
    B, S,
    NH: tl.constexpr, DH: tl.constexpr, BE: tl.constexpr, BB: tl.constexpr,
    HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
):
    """`_slstm_backward` for wide heads, the state gradients kept in DHS, DCS, DNS, DMS (updated in place). Per
    step, two passes over blocks of BE units with a barrier after each: the gates' gradients (written over G), then
    dh_{t-1} += dg_t R^T, R^T streamed from L2 in tiles."""
    head = tl.program_id(0)
    rows = tl.program_id(1) * BB + tl.arange(0, BB)
    row_ok = rows < B
    gate_stride = NH * DH
    for t in range(S - 1, -1, -1):
        keep = tl.load(MASK + rows * S + t, mask=row_ok, other=0) != 0 if HAS_MASK else None
        for e0 in range(0, DH, BE):
            units = e0 + tl.arange(0, BE)
            tile_ok = row_ok[:, None] & (units < DH)[None, :]
            g = G + rows[:, None] * S * 4 * gate_stride + t * 4 * gate_stride + head * DH + units[None, :]
            i, f, z, o = _load4(g, g + gate_stride, g + 2 * gate_stride, g + 3 * gate_stride, 0, tile_ok)
            state_offs = rows[:, None] * gate_stride + head * DH + units[None, :]
            seq_offs = rows[:, None] * S * gate_stride + head * DH + units[None, :]
            c = _state_before(C0, CS, state_offs, seq_offs, tile_ok, t, gate_stride)
            n = _state_before(N0, NS, state_offs, seq_offs, tile_ok, t, gate_stride)
            m = _state_before(M0, MS, state_offs, seq_offs, tile_ok, t, gate_stride)
            dh, dc, dn, dm = _load4(DHS, DCS, DNS, DMS, state_offs, tile_ok)
            dh += tl.load(DOUT + seq_offs + t * gate_stride, mask=tile_ok, other=0.0).to(tl.float32)
            di, df, dz, do, dh, dc, dn, dm = _cell_backward(i, f, z, o, c, n, m, dh, dc, dn, dm, keep, HAS_MASK)
            _store4(g, g + gate_stride, g + 2 * gate_stride, g + 3 * gate_stride, 0, di, df, dz, do, tile_ok)
            _store4(DHS, DCS, DNS, DMS, state_offs, dh, dc, dn, dm, tile_ok)
        tl.debug_barrier()  # every unit's gate gradients written before the contraction reads them
        for d0 in range(0, DH, BE):
            inputs = d0 + tl.arange(0, BE)
            acc = tl.zeros((BB, BE), dtype=tl.float32)
            for e0 in range(0, DH, BE):
                units = e0 + tl.arange(0, BE)
                g_ok = row_ok[:, None] & (units < DH)[None, :]
                g = G + rows[:, None] * S * 4 * gate_stride + t * 4 * gate_stride + head * DH + units[None, :]
                rt_offs = head * DH * 4 * DH + inputs[None, :] * 4 * DH + units[:, None]
                rt_ok = (units < DH)[:, None] & (inputs < DH)[None, :]
                for gate in tl.static_range(4):
                    dg = tl.load(g + gate * gate_stride, mask=g_ok, other=0.0)
                    acc += _recurrent_input(dg, tl.load(R + rt_offs + gate * DH, mask=rt_ok, other=0.0), IEEE)
            dh_ok = row_ok[:, None] & (inputs < DH)[None, :]
            dh_offs = rows[:, None] * gate_stride + head * DH + inputs[None, :]
            tl.store(DHS + dh_offs, tl.load(DHS + dh_offs, mask=dh_ok, other=0.0) + acc, mask=dh_ok)
        tl.debug_barrier()  # dh_{t-1} complete before step t - 1 reads it


def supported(dtype: torch.dtype) -> bool:
    """Whether the kernels run this dtype (float64 is the reference's)."""
    return dtype in RESIDENT_HEAD_DIM


def _kernel_weights(R: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """R as the kernels read it: float32 for float32 models, else the data's half precision."""
    return R.to(torch.float32 if dtype == torch.float32 else dtype).contiguous()


def _launch_settings(gates_x: torch.Tensor, mask: torch.Tensor | None, resident: bool) -> tuple[tuple, dict]:
    """The grid and the constexprs and warps the forward and backward launches share: a program per (head, block of
    16 batch rows); a resident kernel takes the head as one tile of BD units, a streamed one blocks of BE."""
    B, _, _, NH, DH = gates_x.shape
    settings = dict(NH=NH, DH=DH, BB=16, HAS_MASK=mask is not None, IEEE=gates_x.dtype == torch.float32)
    if resident:
        block = max(16, triton.next_power_of_2(DH))
        settings.update(BD=block, num_warps=4 if block <= 32 else 8)
    else:
        settings.update(BE=max(16, min(64, triton.next_power_of_2(DH))), num_warps=4)
    return (NH, triton.cdiv(B, settings["BB"])), settings


def _launch_forward(gates_x, R, initial_state, mask, resident: bool, save: bool):
    """The forward kernel on contiguous inputs in the kernels' dtypes (`mask` int8 or None); with `save`, also the
    state (c, n, m) after every step, (B, S, NH, DH) float32 each, for the backward."""
    B, S, _, NH, DH = gates_x.shape
    out = gates_x.new_empty(B, S, NH, DH)
    saved = tuple(gates_x.new_empty(B, S, NH, DH, dtype=torch.float32) for _ in range(3)) if save else (out,) * 3
    mask_arg = mask if mask is not None else out  # not read without a mask
    grid, settings = _launch_settings(gates_x, mask, resident)
    if resident:
        final_state = tuple(torch.empty_like(s) for s in initial_state)
        _slstm_forward[grid](gates_x, R, *initial_state, mask_arg, out, *final_state, *saved, B, S, SAVE=save,
                             **settings)
    else:
        h0, c, n, m = initial_state
        c, n, m = c.clone(), n.clone(), m.clone()  # updated in place
        _slstm_forward_streamed[grid](gates_x, R, h0, mask_arg, out, c, n, m, *saved, B, S, SAVE=save, **settings)
        final_state = (out[:, -1].to(torch.float32, copy=True) if S else h0.clone(), c, n, m)
    return out, final_state, saved if save else None


class _SLSTMFunction(torch.autograd.Function):
    """The kernels under autograd. The forward keeps the state (c, n, m) after every step; the backward recomputes
    the gate pre-activations with one batched product (gates_x + h_{t-1} R, h_{t-1} from the output, as the forward
    rounded it; exact in float32, unless TF32 matmuls are allowed for float32 models), runs the reverse-time kernel
    over them (one launch), and contracts h_{t-1} with the gates' gradients for R's."""

    @staticmethod
    def forward(ctx, gates_x, R, h0, c0, n0, m0, mask, resident):
        kernel_R = _kernel_weights(R, gates_x.dtype)
        initial_state = tuple(s.to(torch.float32).contiguous() for s in (h0, c0, n0, m0))
        out, final_state, saved = _launch_forward(gates_x, kernel_R, initial_state, mask, resident, save=True)
        ctx.save_for_backward(gates_x, kernel_R, *initial_state, out, *saved, mask)
        ctx.resident, ctx.input_dtypes = resident, (R.dtype, h0.dtype, c0.dtype, n0.dtype, m0.dtype)
        return out, *final_state

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, *d_final):
        gates_x, R, h0, c0, n0, m0, out, c_seq, n_seq, m_seq, mask = ctx.saved_tensors
        B, S, _, NH, DH = gates_x.shape
        h_prev = torch.cat([h0.to(out.dtype)[:, None], out], dim=1)[:, :S].float()
        gates = (gates_x.float() + torch.einsum("bshd,hdge->bsghe", h_prev, R.float())).contiguous()
        d_state = tuple(d.float().clone(memory_format=torch.contiguous_format) for d in d_final)
        mask_arg = mask if mask is not None else out  # not read without a mask
        args = (gates, R, c0, n0, m0, c_seq, n_seq, m_seq, mask_arg, d_out.contiguous(), *d_state, B, S)
        grid, settings = _launch_settings(gates_x, mask, ctx.resident)
        if ctx.resident:
            # One stage: prefetching the next step's tiles would not leave room for R^T (bf16, DH = 128) on sm_90.
            _slstm_backward[grid](*args, num_stages=1, **settings)
        else:
            _slstm_backward_streamed[grid](*args, **settings)
        d_R = torch.einsum("bshd,bsghe->hdge", h_prev, gates) if ctx.needs_input_grad[1] else None
        grads = (d_R, *d_state)
        grads = tuple(None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.input_dtypes))
        return gates.to(gates_x.dtype), *grads, None, None


def slstm_triton(
    gates_x: torch.Tensor,
    R: torch.Tensor,
    initial_state: SLSTMState | None = None,
    mask: torch.Tensor | None = None,
    resident: bool | None = None,
) -> tuple[torch.Tensor, SLSTMState]:
    """The sLSTM recurrence in one kernel launch; arguments and results as
    :func:`xlstm_hf.kernels.slstm_torch.slstm_recurrent_sequence` (float32 state), differentiable in gates_x, R and
    the initial state. `resident` picks the kernels (default: the resident ones when the head fits on chip, see
    `RESIDENT_HEAD_DIM`)."""
    B, S, _, NH, DH = gates_x.shape
    if not supported(gates_x.dtype):
        raise ValueError(f"slstm_triton runs {sorted(map(str, RESIDENT_HEAD_DIM))}, got {gates_x.dtype}")
    widest = RESIDENT_HEAD_DIM[gates_x.dtype]
    if resident is None:
        resident = DH <= widest
    elif resident and DH > widest:  # on an H100 this gave wrong gradients (fp32, head dim 80)
        raise ValueError(f"resident=True needs heads of at most {widest} for {gates_x.dtype}, got head dim {DH}")
    if initial_state is not None and len(initial_state) != 4:
        raise ValueError(f"slstm_triton: initial_state must be (h, c, n, m), got {len(initial_state)} tensors")
    check_shapes("slstm_triton", gates_x.device, R=(R, (NH, DH, 4, DH)),
                 **{f"initial_state[{n}]": (s, (B, NH, DH)) for n, s in enumerate(initial_state or ())})
    gates_x = gates_x.contiguous()
    mask = padding_mask("slstm_triton", mask, B, S, gates_x.device)
    mask = mask.to(torch.int8) if mask is not None else None  # as the kernels read it
    if initial_state is None:
        initial_state = tuple(gates_x.new_zeros(B, NH, DH, dtype=torch.float32) for _ in range(4))
    if torch.is_grad_enabled() and any(x.requires_grad for x in (gates_x, R, *initial_state)):
        out, *final_state = _SLSTMFunction.apply(gates_x, R, *initial_state, mask, resident)
        return out, tuple(final_state)
    initial_state = tuple(s.to(torch.float32).contiguous() for s in initial_state)
    out, final_state, _ = _launch_forward(gates_x, _kernel_weights(R, gates_x.dtype), initial_state, mask, resident,
                                          save=False)
    return out, final_state


__all__ = ["RESIDENT_HEAD_DIM", "slstm_triton", "supported"]
