"""Pure-PyTorch reference of the mLSTM cell (the specification the fused kernels are tested against).

Every function takes plain tensors in the layout the model produces:

    q, k: (B, NH, S, DQK)    v: (B, NH, S, DV)    i, f: (B, NH, S)   gate pre-activations (already soft-capped)
    state = (C, n, m):  C (B, NH, DQK, DV),  n (B, NH, DQK),  m (B, NH)

and returns ``h`` of shape (B, NH, S, DV) in the dtype of ``v`` together with the final state. The state is
kept in float32 (float64 when the inputs are float64). A padded position is expressed through its gates:
``i = -inf`` and ``f = +inf`` (so ``logsigmoid(f) = 0``) leave the state exactly untouched.

The equations are those of DESIGN.md (xLSTM 7B, arXiv 2503.13427):

    m_t = max(logsigmoid(f_t) + m_{t-1}, i_t)
    C_t = exp(logsigmoid(f_t) + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) k_t v_t^T      (n_t likewise with k_t)
    h_t = (q_t^T C_t / sqrt(DQK)) / (max(|q_t^T n_t / sqrt(DQK)|, exp(-m_t)) + eps)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

__all__ = [
    "MLSTMState",
    "mlstm_chunkwise",
    "mlstm_parallel",
    "mlstm_recurrent_sequence",
    "mlstm_recurrent_step",
    "pad_gates",
    "zero_state",
]


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def zero_state(
    batch_size: int, num_heads: int, qk_head_dim: int, v_head_dim: int, device=None, dtype=torch.float32
) -> MLSTMState:
    """The state before the first token: C = 0, n = 0, m = 0."""
    return (
        torch.zeros(batch_size, num_heads, qk_head_dim, v_head_dim, device=device, dtype=dtype),
        torch.zeros(batch_size, num_heads, qk_head_dim, device=device, dtype=dtype),
        torch.zeros(batch_size, num_heads, device=device, dtype=dtype),
    )


def pad_gates(i: torch.Tensor, f: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate pre-activations (B, S, NH) with the padded positions (`mask` (B, S) False) set so that they leave the
    state exactly untouched: input gate -inf (exp gives 0), forget gate +inf (logsigmoid gives 0)."""
    if mask is None:
        return i, f
    pad = ~mask[..., None]
    return i.masked_fill(pad, float("-inf")), f.masked_fill(pad, float("inf"))


def _initial_state(q: torch.Tensor, v: torch.Tensor, initial_state: MLSTMState | None) -> MLSTMState:
    dtype = _state_dtype(q.dtype)
    if initial_state is None:
        B, NH, _, DQK = q.shape
        return zero_state(B, NH, DQK, v.shape[-1], device=q.device, dtype=dtype)
    return tuple(s.to(dtype) for s in initial_state)


def mlstm_recurrent_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    state: MLSTMState,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, MLSTMState]:
    """One time step. q, k: (B, NH, DQK); v: (B, NH, DV); i, f: (B, NH); returns h (B, NH, DV) and the new state."""
    dtype, out_dtype = _state_dtype(q.dtype), v.dtype
    C, n, m = (s.to(dtype) for s in state)
    q, k, v, i, f = (x.to(dtype) for x in (q, k, v, i, f))
    log_f = F.logsigmoid(f)
    m_new = torch.maximum(log_f + m, i)
    f_act = torch.exp(log_f + m - m_new)
    i_act = torch.exp(i - m_new)
    C_new = f_act[..., None, None] * C + i_act[..., None, None] * (k[..., :, None] * v[..., None, :])
    n_new = f_act[..., None] * n + i_act[..., None] * k
    q_scaled = q * q.shape[-1] ** -0.5
    numerator = torch.einsum("bhd,bhde->bhe", q_scaled, C_new)
    denominator = torch.maximum((q_scaled * n_new).sum(-1).abs(), torch.exp(-m_new)) + eps
    h = numerator / denominator[..., None]
    return h.to(out_dtype), (C_new, n_new, m_new)


