"""Pure-PyTorch reference of the sLSTM cell (arXiv 2405.04517), the specification its kernels are tested against.

Layout, per head (NH heads of width DH, hidden width H = NH * DH):

    gates_x: (B, S, 4, NH, DH)   input pre-activations of the gates (i, f, z, o), input projection and bias included
    R:       (NH, DH, 4, DH)     block-diagonal recurrent weights, R[h, d, g, e]: from h_{t-1}[d] to gate g, unit e
    state = (h, c, n, m), each (B, NH, DH)
    mask:    (B, S) bool         False marks a padded position, which leaves the state exactly untouched

The recurrence (exponential input gate with normaliser n and stabiliser m):

    (i~, f~, z~, o~) = gates_x_t + h_{t-1} R
    m_t = max(logsigmoid(f~) + m_{t-1}, i~)        (m_t = i~ on the first step: n_{t-1} = 0 marks a fresh state)
    i_t = exp(i~ - m_t),  f_t = exp(logsigmoid(f~) + m_{t-1} - m_t)
    c_t = f_t c_{t-1} + i_t tanh(z~),  n_t = f_t n_{t-1} + i_t,  h_t = sigmoid(o~) c_t / n_t

A fresh state is all zeros; "n = 0" then stands for m = -inf (the `xlstm` package's kernels test n == 0 the same way),
so the first step's gates do not depend on the initial m. The state is kept in float32 (float64 for float64 inputs);
h is returned in the dtype of `gates_x`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

__all__ = ["SLSTMState", "slstm_recurrent_sequence", "slstm_recurrent_step", "slstm_zero_state"]


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def slstm_zero_state(batch_size: int, num_heads: int, head_dim: int, device=None,
                     dtype: torch.dtype = torch.float32) -> SLSTMState:
    """The state before the first token: h = c = n = m = 0."""
    return tuple(torch.zeros(batch_size, num_heads, head_dim, device=device, dtype=dtype) for _ in range(4))


def slstm_recurrent_step(
    gates_x: torch.Tensor, R: torch.Tensor, state: SLSTMState, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, SLSTMState]:
    """One time step. gates_x: (B, 4, NH, DH); mask: (B,) bool or None. Returns h_t (B, NH, DH) and the new state."""
    dtype = _state_dtype(gates_x.dtype)
    h, c, n, m = (s.to(dtype) for s in state)
    raw = gates_x.to(dtype) + torch.einsum("bhd,hdge->bghe", h, R.to(dtype))
    i, f, z, o = raw.unbind(1)
    # A fresh state (n = 0) has m = -inf: the forget gate is then exactly 0 and m_t = i~.
    log_f_plus_m = torch.where(n == 0, float("-inf"), F.logsigmoid(f) + m)
    m_new = torch.maximum(log_f_plus_m, i)
    i_act = torch.exp(i - m_new)
    f_act = torch.exp(log_f_plus_m - m_new)
    c_new = f_act * c + i_act * torch.tanh(z)
    n_new = f_act * n + i_act
    h_new = torch.sigmoid(o) * c_new / n_new
    new_state = (h_new, c_new, n_new, m_new)
    if mask is not None:
        keep = mask.to(torch.bool)[:, None, None]
        new_state = tuple(torch.where(keep, new, old) for new, old in zip(new_state, (h, c, n, m)))
    return new_state[0].to(gates_x.dtype), new_state


def slstm_recurrent_sequence(
    gates_x: torch.Tensor,
    R: torch.Tensor,
    initial_state: SLSTMState | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, SLSTMState]:
    """The recurrence over a sequence: gates_x (B, S, 4, NH, DH) -> h (B, S, NH, DH) and the final state."""
    B, S, _, NH, DH = gates_x.shape
    dtype = _state_dtype(gates_x.dtype)
    if initial_state is None:
        state = slstm_zero_state(B, NH, DH, device=gates_x.device, dtype=dtype)
    else:
        state = tuple(s.to(dtype) for s in initial_state)
    hs = []
    for t in range(S):
        h, state = slstm_recurrent_step(gates_x[:, t], R, state, None if mask is None else mask[:, t])
        hs.append(h)
    return (torch.stack(hs, dim=1) if hs else gates_x.new_zeros(B, 0, NH, DH)), state
