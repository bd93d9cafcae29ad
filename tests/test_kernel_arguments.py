"""The Triton kernels' entry points at their edges. A kernel indexes raw pointers with sizes taken from its first
inputs, so arguments of another shape must raise, naming the argument, instead of being read or written out of
bounds; and masks of any dtype, strided views and empty inputs must give what the PyTorch ops give. Under Triton's
interpreter on the CPU (float32), on a GPU in bfloat16."""

import pytest
import torch

from helpers import DEVICE, KERNEL_DTYPES, close, randn
from xlstm_hf.kernels import mlstm, mlstm_recurrent_sequence, mlstm_recurrent_step, pad_gates, zero_state
from xlstm_hf.modeling_xlstm import XLSTMRMSNorm, soft_cap

pytest.importorskip("triton")
from xlstm_hf.kernels import elementwise_triton as fused  # noqa: E402
from xlstm_hf.kernels.decode_triton import skinny_linear  # noqa: E402
from xlstm_hf.kernels.mlstm_triton import mlstm_chunkwise_triton, mlstm_prefill_triton, mlstm_step_triton  # noqa: E402
from xlstm_hf.kernels.slstm_torch import slstm_recurrent_sequence  # noqa: E402
from xlstm_hf.kernels.slstm_triton import slstm_triton  # noqa: E402

DTYPE = KERNEL_DTYPES[0]
B, NH, S, DQK, DV = 2, 2, 9, 16, 16


def cell_inputs(batch=B, length=S):
    q, k = randn(batch, NH, length, DQK, dtype=DTYPE), randn(batch, NH, length, DQK, dtype=DTYPE)
    v = randn(batch, NH, length, DV, dtype=DTYPE)
    i, f = randn(batch, NH, length, dtype=torch.float32), randn(batch, NH, length, dtype=torch.float32) + 3
    return q, k, v, i, f