def mlstm_recurrent_sequence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial_state: MLSTMState | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, MLSTMState]:
    """The recurrent form over a whole sequence: a loop of :func:`mlstm_recurrent_step`."""
    state = _initial_state(q, v, initial_state)
    hs = []
    for t in range(q.shape[2]):
        h, state = mlstm_recurrent_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], state, eps)
        hs.append(h)
    return (torch.stack(hs, dim=2) if hs else v.new_zeros(v.shape)), state


def mlstm_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial_state: MLSTMState | None = None,
    chunk_size: int = 64,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, MLSTMState]:
    """The chunkwise form: a recurrence over chunk states plus the parallel form inside each chunk.

    Any sequence length: the tail is padded to a whole chunk with positions that leave the state untouched
    (i = -inf, f = +inf), so the final state is exact.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    C, n, m = _initial_state(q, v, initial_state)
    dtype = C.dtype
    B, NH, S, DQK = q.shape
    DV, out_dtype = v.shape[-1], v.dtype
    if S == 0:
        return v.new_zeros(B, NH, 0, DV), (C, n, m)
    L = min(chunk_size, S)
    NC = -(-S // L)
    pad = NC * L - S
    q, k, v, i, f = (x.to(dtype) for x in (q, k, v, i, f))
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        i = F.pad(i, (0, pad), value=float("-inf"))
        f = F.pad(f, (0, pad), value=float("inf"))
    q = q.view(B, NH, NC, L, DQK) * DQK**-0.5
    k = k.view(B, NH, NC, L, DQK)
    v = v.view(B, NH, NC, L, DV)
    i = i.view(B, NH, NC, L)
    b = F.logsigmoid(f).view(B, NH, NC, L).cumsum(-1)  # b_j: log forget product from the chunk start to j
    g = b[..., -1]  # whole-chunk log forget

    # Inter-chunk recurrence: the state entering each chunk (C_{k-1}, n_{k-1}, m_{k-1}), then the final state.
    a = g[..., None] - b + i  # log weight of token j in the chunk-end state
    a_max = a.max(-1).values
    C_in, n_in, m_in = [], [], []
    for c in range(NC):
        C_in.append(C), n_in.append(n), m_in.append(m)
        m_next = torch.maximum(g[..., c] + m, a_max[..., c])
        decay = torch.exp(g[..., c] + m - m_next)
        weights = torch.exp(a[..., c, :] - m_next[..., None])
        k_weighted = k[:, :, c] * weights[..., None]
        C = decay[..., None, None] * C + k_weighted.transpose(-1, -2) @ v[:, :, c]
        n = decay[..., None] * n + k_weighted.sum(-2)
        m = m_next
    C_in, n_in, m_in = torch.stack(C_in, 2), torch.stack(n_in, 2), torch.stack(m_in, 2)

    # Intra-chunk parallel form, all chunks at once.
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    log_d = (b[..., :, None] - b[..., None, :] + i[..., None, :]).masked_fill(~causal, float("-inf"))
    m_inter = b + m_in[..., None]  # log weight of the incoming state at position i
    m_comb = torch.maximum(m_inter, log_d.max(-1).values)
    d = torch.exp(log_d - m_comb[..., None])
    s = (q @ k.transpose(-1, -2)) * d
    q_inter = q * torch.exp(m_inter - m_comb)[..., None]
    numerator = q_inter @ C_in + s @ v
    denominator = (q_inter * n_in[..., None, :]).sum(-1) + s.sum(-1)
    denominator = torch.maximum(denominator.abs(), torch.exp(-m_comb)) + eps
    h = (numerator / denominator[..., None]).reshape(B, NH, NC * L, DV)[:, :, :S]
    return h.to(out_dtype), (C, n, m)


def mlstm_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial_state: MLSTMState | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, MLSTMState]:
    """The fully parallel (quadratic) form: one chunk spanning the whole sequence."""
    return mlstm_chunkwise(q, k, v, i, f, initial_state, chunk_size=max(q.shape[2], 1), eps=eps)
