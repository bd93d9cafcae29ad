"""Triton kernels for the mLSTM cell: chunkwise forward and backward, and the fused recurrent step.

Written from the equations of DESIGN.md; :mod:`xlstm_hf.kernels.mlstm_torch` is their specification. Plain
pointer arithmetic only (no block pointers, no tensor descriptors), so they build on Triton 3.6 through 3.9.

Chunkwise layout. The sequence is cut into chunks of L tokens (the tail padded with positions that leave the state
untouched). Per (batch, head):

* ``_fw_states``: the recurrence over chunks, parallel over (q/k dim, v dim) tiles of the state. It stores the
  state entering every chunk, C_{k-1} (DQK x DV), n_{k-1} and m_{k-1}, and the final state. n sums the same weighted
  keys, rounded to the input dtype, that C's dot multiplies.
* ``_prepare_gates`` first: the gates in fp32, padded to whole chunks, with their within-chunk sums and maxima.
* ``_fw_outputs``: every chunk in parallel, in row blocks: the incoming state's contribution plus the causal
  intra-chunk part, with the exact per-position stabiliser m_t (from the chunk's m and the within-chunk maxima).
* inference (``mlstm_prefill_triton``): the same kernels, with the mLSTM layer's work around the cell fused in: the
  gates' soft cap and padding in ``_prepare_gates``, the head norm and output gate in ``_fw_outputs``' epilogue (its
  tile spans a head's v dims), and nothing stored for a backward.
* backward: ``_denominator_grads`` goes through the normaliser, ``_bw_states`` runs the state gradient backwards
  over chunks (stabilised by the forward's chunk m's; dn, like n, sums its rows rounded to the input dtype), then
  ``_bw_dq``, ``_bw_dk`` and ``_bw_dv`` are parallel over chunks. The gate gradients follow from the identities
  sum_j dlogW_tj = q_t . dq_t  and  sum_t dlogW_tj = k_j . dk_j, and the stabiliser's max, in one reverse scan per
  (batch, head): ``_gate_grads``.
  Few launches matter here: at training lengths (2K-8K) the backward is bound by the host's launch rate.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .checks import check_shapes, padding_mask
from .elementwise_triton import _capped_gates, _head_norm, _mask_bytes, _output_gate, _round, head_norm_gate
from .mlstm_torch import MLSTMState

# ------------------------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _scores(X, x_rows, s_x, Y, y_rows, s_y, D: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
            IEEE: tl.constexpr):
    """The (BT, BT) tile sum_d X[x_rows, d] * Y[y_rows, d], accumulated in fp32 over D in blocks of BD."""
    acc = tl.zeros((BT, BT), dtype=tl.float32)
    for dd in range(0, D, BD):
        offs = dd + tl.arange(0, BD)
        mask = offs[None, :] < D
        x = tl.load(X + x_rows[:, None] * s_x + offs[None, :], mask=mask, other=0.0)
        y = tl.load(Y + y_rows[:, None] * s_y + offs[None, :], mask=mask, other=0.0)
        acc += _dot(x, tl.trans(y), IEEE)
    return acc


@triton.jit
def _rows_times_state(X, rows, s_x, STATE, out_offs, RED: tl.constexpr, OUT: tl.constexpr, S_RED: tl.constexpr,
                      S_OUT: tl.constexpr, BT: tl.constexpr, BR: tl.constexpr, BO: tl.constexpr, IEEE: tl.constexpr,
                      VEC=None, HAS_VEC: tl.constexpr = False):
    """The (BT, BO) tile X[rows, :] @ M[:, out_offs], M a state matrix with M[r, o] at r * S_RED + o * S_OUT
    (so C, or C^T), reduced over RED in blocks of BR. bf16 inputs meet the state in their dtype; fp16 inputs meet
    an fp32 state in 3xTF32 (`_state_dtype`). With HAS_VEC also the (BT,) products X[rows, :] @ VEC (fp32), from
    the same loads of X."""
    acc = tl.zeros((BT, BO), dtype=tl.float32)
    acc_vec = tl.zeros((BT,), dtype=tl.float32)
    mask_o = out_offs < OUT
    for rr in range(0, RED, BR):
        offs = rr + tl.arange(0, BR)
        mask_r = offs < RED
        x = tl.load(X + rows[:, None] * s_x + offs[None, :], mask=mask_r[None, :], other=0.0)
        m = tl.load(STATE + offs[:, None] * S_RED + out_offs[None, :] * S_OUT, mask=mask_r[:, None] & mask_o[None, :],
                    other=0.0)
        if IEEE:
            acc += _dot(x.to(tl.float32), m.to(tl.float32), True)
        elif STATE.dtype.element_ty == tl.float32:  # fp16 inputs: 3xTF32, as a single TF32 product (fp16's
            # mantissa) loses what a state that large leaves after cancelling between its rows
            acc += tl.dot(x.to(tl.float32), m, input_precision="tf32x3")
        else:
            acc += _dot(x, m.to(x.dtype), False)
        if HAS_VEC:
            acc_vec += tl.sum(x.to(tl.float32) * tl.load(VEC + offs, mask=mask_r, other=0.0)[None, :], axis=1)
    return acc, acc_vec


@triton.jit
def _column_sums(x, IEEE: tl.constexpr):
    """sum_t x[t, :] of a (T, D) tile, as x^T times a (T, 16) matrix whose first column is ones: on the tensor cores,
    where the cross-warp tl.sum over T took 40% of the forward recurrence (the products are exact, the sum in fp32)."""
    first = tl.zeros((x.shape[0], 16), dtype=x.dtype) + (tl.arange(0, 16)[None, :] == 0).to(x.dtype)
    return tl.sum(_dot(tl.trans(x), first, IEEE), axis=1)


@triton.jit
def _causal_weights(b_t, m_t, offs_t, b_j, i_j, offs_j):
    """W_tj = exp(b_t - b_j + i_j - m_t) for j <= t (same chunk), 0 above the diagonal."""
    log_w = b_t[:, None] - b_j[None, :] + i_j[None, :] - m_t[:, None]
    return tl.exp(tl.where(offs_t[:, None] >= offs_j[None, :], log_w, float("-inf")))


@triton.jit
def _fw_states(
    K, V, B_gate, I_gate, CMAX, C0, N0, M0, C_states, N_states, M_states, C_out, N_out, M_out,
    s_kb, s_kh, s_ks, s_vb, s_vh, s_vs,
    NH: tl.constexpr, NC, L: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, HAS_INITIAL: tl.constexpr, IEEE: tl.constexpr,
):
    pid_bh, pid_k, pid_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = pid_bh // NH, pid_bh % NH
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    offs_t = tl.arange(0, L)
    mask_k, mask_v = offs_k < DQK, offs_v < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    state_kv = offs_k[:, None] * DV + offs_v[None, :]
    if HAS_INITIAL:
        c = tl.load(C0 + pid_bh * DQK * DV + state_kv, mask=mask_kv, other=0.0).to(tl.float32)
        n = tl.load(N0 + pid_bh * DQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        m = tl.load(M0 + pid_bh).to(tl.float32)
    else:
        c = tl.zeros((BK, BV), dtype=tl.float32)
        n = tl.zeros((BK,), dtype=tl.float32)
        m = 0.0
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    gate_base = pid_bh * NC * L
    for chunk in range(NC):
        tl.store(C_states + (pid_bh * NC + chunk) * DQK * DV + state_kv, c, mask=mask_kv)
        if pid_v == 0:
            tl.store(N_states + (pid_bh * NC + chunk) * DQK + offs_k, n, mask=mask_k)
            if pid_k == 0:
                tl.store(M_states + pid_bh * (NC + 1) + chunk, m)
        t = chunk * L + offs_t
        b_t = tl.load(B_gate + gate_base + t)
        i_t = tl.load(I_gate + gate_base + t)
        g = tl.load(B_gate + gate_base + chunk * L + L - 1)
        a = g - b_t + i_t
        # max_t a_t is g plus the chunk's last running max of i - b (from _prepare_gates): no reduction in the loop.
        m_new = g + tl.maximum(m, tl.load(CMAX + gate_base + chunk * L + L - 1))
        decay = tl.exp(g + m - m_new)
        w = tl.exp(a - m_new)
        k_tile = tl.load(k_base + t[:, None] * s_ks + offs_k[None, :], mask=mask_k[None, :], other=0.0)
        v_tile = tl.load(v_base + t[:, None] * s_vs + offs_v[None, :], mask=mask_v[None, :], other=0.0)
        k_weighted = (k_tile.to(tl.float32) * w[:, None]).to(v_tile.dtype)
        c = decay * c + _dot(tl.trans(k_weighted), v_tile, IEEE)
        n = decay * n + _column_sums(k_weighted, IEEE)
        m = m_new
    tl.store(C_out + pid_bh * DQK * DV + state_kv, c, mask=mask_kv)
    if pid_v == 0:
        tl.store(N_out + pid_bh * DQK + offs_k, n, mask=mask_k)
        if pid_k == 0:
            tl.store(M_out + pid_bh, m)
            tl.store(M_states + pid_bh * (NC + 1) + NC, m)


@triton.jit
def _fw_outputs(
    Q, K, V, H, B_gate, I_gate, CMAX, M_pos, C_states, N_states, M_states, DEN, O, W,
    s_qb, s_qh, s_qs, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs, s_hb, s_hh, s_hs, s_ob, s_os,
    scale, eps, norm_eps, S,
    NH: tl.constexpr, NC, L: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IEEE: tl.constexpr,
    SAVE: tl.constexpr = True, NORM: tl.constexpr = False,
):
    """h, or with NORM (BV covering DV) `sigmoid(o) * (LayerNorm(h) * W)` of each head into H as (B, S, NH * DV),
    from o (B, S, NH * DV) and W (NH * DV): the mLSTM layer's head norm and output gate, without a pass of their own.
    SAVE: also store m_t and the denominator, for the backward."""
    pid_bh, pid_r, pid_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = pid_bh // NH, pid_bh % NH
    blocks_per_chunk: tl.constexpr = L // BT
    chunk, row_block = pid_r // blocks_per_chunk, pid_r % blocks_per_chunk
    offs_t = chunk * L + row_block * BT + tl.arange(0, BT)
    offs_j0 = tl.arange(0, BT)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_v = offs_v < DV
    gate_base = pid_bh * NC * L
    b_t = tl.load(B_gate + gate_base + offs_t)
    m_prev = tl.load(M_states + pid_bh * (NC + 1) + chunk)
    # The exact recurrent stabiliser: m_t = max(b_t + m_{k-1}, b_t + max_{j<=t in chunk}(i_j - b_j)); kept for the
    # backward.
    m_t = b_t + tl.maximum(m_prev, tl.load(CMAX + gate_base + offs_t))
    if SAVE and pid_v == 0:
        tl.store(M_pos + gate_base + offs_t, m_t)
    q_base = Q + b * s_qb + h * s_qh
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh

    # The incoming state: exp(b_t + m_{k-1} - m_t) * scale * q_t^T C_{k-1}  (and n).
    num, den = _rows_times_state(q_base, offs_t, s_qs, C_states + (pid_bh * NC + chunk) * DQK * DV, offs_v,
                                 DQK, DV, DV, 1, BT, BK, BV, IEEE, N_states + (pid_bh * NC + chunk) * DQK, True)
    inter = tl.exp(b_t + m_prev - m_t) * scale
    num = num * inter[:, None]
    den = den * inter

    # The intra-chunk part, causal: blocks of columns up to and including the diagonal one.
    for col_block in range(0, row_block + 1):
        offs_j = chunk * L + col_block * BT + offs_j0
        s = _scores(q_base, offs_t, s_qs, k_base, offs_j, s_ks, DQK, BK, BT, IEEE)
        b_j = tl.load(B_gate + gate_base + offs_j)
        i_j = tl.load(I_gate + gate_base + offs_j)
        p = s * _causal_weights(b_t, m_t, offs_t, b_j, i_j, offs_j) * scale
        v_tile = tl.load(v_base + offs_j[:, None] * s_vs + offs_v[None, :], mask=mask_v[None, :], other=0.0)
        num += _dot(p.to(v_tile.dtype), v_tile, IEEE)
        den += tl.sum(p, axis=1)

    # One reciprocal a row: dividing each element would queue BT x BV more operations on the special-function units.
    h_tile = num * (1.0 / (tl.maximum(tl.abs(den), tl.exp(-m_t)) + eps))[:, None]
    if NORM:  # h as the cell would store it, then the head norm
        rows_ok = offs_t < S
        weight = tl.load(W + h * DV + offs_v, mask=mask_v, other=0.0).to(tl.float32)
        h_tile = _head_norm(_round(h_tile, V.dtype.element_ty), weight, mask_v, DV, norm_eps, H.dtype.element_ty)
        o = tl.load(O + b * s_ob + offs_t[:, None] * s_os + h * DV + offs_v[None, :],
                    mask=rows_ok[:, None] & mask_v[None, :], other=0.0).to(tl.float32)
        h_tile = _output_gate(h_tile, o, H.dtype.element_ty)
        tl.store(H + b * s_hb + offs_t[:, None] * s_hs + h * DV + offs_v[None, :], h_tile.to(H.dtype.element_ty),
                 mask=rows_ok[:, None] & mask_v[None, :])
    else:
        h_base = H + b * s_hb + h * s_hh
        tl.store(h_base + offs_t[:, None] * s_hs + offs_v[None, :], h_tile.to(H.dtype.element_ty),
                 mask=mask_v[None, :])
    if SAVE and pid_v == 0:
        tl.store(DEN + gate_base + offs_t, den)


@triton.jit
def _bw_states(
    Q, DH, RDEN, DDEN, B_gate, M_pos, M_states, DC_final, DN_final, DC_states, DN_states, DC0, DN0,
    s_qb, s_qh, s_qs, s_db, s_dh, s_ds,
    scale,
    NH: tl.constexpr, NC, L: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, HAS_FINAL_GRAD: tl.constexpr, IEEE: tl.constexpr,
):
    """dC_k = exp(g_k + m_{k-1} - m_k) dC_{k+1} + sum_t exp(b_t + m_{k-1} - m_t) scale q_t dnum_t^T, backwards."""
    pid_bh, pid_k, pid_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = pid_bh // NH, pid_bh % NH
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    offs_t = tl.arange(0, L)
    mask_k, mask_v = offs_k < DQK, offs_v < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    state_kv = offs_k[:, None] * DV + offs_v[None, :]
    if HAS_FINAL_GRAD:
        dc = tl.load(DC_final + pid_bh * DQK * DV + state_kv, mask=mask_kv, other=0.0).to(tl.float32)
        dn = tl.load(DN_final + pid_bh * DQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    else:
        dc = tl.zeros((BK, BV), dtype=tl.float32)
        dn = tl.zeros((BK,), dtype=tl.float32)
    q_base = Q + b * s_qb + h * s_qh
    dh_base = DH + b * s_db + h * s_dh
    gate_base = pid_bh * NC * L
    for back in range(NC):
        chunk = NC - 1 - back
        tl.store(DC_states + (pid_bh * NC + chunk) * DQK * DV + state_kv, dc, mask=mask_kv)
        if pid_v == 0:
            tl.store(DN_states + (pid_bh * NC + chunk) * DQK + offs_k, dn, mask=mask_k)
        t = chunk * L + offs_t
        b_t = tl.load(B_gate + gate_base + t)
        m_t = tl.load(M_pos + gate_base + t)
        g = tl.load(B_gate + gate_base + chunk * L + L - 1)
        m_prev = tl.load(M_states + pid_bh * (NC + 1) + chunk)
        m_next = tl.load(M_states + pid_bh * (NC + 1) + chunk + 1)
        w = tl.exp(b_t + m_prev - m_t) * scale
        q_tile = tl.load(q_base + t[:, None] * s_qs + offs_k[None, :], mask=mask_k[None, :], other=0.0)
        dh_tile = tl.load(dh_base + t[:, None] * s_ds + offs_v[None, :], mask=mask_v[None, :], other=0.0)
        dnum = dh_tile.to(tl.float32) * tl.load(RDEN + gate_base + t)[:, None]
        q_weighted = q_tile.to(tl.float32) * w[:, None]
        decay = tl.exp(g + m_prev - m_next)
        dc = decay * dc + _dot(tl.trans(q_weighted.to(q_tile.dtype)), dnum.to(q_tile.dtype), IEEE)
        dn = decay * dn + _column_sums((q_weighted * tl.load(DDEN + gate_base + t)[:, None]).to(q_tile.dtype), IEEE)
    tl.store(DC0 + pid_bh * DQK * DV + state_kv, dc, mask=mask_kv)
    if pid_v == 0:
        tl.store(DN0 + pid_bh * DQK + offs_k, dn, mask=mask_k)


@triton.jit
def _bw_dq(
    Q, K, V, DH, RDEN, DDEN, B_gate, I_gate, M_pos, M_states, C_states, N_states, DQ, ROWSUM,
    s_qb, s_qh, s_qs, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs, s_db, s_dh, s_ds,
    scale,
    NH: tl.constexpr, NC, L: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IEEE: tl.constexpr,
):
    """dq_t = scale [sum_{j<=t} W_tj (dnum_t.v_j + dden_t) k_j
                     + exp(b_t + m_{k-1} - m_t)(C_{k-1} dnum_t + n dden_t)]."""
    pid_bh, pid_r, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = pid_bh // NH, pid_bh % NH
    blocks_per_chunk: tl.constexpr = L // BT
    chunk, row_block = pid_r // blocks_per_chunk, pid_r % blocks_per_chunk
    offs_t = chunk * L + row_block * BT + tl.arange(0, BT)
    offs_j0 = tl.arange(0, BT)
    offs_k = pid_k * BK + tl.arange(0, BK)
    mask_k = offs_k < DQK
    gate_base = pid_bh * NC * L
    b_t = tl.load(B_gate + gate_base + offs_t)
    m_t = tl.load(M_pos + gate_base + offs_t)
    rden_t = tl.load(RDEN + gate_base + offs_t)
    dden_t = tl.load(DDEN + gate_base + offs_t)
    m_prev = tl.load(M_states + pid_bh * (NC + 1) + chunk)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    dh_base = DH + b * s_db + h * s_dh

    # dnum_t = dh_t / den_t: the row scale is applied after the product.
    acc = _rows_times_state(dh_base, offs_t, s_ds, C_states + (pid_bh * NC + chunk) * DQK * DV, offs_k,
                            DV, DQK, 1, DV, BT, BV, BK, IEEE)[0] * rden_t[:, None]
    n_tile = tl.load(N_states + (pid_bh * NC + chunk) * DQK + offs_k, mask=mask_k, other=0.0)
    acc += dden_t[:, None] * n_tile[None, :]
    acc = acc * (tl.exp(b_t + m_prev - m_t) * scale)[:, None]

    for col_block in range(0, row_block + 1):
        offs_j = chunk * L + col_block * BT + offs_j0
        dp = _scores(dh_base, offs_t, s_ds, v_base, offs_j, s_vs, DV, BV, BT, IEEE)
        dp = dp * rden_t[:, None] + dden_t[:, None]
        b_j = tl.load(B_gate + gate_base + offs_j)
        i_j = tl.load(I_gate + gate_base + offs_j)
        k_tile = tl.load(k_base + offs_j[:, None] * s_ks + offs_k[None, :], mask=mask_k[None, :], other=0.0)
        ds = dp * _causal_weights(b_t, m_t, offs_t, b_j, i_j, offs_j) * scale
        acc += _dot(ds.to(k_tile.dtype), k_tile, IEEE)
    dq_base = DQ + b * s_qb + h * s_qh
    tl.store(dq_base + offs_t[:, None] * s_qs + offs_k[None, :], acc.to(DQ.dtype.element_ty), mask=mask_k[None, :])
    # q_t . dq_t in fp32, before dq is rounded to the input dtype: the gate gradients come from its difference
    # with k_t . dk_t, which would cancel away bf16's few digits.
    q_tile = tl.load(Q + b * s_qb + h * s_qh + offs_t[:, None] * s_qs + offs_k[None, :], mask=mask_k[None, :],
                     other=0.0)
    tl.store(ROWSUM + (pid_k * tl.num_programs(0) + pid_bh) * NC * L + offs_t,
             tl.sum(q_tile.to(tl.float32) * acc, axis=1))


@triton.jit
def _bw_dk(
    Q, K, V, DH, RDEN, DDEN, B_gate, I_gate, M_pos, M_states, DC_states, DN_states, DK, COLSUM,
    s_qb, s_qh, s_qs, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs, s_db, s_dh, s_ds,
    scale,
    NH: tl.constexpr, NC, L: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IEEE: tl.constexpr,
):
    """dk_j = scale sum_{t>=j} W_tj (dnum_t.v_j + dden_t) q_t + exp(g - b_j + i_j - m_k)(dC_k v_j + dn_k)."""
    pid_bh, pid_c, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = pid_bh // NH, pid_bh % NH
    blocks_per_chunk: tl.constexpr = L // BT
    chunk, col_block = pid_c // blocks_per_chunk, pid_c % blocks_per_chunk
    offs_j = chunk * L + col_block * BT + tl.arange(0, BT)
    offs_t0 = tl.arange(0, BT)
    offs_k = pid_k * BK + tl.arange(0, BK)
    mask_k = offs_k < DQK
    gate_base = pid_bh * NC * L
    b_j = tl.load(B_gate + gate_base + offs_j)
    i_j = tl.load(I_gate + gate_base + offs_j)
    g = tl.load(B_gate + gate_base + chunk * L + L - 1)
    m_next = tl.load(M_states + pid_bh * (NC + 1) + chunk + 1)
    q_base = Q + b * s_qb + h * s_qh
    v_base = V + b * s_vb + h * s_vh
    dh_base = DH + b * s_db + h * s_dh

    acc = _rows_times_state(v_base, offs_j, s_vs, DC_states + (pid_bh * NC + chunk) * DQK * DV, offs_k,
                            DV, DQK, 1, DV, BT, BV, BK, IEEE)[0]
    dn_tile = tl.load(DN_states + (pid_bh * NC + chunk) * DQK + offs_k, mask=mask_k, other=0.0)
    acc = (acc + dn_tile[None, :]) * tl.exp(g - b_j + i_j - m_next)[:, None]

    for row_block in range(col_block, blocks_per_chunk):
        offs_t = chunk * L + row_block * BT + offs_t0
        dp = _scores(dh_base, offs_t, s_ds, v_base, offs_j, s_vs, DV, BV, BT, IEEE)  # [t, j]
        b_t = tl.load(B_gate + gate_base + offs_t)
        m_t = tl.load(M_pos + gate_base + offs_t)
        dp = dp * tl.load(RDEN + gate_base + offs_t)[:, None] + tl.load(DDEN + gate_base + offs_t)[:, None]
        q_tile = tl.load(q_base + offs_t[:, None] * s_qs + offs_k[None, :], mask=mask_k[None, :], other=0.0)
        ds = dp * _causal_weights(b_t, m_t, offs_t, b_j, i_j, offs_j) * scale
        acc += _dot(tl.trans(ds.to(q_tile.dtype)), q_tile, IEEE)
    dk_base = DK + b * s_kb + h * s_kh
    tl.store(dk_base + offs_j[:, None] * s_ks + offs_k[None, :], acc.to(DK.dtype.element_ty), mask=mask_k[None, :])
    k_tile = tl.load(K + b * s_kb + h * s_kh + offs_j[:, None] * s_ks + offs_k[None, :], mask=mask_k[None, :],
                     other=0.0)
    tl.store(COLSUM + (pid_k * tl.num_programs(0) + pid_bh) * NC * L + offs_j,
             tl.sum(k_tile.to(tl.float32) * acc, axis=1))


@triton.jit
def _bw_dv(
    Q, K, DH, RDEN, B_gate, I_gate, M_pos, M_states, DC_states, DV_out,
    s_qb, s_qh, s_qs, s_kb, s_kh, s_ks, s_db, s_dh, s_ds, s_vb, s_vh, s_vs,
    scale,
    NH: tl.constexpr, NC, L: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IEEE: tl.constexpr,
):
    """dv_j = scale sum_{t>=j} W_tj (q_t.k_j) dnum_t + exp(g - b_j + i_j - m_k) dC_k^T k_j."""
    pid_bh, pid_c, pid_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = pid_bh // NH, pid_bh % NH
    blocks_per_chunk: tl.constexpr = L // BT
    chunk, col_block = pid_c // blocks_per_chunk, pid_c % blocks_per_chunk
    offs_j = chunk * L + col_block * BT + tl.arange(0, BT)
    offs_t0 = tl.arange(0, BT)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_v = offs_v < DV
    gate_base = pid_bh * NC * L
    b_j = tl.load(B_gate + gate_base + offs_j)
    i_j = tl.load(I_gate + gate_base + offs_j)
    g = tl.load(B_gate + gate_base + chunk * L + L - 1)
    m_next = tl.load(M_states + pid_bh * (NC + 1) + chunk + 1)
    q_base = Q + b * s_qb + h * s_qh
    k_base = K + b * s_kb + h * s_kh
    dh_base = DH + b * s_db + h * s_dh

    acc = _rows_times_state(k_base, offs_j, s_ks, DC_states + (pid_bh * NC + chunk) * DQK * DV, offs_v,
                            DQK, DV, DV, 1, BT, BK, BV, IEEE)[0]
    acc = acc * tl.exp(g - b_j + i_j - m_next)[:, None]

    for row_block in range(col_block, blocks_per_chunk):
        offs_t = chunk * L + row_block * BT + offs_t0
        s = _scores(q_base, offs_t, s_qs, k_base, offs_j, s_ks, DQK, BK, BT, IEEE)  # [t, j]
        b_t = tl.load(B_gate + gate_base + offs_t)
        m_t = tl.load(M_pos + gate_base + offs_t)
        p = s * _causal_weights(b_t, m_t, offs_t, b_j, i_j, offs_j) * scale
        p = p * tl.load(RDEN + gate_base + offs_t)[:, None]
        dh_tile = tl.load(dh_base + offs_t[:, None] * s_ds + offs_v[None, :], mask=mask_v[None, :], other=0.0)
        acc += _dot(tl.trans(p.to(dh_tile.dtype)), dh_tile, IEEE)
    dv_base = DV_out + b * s_vb + h * s_vh
    tl.store(dv_base + offs_j[:, None] * s_vs + offs_v[None, :], acc.to(DV_out.dtype.element_ty),
             mask=mask_v[None, :])


@triton.jit
def _step(
    Q, K, V, I_gate, F_gate, C, N_old, M_old, N, M, H,
    s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_ib, s_ih, s_fb, s_fh,
    scale, eps,
    NH: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """One token: C, n, m updated in place, h returned. One program per (batch*head, v tile); every program reads
    n and m from a snapshot (N_old, M_old), since the first one writes the new values in place. q, k, v, i and f
    may be strided over batch and head (views of one projection's output)."""
    pid_bh, pid_v = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // NH, pid_bh % NH
    offs_k = tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < DQK, offs_v < DV
    f = tl.load(F_gate + b * s_fb + h * s_fh).to(tl.float32)
    i = tl.load(I_gate + b * s_ib + h * s_ih).to(tl.float32)
    m = tl.load(M_old + pid_bh).to(tl.float32)
    log_f = tl.minimum(f, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f)))  # logsigmoid, stable both ways
    m_new = tl.maximum(log_f + m, i)
    decay = tl.exp(log_f + m - m_new)
    gain = tl.exp(i - m_new)
    q = tl.load(Q + b * s_qb + h * s_qh + offs_k, mask=mask_k, other=0.0).to(tl.float32) * scale
    k = tl.load(K + b * s_kb + h * s_kh + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    v = tl.load(V + b * s_vb + h * s_vh + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    n = tl.load(N_old + pid_bh * DQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    n = decay * n + gain * k
    c_ptrs = C + pid_bh * DQK * DV + offs_k[:, None] * DV + offs_v[None, :]
    mask_kv = mask_k[:, None] & mask_v[None, :]
    c = tl.load(c_ptrs, mask=mask_kv, other=0.0).to(tl.float32)
    c = decay * c + gain * k[:, None] * v[None, :]
    tl.store(c_ptrs, c.to(C.dtype.element_ty), mask=mask_kv)
    num = tl.sum(q[:, None] * c, axis=0)
    den = tl.maximum(tl.abs(tl.sum(q * n, axis=0)), tl.exp(-m_new)) + eps
    tl.store(H + pid_bh * DV + offs_v, (num / den).to(H.dtype.element_ty), mask=mask_v)
    if pid_v == 0:
        tl.store(N + pid_bh * DQK + offs_k, n.to(N.dtype.element_ty), mask=mask_k)
        tl.store(M + pid_bh, m_new.to(M.dtype.element_ty))


# ------------------------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------------------------

DEFAULT_CHUNK_SIZE = 128


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Block sizes and launch settings. `state_*`: the recurrent kernels (forward and backward; `bw_state_warps` and
    `bw_state_stages` the backward's), `out_*`: the forward's output kernel, `grad_*`: the dq/dk/dv kernels,
    `gate_block`: the positions per step of the gate-gradient scan. Block sizes are capped to the head dims, down to
    64 (`_fit`). The defaults are the fastest of `benchmarks/mlstm_cell.py --sweep` at the 7B's shapes on an H100 (S 8K
    and 32K; docs/benchmarks.md), in bf16, except `state_warps` and `state_stages`: 8 and 3 from sweeps on an H200
    (4 and 2 on the H100); the launches use `for_dtype`.
    """

    state_bk: int = 64
    state_bv: int = 128
    state_warps: int = 8
    bw_state_warps: int = 8
    state_stages: int = 3
    bw_state_stages: int = 2
    out_bt: int = 64
    out_bk: int = 64
    out_bv: int = 512
    out_warps: int = 8
    out_stages: int = 3  # 2 gave wrong, run-to-run different outputs with Triton 3.6 on an H200 (docs/benchmarks.md)
    grad_bt: int = 64
    grad_bk: int = 128
    grad_bv: int = 64
    grad_warps: int = 8
    grad_stages: int = 3
    gate_block: int = 1024

    def for_dtype(self, dtype: torch.dtype) -> "Tiling":
        """The tiling for inputs of `dtype`. The sizes are for 2-byte inputs; with 4-byte ones the output kernel's
        pipelined (BK, BV) tiles of the chunk states would need 288 KiB of shared memory at the 7B's head dims, more
        than an H100 has, so its tile is half as wide, and the forward recurrence keeps two stages of k and v tiles
        (three would take 226 KiB, all an H100 has)."""
        if dtype.itemsize <= 2:
            return self
        return dataclasses.replace(self, out_bv=self.out_bv // 2, state_stages=min(self.state_stages, 2))


TILING = Tiling()


def _pow2(x: int, low: int = 16) -> int:
    return max(low, triton.next_power_of_2(x))


def _fit(block: int, dim: int) -> int:
    """A tile of at most `block` along a dim of `dim`, at least 64 wide (masked past the dim). With 16- or 32-dim
    heads, narrower tiles made dots of depth 16 / 32 that crashed (illegal memory access) or gave wrong outputs and
    gradients on an H200 with Triton 3.6, in 2-byte dtypes, with 64-position chunks (docs/benchmarks.md)."""
    return min(block, _pow2(dim, low=64))


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _prepare(x: torch.Tensor, padded: int) -> torch.Tensor:
    """Pad the sequence dim to `padded` (zeros) and make the last dim contiguous, copying only when needed."""
    if x.shape[2] != padded:
        x = F.pad(x, (0, 0, 0, padded - x.shape[2]))
    return x if x.stride(-1) == 1 else x.contiguous()


@triton.jit
def _denominator_grads(
    DH, H, DEN, M_pos, RDEN, DDEN, DM, s_db, s_dh, s_ds, s_hb, s_hh, s_hs, S, eps,
    NH: tl.constexpr, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr,
):
    """Through h = num / den with den = max(|den_raw|, exp(-m)) + eps, per position: 1/den, and with
    dden = -(dh . h) / den the gradients of den_raw (where |den_raw| is the larger) and of m (where exp(-m) is)."""
    pid_bh, pid_r = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // NH, pid_bh % NH
    rows = pid_r * BR + tl.arange(0, BR)
    row_ok = rows < S
    dh_dot_h = tl.zeros((BR,), dtype=tl.float32)
    for dd in range(0, D, BD):
        cols = dd + tl.arange(0, BD)
        mask = row_ok[:, None] & (cols[None, :] < D)
        x = tl.load(DH + b * s_db + h * s_dh + rows[:, None] * s_ds + cols[None, :], mask=mask, other=0.0)
        y = tl.load(H + b * s_hb + h * s_hh + rows[:, None] * s_hs + cols[None, :], mask=mask, other=0.0)
        dh_dot_h += tl.sum(x.to(tl.float32) * y.to(tl.float32), axis=1)
    at = pid_bh * S + rows
    den_raw = tl.load(DEN + at, mask=row_ok, other=0.0)
    floor = tl.exp(-tl.load(M_pos + at, mask=row_ok, other=0.0))
    rden = 1.0 / (tl.maximum(tl.abs(den_raw), floor) + eps)
    dden = -dh_dot_h * rden
    on_num = tl.abs(den_raw) >= floor
    sign = tl.where(den_raw > 0, 1.0, tl.where(den_raw < 0, -1.0, 0.0))
    tl.store(RDEN + at, rden, mask=row_ok)
    tl.store(DDEN + at, tl.where(on_num, dden * sign, 0.0), mask=row_ok)
    tl.store(DM + at, tl.where(on_num, 0.0, -dden * floor), mask=row_ok)


@triton.jit
def _then(c1, b1, c2, b2):
    """y -> c y + b maps, composed: first (c1, b1), then (c2, b2)."""
    return c1 * c2, c2 * b1 + b2


@triton.jit
def _forget_branch(LOG_F, I_gate, M_pos, base, offs, ok, m0):
    """1 where m_t = lf_t + m_{t-1} (the forget branch of the stabiliser's max), 0 where m_t = i_t or outside `ok`."""
    m_prev = tl.load(M_pos + base + offs - 1, mask=ok & (offs > 0), other=0.0) + tl.where(offs == 0, m0, 0.0)
    lf = tl.load(LOG_F + base + offs, mask=ok, other=0.0)
    i = tl.load(I_gate + base + offs, mask=ok, other=0.0)
    return tl.where(ok & (lf + m_prev >= i), 1.0, 0.0)


@triton.jit
def _gate_grads(
    ROWSUM, COLSUM, DM_DIRECT, LOG_F, I_gate, M_pos, M0, FINAL, DM_FINAL, F_in, DI, DF, DM0,
    s_fb, s_fh, s_fs, S_pad, S,
    NH: tl.constexpr, TILES: tl.constexpr, BLOCK: tl.constexpr,
    HAS_INITIAL: tl.constexpr, HAS_FINAL: tl.constexpr, HAS_DM: tl.constexpr,
):
    """The gate gradients of one (batch, head), from  sum_j dlogW_tj = q_t . dq_t (ROWSUM)  and
    sum_t dlogW_tj = k_j . dk_j (COLSUM), each summed over its TILES q/k-dim tiles:

        d_b = rowsum - colsum,  d_log_f_t = sum_{j >= t} d_b_j + forget_t g_t,  d_i_t = colsum_t + (1 - forget_t) g_t,

    where g is the gradient of the stabiliser m_t = max(lf_t + m_{t-1}, i_t), g_t = dm_t + forget_{t+1} g_{t+1}, and
    dm_t = dm_direct_t - rowsum_t (the last position also takes the final state's terms). Both are reverse scans: the
    sequence is walked from its end in blocks, each loaded back to front, so that they become forward scans."""
    pid = tl.program_id(0)
    b, h = pid // NH, pid % NH
    num_bh = tl.num_programs(0)
    base = pid * S_pad
    m0 = tl.load(M0 + pid) if HAS_INITIAL else 0.0
    carry_g = 0.0  # g at the position after the block
    carry_b = 0.0  # the sum of d_b after the block
    for start in range(0, S_pad, BLOCK):
        offs = S_pad - 1 - start - tl.arange(0, BLOCK)  # descending positions
        ok = offs >= 0
        rowsum = tl.zeros((BLOCK,), dtype=tl.float32)
        colsum = tl.zeros((BLOCK,), dtype=tl.float32)
        for tile in range(TILES):
            rowsum += tl.load(ROWSUM + tile * num_bh * S_pad + base + offs, mask=ok, other=0.0)
            colsum += tl.load(COLSUM + tile * num_bh * S_pad + base + offs, mask=ok, other=0.0)
        last = offs == S_pad - 1
        if HAS_FINAL:
            rowsum += tl.where(last, tl.load(FINAL + pid), 0.0)
        dm = tl.load(DM_DIRECT + base + offs, mask=ok, other=0.0) - rowsum
        if HAS_DM:
            dm += tl.where(last, tl.load(DM_FINAL + pid), 0.0)
        forget = _forget_branch(LOG_F, I_gate, M_pos, base, offs, ok, m0)
        forget_next = _forget_branch(LOG_F, I_gate, M_pos, base, offs + 1, ok & (offs + 1 < S_pad), m0)
        scale, shift = tl.associative_scan((forget_next, dm), 0, _then)
        g = shift + scale * carry_g
        d_b = rowsum - colsum
        d_log_f = tl.cumsum(d_b, 0) + carry_b + forget * g
        d_i = colsum + (1.0 - forget) * g
        carry_g = tl.sum(tl.where(tl.arange(0, BLOCK) == BLOCK - 1, g, 0.0), axis=0)
        carry_b += tl.sum(d_b, axis=0)
        real = ok & (offs < S)
        f = tl.load(F_in + b * s_fb + h * s_fh + offs * s_fs, mask=real, other=0.0).to(tl.float32)
        tl.store(DF + pid * S + offs, d_log_f * tl.sigmoid(-f), mask=real)
        tl.store(DI + pid * S + offs, d_i, mask=real)
        tl.store(DM0 + pid + offs * 0, forget * g, mask=offs == 0)


@triton.jit
def _running_max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _prepare_gates(
    I_in, F_in, MASK, LOG_F, B_gate, I_gate, CMAX, s_ib, s_ih, s_is, s_fb, s_fh, s_fs, S, cap,
    NH: tl.constexpr, L: tl.constexpr, HAS_CAP: tl.constexpr = False, HAS_MASK: tl.constexpr = False,
):
    """One chunk of one (batch, head), in fp32 and padded to whole chunks: the log forget gates (0 past the sequence),
    their cumulative sums within the chunk b_t, the input gates (-inf past the sequence: no input), and the running
    max of i_j - b_j within the chunk (the stabiliser's intra-chunk part). With HAS_CAP / HAS_MASK the inputs are
    pre-activations, soft-capped at `cap` and padded where MASK (B, S bytes) is 0, as `_capped_gates` does."""
    pid_bh, chunk = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // NH, pid_bh % NH
    t = chunk * L + tl.arange(0, L)
    real = t < S
    f = tl.load(F_in + b * s_fb + h * s_fh + t * s_fs, mask=real, other=0.0).to(tl.float32)
    i = tl.load(I_in + b * s_ib + h * s_ih + t * s_is, mask=real, other=0.0).to(tl.float32)
    if HAS_CAP or HAS_MASK:
        keep = real
        if HAS_MASK:
            keep = tl.load(MASK + b * S + t, mask=real, other=1) != 0
        i, f = _capped_gates(i, f, cap, keep, I_in.dtype.element_ty, HAS_MASK, HAS_CAP)
    log_f = tl.where(real, tl.minimum(f, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f))), 0.0)  # logsigmoid, both ways stable
    i = tl.where(real, i, float("-inf"))
    b_t = tl.cumsum(log_f, 0)
    out = pid_bh * tl.num_programs(1) * L + t
    tl.store(LOG_F + out, log_f)
    tl.store(B_gate + out, b_t)
    tl.store(I_gate + out, i)
    tl.store(CMAX + out, tl.associative_scan(i - b_t, 0, _running_max))


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the chunk states (and their gradients) that the output and gradient kernels read: the inputs'
    (the dots that read them run in that dtype), except fp16, whose range a state outgrows (|C| past 65504 after a
    few hundred tokens of large k, v under a forget gate near 1); fp32 keeps the range (read in 3xTF32)."""
    return torch.float32 if dtype == torch.float16 else dtype


def _check_sequence(function: str, q, k, v, i, f, state) -> None:
    """The shapes of :func:`mlstm_chunkwise_triton`'s arguments, which its kernels take from q's and v's."""
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    state = dict(zip(("C", "n", "m"), state)) if state is not None else {}
    shapes = dict(k=(B, NH, S, DQK), v=(B, NH, S, DV), i=(B, NH, S), f=(B, NH, S), C=(B, NH, DQK, DV), n=(B, NH, DQK),
                  m=(B, NH))
    given = dict(k=k, v=v, i=i, f=f, **state)
    check_shapes(function, q.device, **{name: (x, shapes[name]) for name, x in given.items()})


def _forward(q, k, v, i, f, initial_state, L, eps, tiling: Tiling, cap=None, mask=None, norm=None, save=True):
    """h (B, NH, S, DV), the final state, and what the backward needs (None unless `save`). `cap`, `mask` (B, S):
    i and f are pre-activations, soft-capped and padded in the gate preparation; `norm` = (o, weight, eps): the
    output kernel returns the gated head norm (B, S, NH * DV) instead of h (its BV must cover DV)."""
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    _check_sequence("mlstm_chunkwise_triton" if save else "mlstm_prefill_triton", q, k, v, i, f, initial_state)
    mask = padding_mask("mlstm_prefill_triton", mask, B, S, q.device)
    NC = triton.cdiv(S, L)
    S_pad = NC * L
    q, k, v = (_prepare(x, S_pad) for x in (q, k, v))
    dev, f32 = q.device, torch.float32
    log_f, b_gate, i_gate, cmax = torch.empty(4, B * NH, S_pad, device=dev, dtype=f32).unbind(0)
    _prepare_gates[(B * NH, NC)](
        i, f, _mask_bytes(mask, log_f), log_f, b_gate, i_gate, cmax, *_strides(i), *_strides(f), S,
        1.0 if cap is None else cap, NH=NH, L=L, HAS_CAP=cap is not None, HAS_MASK=mask is not None,
    )
    ieee = q.dtype == torch.float32
    C_states = torch.empty(B * NH, NC, DQK, DV, device=dev, dtype=_state_dtype(q.dtype))
    N_states = torch.empty(B * NH, NC, DQK, device=dev, dtype=f32)
    M_states = torch.empty(B * NH, NC + 1, device=dev, dtype=f32)
    C_out = torch.empty(B, NH, DQK, DV, device=dev, dtype=f32)
    N_out = torch.empty(B, NH, DQK, device=dev, dtype=f32)
    M_out = torch.empty(B, NH, device=dev, dtype=f32)
    has_initial = initial_state is not None
    C0, N0, M0 = (s.float().contiguous() for s in initial_state) if has_initial else (C_out, N_out, M_out)
    BK, BV = _fit(tiling.state_bk, DQK), _fit(tiling.state_bv, DV)
    _fw_states[(B * NH, triton.cdiv(DQK, BK), triton.cdiv(DV, BV))](
        k, v, b_gate, i_gate, cmax, C0, N0, M0, C_states, N_states, M_states, C_out, N_out, M_out,
        *_strides(k), *_strides(v),
        NH=NH, NC=NC, L=L, DQK=DQK, DV=DV, BK=BK, BV=BV, HAS_INITIAL=has_initial, IEEE=ieee,
        num_warps=tiling.state_warps, num_stages=tiling.state_stages,
    )
    # Unsaved statistics and an unused gate point at b_gate: the kernel stores none of them.
    m_pos, den = (torch.empty(B * NH, S_pad, device=dev, dtype=f32) for _ in range(2)) if save else (b_gate, b_gate)
    BT, BK, BV = min(tiling.out_bt, L), _fit(tiling.out_bk, DQK), _fit(tiling.out_bv, DV)
    if norm is None:
        o, weight, norm_eps = b_gate, b_gate, 0.0
        h = torch.empty(B, NH, S_pad, DV, device=dev, dtype=v.dtype)
        s_h, s_o = _strides(h), (0, 0)
    else:
        o, weight, norm_eps = norm
        o, weight = o if o.stride(-1) == 1 else o.contiguous(), weight.contiguous()
        h = torch.empty(B, S, NH * DV, device=dev, dtype=o.dtype)
        s_h, s_o = (h.stride(0), 0, h.stride(1)), o.stride()[:2]  # (batch, head: unused, position)
    _fw_outputs[(B * NH, NC * (L // BT), triton.cdiv(DV, BV))](
        q, k, v, h, b_gate, i_gate, cmax, m_pos, C_states, N_states, M_states, den, o, weight,
        *_strides(q), *_strides(k), *_strides(v), *s_h, *s_o,
        DQK**-0.5, eps, norm_eps, S,
        NH=NH, NC=NC, L=L, DQK=DQK, DV=DV, BT=BT, BK=BK, BV=BV, IEEE=ieee, SAVE=save, NORM=norm is not None,
        num_warps=tiling.out_warps, num_stages=tiling.out_stages,
    )
    saved = (q, k, v, h, log_f, b_gate, i_gate, m_pos, M_states, C_states, N_states, den, C_out, N_out, C0, N0,
             M0) if save else None
    return (h if norm is not None else h[:, :, :S]), (C_out, N_out, M_out), saved


def _backward(saved, f, S, L, eps, dh, dC, dn, dm, need_initial, tiling: Tiling):
    q, k, v, h, log_f, b_gate, i_gate, m_pos, M_states, C_states, N_states, den_raw, C_out, N_out, C0, N0, M0 = saved
    B, NH, S_pad, DQK = q.shape
    DV = v.shape[-1]
    NC = S_pad // L
    dev, f32 = q.device, torch.float32
    ieee = q.dtype == torch.float32
    dh = torch.zeros_like(h) if dh is None else _prepare(dh.to(h.dtype), S_pad)

    rden, dden_raw, dm_direct = (torch.empty(B * NH, S_pad, device=dev, dtype=f32) for _ in range(3))
    _denominator_grads[(B * NH, triton.cdiv(S_pad, 64))](
        dh, h, den_raw, m_pos, rden, dden_raw, dm_direct, *_strides(dh), *_strides(h), S_pad, eps,
        NH=NH, D=DV, BR=64, BD=_fit(128, DV),
    )

    DC_states = torch.empty(B * NH, NC, DQK, DV, device=dev, dtype=_state_dtype(q.dtype))
    DN_states = torch.empty(B * NH, NC, DQK, device=dev, dtype=f32)
    dC0 = torch.empty(B, NH, DQK, DV, device=dev, dtype=f32)
    dN0 = torch.empty(B, NH, DQK, device=dev, dtype=f32)
    has_final = dC is not None or dn is not None
    if has_final:
        dC_final = (dC if dC is not None else torch.zeros_like(C_out)).float().contiguous()
        dn_final = (dn if dn is not None else torch.zeros_like(N_out)).float().contiguous()
    else:  # not read by the kernels
        dC_final, dn_final = C_out, N_out
    scale = DQK**-0.5
    BK, BV = _fit(tiling.state_bk, DQK), _fit(tiling.state_bv, DV)
    _bw_states[(B * NH, triton.cdiv(DQK, BK), triton.cdiv(DV, BV))](
        q, dh, rden, dden_raw, b_gate, m_pos, M_states, dC_final, dn_final, DC_states, DN_states, dC0, dN0,
        *_strides(q), *_strides(dh), scale,
        NH=NH, NC=NC, L=L, DQK=DQK, DV=DV, BK=BK, BV=BV, HAS_FINAL_GRAD=has_final, IEEE=ieee,
        num_warps=tiling.bw_state_warps, num_stages=tiling.bw_state_stages,
    )
    BT, BK, BV = min(tiling.grad_bt, L), _fit(tiling.grad_bk, DQK), _fit(tiling.grad_bv, DV)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    common = dict(NH=NH, NC=NC, L=L, DQK=DQK, DV=DV, BT=BT, BK=BK, BV=BV, IEEE=ieee,
                  num_warps=tiling.grad_warps, num_stages=tiling.grad_stages)
    grid_k = (B * NH, NC * (L // BT), triton.cdiv(DQK, BK))
    rowsum = torch.empty(grid_k[2], B * NH, S_pad, device=dev, dtype=f32)  # per q/k-dim tile, summed below
    colsum = torch.empty_like(rowsum)
    _bw_dq[grid_k](
        q, k, v, dh, rden, dden_raw, b_gate, i_gate, m_pos, M_states, C_states, N_states, dq, rowsum,
        *_strides(q), *_strides(k), *_strides(v), *_strides(dh), scale, **common,
    )
    _bw_dk[grid_k](
        q, k, v, dh, rden, dden_raw, b_gate, i_gate, m_pos, M_states, DC_states, DN_states, dk, colsum,
        *_strides(q), *_strides(k), *_strides(v), *_strides(dh), scale, **common,
    )
    _bw_dv[(B * NH, NC * (L // BT), triton.cdiv(DV, BV))](
        q, k, dh, rden, b_gate, i_gate, m_pos, M_states, DC_states, dv,
        *_strides(q), *_strides(k), *_strides(dh), *_strides(v), scale, **common,
    )

    # Gate gradients from  sum_j dlogW_tj = q_t . dq_t  and  sum_t dlogW_tj = k_j . dk_j.
    # Without a final-state gradient (or a gradient of the final m) the kernel reads no `final` (`dm_final`).
    final = (C_out * dC_final).sum((-2, -1)) + (N_out * dn_final).sum(-1) if has_final else rden
    dm_final = dm.float().reshape(B * NH).contiguous() if dm is not None else rden
    di, df = (torch.empty(B, NH, S, device=dev, dtype=f32) for _ in range(2))
    dm0_chain = torch.empty(B * NH, device=dev, dtype=f32)
    _gate_grads[(B * NH,)](
        rowsum, colsum, dm_direct, log_f, i_gate, m_pos, M0, final, dm_final, f, di, df, dm0_chain,
        *_strides(f), S_pad, S,
        NH=NH, TILES=rowsum.shape[0], BLOCK=tiling.gate_block, HAS_INITIAL=need_initial, HAS_FINAL=has_final,
        HAS_DM=dm is not None, num_warps=4,
    )
    grads = [dq[:, :, :S], dk[:, :, :S], dv[:, :, :S], di, df]
    initial_grads = None
    if need_initial:
        dm0 = (C0 * dC0).sum((-2, -1)) + (N0 * dN0).sum(-1) + dm0_chain.view(B, NH)
        initial_grads = (dC0, dN0, dm0)
    return grads, initial_grads


class _MLSTMChunkwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, chunk_size, eps, tiling):
        initial = (C0, n0, m0) if C0 is not None else None
        h, (C, n, m), saved = _forward(q, k, v, i, f, initial, chunk_size, eps, tiling)
        ctx.save_for_backward(f, *saved)
        ctx.set_materialize_grads(False)  # an unused final state then skips its gradient's work, not zeros
        ctx.meta = (q.shape[2], chunk_size, eps, tiling, initial is not None,
                    [x.dtype for x in (q, k, v, i, f)], [x.dtype for x in initial] if initial else None)
        return h, C, n, m

    @staticmethod
    def backward(ctx, dh, dC, dn, dm):
        f, *saved = ctx.saved_tensors
        S, L, eps, tiling, has_initial, dtypes, initial_dtypes = ctx.meta
        grads, initial_grads = _backward(saved, f, S, L, eps, dh, dC, dn, dm, has_initial, tiling)
        out = [g.to(dt) for g, dt in zip(grads, dtypes)]
        if has_initial:
            out += [g.to(dt) for g, dt in zip(initial_grads, initial_dtypes)]
        else:
            out += [None, None, None]
        return (*out, None, None, None)


def mlstm_chunkwise_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial_state: MLSTMState | None = None,
    chunk_size: int | None = None,
    eps: float = 1e-6,
    tiling: Tiling | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """Chunkwise mLSTM on Triton, with autograd. Same arguments and results as
    :func:`xlstm_hf.kernels.mlstm_torch.mlstm_chunkwise`; `chunk_size` (a power of two >= 16) is the kernels'
    own (default 128); `tiling` overrides the block sizes (benchmarks; sizes for 2-byte inputs, see
    `Tiling.for_dtype`). When nothing needs a gradient it runs as :func:`mlstm_prefill_triton`."""
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, i, f, *(initial_state or ())))):
        # Inference: no autograd node, nothing saved for a backward.
        return mlstm_prefill_triton(q, k, v, i, f, initial_state, eps=eps, chunk_size=chunk_size, tiling=tiling)
    C0, n0, m0 = initial_state if initial_state is not None else (None, None, None)
    L, tiling = _chunk_size(chunk_size, q.shape[2]), (tiling or TILING).for_dtype(q.dtype)
    h, C, n, m = _MLSTMChunkwise.apply(q, k, v, i, f, C0, n0, m0, L, eps, tiling)
    return h, (C, n, m)


def mlstm_prefill_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial_state: MLSTMState | None = None,
    gate_soft_cap: float | None = None,
    mask: torch.Tensor | None = None,
    out_gate: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    eps: float = 1e-6,
    chunk_size: int | None = None,
    tiling: Tiling | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """The chunkwise forward for inference (no autograd), with the mLSTM layer's work around the cell fused in.

    q, k, v, the state and `chunk_size` as in :func:`mlstm_chunkwise_triton`; i and f (B, NH, S) are the gates'
    pre-activations, soft-capped here (`soft_cap(x, gate_soft_cap)`, None: as given) and padded where `mask` (B, S)
    is False (the position leaves the state untouched), in the gate preparation. With `out_gate` o (B, S, NH * DV)
    and `norm_weight` (NH * DV), returns `sigmoid(o) * (LayerNorm(h) * norm_weight)`, the head norm over each
    head's DV dims (eps `norm_eps`), as (B, S, NH * DV), from the output kernel's epilogue where its tile covers DV
    (else as :func:`xlstm_hf.kernels.elementwise_triton.head_norm_gate` does, after it); otherwise h (B, NH, S, DV).
    Each op of the soft cap and the norm is rounded to the activations' dtype, as the PyTorch modules' ops are.
    """
    if (out_gate is None) != (norm_weight is None):
        raise ValueError("pass out_gate and norm_weight together (the head norm and output gate), or neither")
    if out_gate is not None:
        (B, NH, S, _), DV = q.shape, v.shape[-1]
        check_shapes("mlstm_prefill_triton", q.device, out_gate=(out_gate, (B, S, NH * DV)),
                     norm_weight=(norm_weight, (NH * DV,)))
    L, tiling = _chunk_size(chunk_size, q.shape[2]), (tiling or TILING).for_dtype(q.dtype)
    fuse_norm = out_gate is not None and _fit(tiling.out_bv, v.shape[-1]) >= v.shape[-1]
    with torch.no_grad():
        out, state, _ = _forward(q, k, v, i, f, initial_state, L, eps, tiling, gate_soft_cap, mask,
                                 (out_gate, norm_weight, norm_eps) if fuse_norm else None, save=False)
        if out_gate is not None and not fuse_norm:
            out = head_norm_gate(out, out_gate, norm_weight, norm_eps)
    return out, state


def _chunk_size(chunk_size: int | None, length: int) -> int:
    """The kernels' chunk length: `chunk_size` (default 128; a power of two >= 16), no longer than the sequence
    needs."""
    L = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    if L < 16 or L & (L - 1):
        raise ValueError(f"chunk_size must be a power of two >= 16 for the Triton kernels, got {L}")
    return min(L, _pow2(length))


def mlstm_step_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    state: MLSTMState,
    eps: float = 1e-6,
    snapshot: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """One recurrent step, fused: updates the state tensors (C, n, m) in place and returns (h, state).

    q, k: (B, NH, DQK); v: (B, NH, DV); i, f: (B, NH); the state contiguous, in float32 or bfloat16. `snapshot`: a
    copy of (n, m) made by an earlier launch (`elementwise_triton.step_gates`), or None to copy them here.
    """
    C, n, m = state
    B, NH, DQK = q.shape
    DV = v.shape[-1]
    check_shapes("mlstm_step_triton", q.device, k=(k, q.shape), v=(v, (B, NH, DV)), i=(i, (B, NH)), f=(f, (B, NH)),
                 C=(C, (B, NH, DQK, DV)), n=(n, (B, NH, DQK)), m=(m, (B, NH)))
    if not (C.is_contiguous() and n.is_contiguous() and m.is_contiguous()):
        raise ValueError("mlstm_step_triton updates the state in place: C, n and m must be contiguous")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    h = torch.empty(B, NH, DV, device=v.device, dtype=v.dtype)
    BV = min(64, _pow2(DV))
    _step[(B * NH, triton.cdiv(DV, BV))](
        q, k, v, i, f, C, *(snapshot or (n.clone(), m.clone())), n, m, h,
        *q.stride()[:2], *k.stride()[:2], *v.stride()[:2], *i.stride(), *f.stride(), DQK**-0.5, eps,
        NH=NH, DQK=DQK, DV=DV, BK=_pow2(DQK), BV=BV,
    )
    return h, (C, n, m)