def test_a_state_of_another_shape_is_refused_not_read_out_of_bounds():
    q, k, v, i, f = cell_inputs()
    one_row = zero_state(1, NH, DQK, DV, device=DEVICE)
    narrow = (torch.zeros(B, NH, DQK, DV // 2, device=DEVICE), *zero_state(B, NH, DQK, DV, device=DEVICE)[1:])
    with pytest.raises(ValueError, match=r"mlstm_prefill_triton: C has shape \(1, 2, 16, 16\), expected \(2, 2"):
        mlstm_prefill_triton(q, k, v, i, f, one_row)
    with pytest.raises(ValueError, match="mlstm_chunkwise_triton: C has shape"):
        mlstm_chunkwise_triton(q.requires_grad_(), k, v, i, f, narrow)
    with pytest.raises(ValueError, match="mlstm_step_triton: C has shape"):
        mlstm_step_triton(q[:, :, 0].detach(), k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], one_row)
    with pytest.raises(ValueError, match="mlstm_prefill_triton: v has shape"):
        mlstm_prefill_triton(q.detach(), k, v[:1], i, f)
    gates, R = randn(B, S, 4, NH, DV, dtype=DTYPE), randn(NH, DV, 4, DV, dtype=torch.float32, scale=0.1)
    with pytest.raises(ValueError, match=r"slstm_triton: initial_state\[0\] has shape \(1, 2, 16\)"):
        slstm_triton(gates, R, tuple(torch.zeros(1, NH, DV, device=DEVICE) for _ in range(4)))
    with pytest.raises(ValueError, match="slstm_triton: R has shape"):
        slstm_triton(gates, R[:, :8])


def test_masks_of_any_dtype_pad_as_a_bool_mask_does_and_a_wrong_length_is_refused():
    q, k, v, i, f = cell_inputs()
    keep = torch.ones(B, S, dtype=torch.bool, device=DEVICE)
    keep[0, :4] = False
    # The reference: the float64 recurrence on the soft-capped gates, padded where the mask is False.
    ref_i, ref_f = pad_gates(soft_cap(i.double(), 15.0).transpose(1, 2), soft_cap(f.double(), 15.0).transpose(1, 2),
                             keep)  # (B, S, NH)
    ref, _ = mlstm_recurrent_sequence(q.double(), k.double(), v.double(), ref_i.transpose(1, 2), ref_f.transpose(1, 2))
    for mask in (keep, keep.long(), keep.float()):  # an attention mask is int64
        h, _ = mlstm_prefill_triton(q, k, v, i, f, gate_soft_cap=15.0, mask=mask)
        close(h[:, :, 4:], ref[:, :, 4:].to(h.dtype))  # the first row's padded positions: no defined output
        close(h[1], ref[1].to(h.dtype))
        cap_i, cap_f = fused.soft_cap_gates(i.transpose(1, 2), f.transpose(1, 2), 15.0, mask)
        assert torch.equal(cap_i.isinf(), ref_i.isinf())
        close(cap_f[keep], ref_f[keep].to(cap_f.dtype))
    with pytest.raises(ValueError, match=r"mlstm_prefill_triton: mask has shape \(2, 12\), expected \(2, 9\)"):
        mlstm_prefill_triton(q, k, v, i, f, mask=torch.ones(B, S + 3, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="soft_cap_gates: mask has shape"):
        fused.soft_cap_gates(i.transpose(1, 2), f.transpose(1, 2), 15.0, keep[:, :-1])
    gates, R = randn(B, S, 4, NH, DV, dtype=DTYPE), randn(NH, DV, 4, DV, dtype=torch.float32, scale=0.1)
    with pytest.raises(ValueError, match="slstm_triton: mask has shape"):
        slstm_triton(gates, R, mask=keep[:1])
    h, _ = slstm_triton(gates, R, mask=keep.long())
    close(h[1], slstm_recurrent_sequence(gates.double(), R.double(), mask=keep)[0][1].to(h.dtype))


def test_step_gates_read_gates_strided_across_heads():
    both = randn(B, 2 * NH, dtype=DTYPE, scale=20)
    i, f = both[:, 0::2], both[:, 1::2]  # every other column: head stride 2
    n, m = torch.rand(B, NH, DQK, device=DEVICE), torch.randn(B, NH, device=DEVICE)
    ours_i, ours_f, n_copy, m_copy = fused.step_gates(i, f, 15.0, None, n, m)
    close(ours_i, soft_cap(i.float(), 15.0).to(DTYPE))
    close(ours_f, soft_cap(f.float(), 15.0).to(DTYPE))
    assert torch.equal(n_copy, n) and torch.equal(m_copy, m)


def test_strided_weights_and_biases_are_read_as_their_values():
    width = 64
    weight = randn(width, 2, dtype=DTYPE)[:, 0]  # stride 2
    norm = XLSTMRMSNorm(width).to(DEVICE, DTYPE)
    norm.weight.data = weight.contiguous()
    x = randn(3, width, dtype=DTYPE)
    with torch.no_grad():
        close(fused.rms_norm(x, weight, norm.eps)[0], norm(x))
    w, biases = randn(8, width, dtype=DTYPE), randn(8, 2, dtype=DTYPE)
    close(skinny_linear(x, w, biases[:, 1]), (x.float() @ w.float().t() + biases[:, 1].float()).to(DTYPE))
    with pytest.raises(ValueError, match="gated: weight must have 2N rows"):
        skinny_linear(x, w[:7], gated=True)
    with pytest.raises(ValueError, match=r"skinny_linear: bias has shape \(4,\), expected \(8,\)"):
        skinny_linear(x, w, biases[:4, 0])


def test_empty_inputs_give_empty_outputs():
    i = torch.zeros(0, S, NH, device=DEVICE, dtype=DTYPE)
    out_i, out_f = fused.soft_cap_gates(i, i, 15.0)
    assert out_i.shape == out_f.shape == (0, S, NH)
    empty = torch.zeros(B, 0, NH, device=DEVICE, dtype=DTYPE)
    assert fused.soft_cap_gates(empty, empty, 15.0, torch.ones(B, 0, device=DEVICE))[0].shape == (B, 0, NH)


def test_mlstm_refuses_a_backend_it_does_not_know():
    q, k, v, i, f = cell_inputs()
    with pytest.raises(ValueError, match="backend must be 'torch' or 'triton'.*'tritn'"):
        mlstm(q, k, v, i, f, backend="tritn")
    # The resolved names still work: the PyTorch step equals the recurrent reference.
    state = zero_state(B, NH, DQK, DV, device=DEVICE)
    h, _ = mlstm(q[:, :, :1], k[:, :, :1], v[:, :, :1], i[:, :, :1], f[:, :, :1], state, backend="torch")
    ref, _ = mlstm_recurrent_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], state)
    close(h[:, :, 0], ref)
