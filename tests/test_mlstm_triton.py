"""The Triton kernels against the float64 recurrent reference: outputs, final states and every gradient.

On the CPU they run in Triton's interpreter (fp32/fp16: its bf16 dot is wrong); on a GPU the same tests also run at
the 7B's shapes in bf16 (`pytest tests/test_mlstm_triton.py` on the device machine).
"""

import dataclasses

import pytest
import torch

from helpers import HALF_DTYPES

pytest.importorskip("triton")

from xlstm_hf.kernels import mlstm_recurrent_sequence, mlstm_recurrent_step  # noqa: E402
from xlstm_hf.kernels.mlstm_torch import pad_gates  # noqa: E402
from xlstm_hf.kernels.mlstm_triton import (  # noqa: E402
    TILING, mlstm_chunkwise_triton, mlstm_prefill_triton, mlstm_step_triton,
)

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"


def make_inputs(B, NH, S, DQK, DV, dtype, seed=0, with_state=True, i_offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    inputs = [rand(B, NH, S, DQK), rand(B, NH, S, DQK), rand(B, NH, S, DV), 3 * rand(B, NH, S) + i_offset,
              3 * rand(B, NH, S) + 2]
    state = (rand(B, NH, DQK, DV), rand(B, NH, DQK).abs(), rand(B, NH)) if with_state else None
    to = lambda x: x.to(DEVICE, dtype)  # noqa: E731
    return [to(x) for x in inputs], (tuple(s.to(DEVICE, torch.float32) for s in state) if state else None)


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def left_padded_gates(i, f, padding):
    """The model's padding of the gates (`pad_gates`) for the first `padding[b]` positions of row b."""
    B, NH, S = i.shape
    mask = torch.arange(S, device=i.device) >= torch.tensor(padding, device=i.device)[:, None]
    i, f = pad_gates(i.transpose(1, 2), f.transpose(1, 2), mask)
    return i.transpose(1, 2), f.transpose(1, 2)


def check_against_reference(B, NH, S, DQK, DV, dtype, chunk_size, with_state, tol, tiling=None, i_offset=0.0,
                            loss_on_final_state=True, padding=None):
    inputs, state = make_inputs(B, NH, S, DQK, DV, dtype, with_state=with_state, i_offset=i_offset)
    leaves = [x.clone().requires_grad_() for x in inputs + (list(state) if state else [])]
    ref_leaves = [x.detach().double().clone().requires_grad_() for x in leaves]

    def split(xs):
        q, k, v, i, f = xs[:5]
        if padding is not None:
            i, f = left_padded_gates(i, f, padding)
        return [q, k, v, i, f], tuple(xs[5:]) if state else None

    h, final = mlstm_chunkwise_triton(*split(leaves)[0], split(leaves)[1], chunk_size=chunk_size, tiling=tiling)
    h_ref, final_ref = mlstm_recurrent_sequence(*split(ref_leaves)[0], split(ref_leaves)[1])
    assert h.dtype == dtype and all(s.dtype == torch.float32 for s in final)
    errors = {"h": relative_error(h, h_ref)}
    errors.update({name: relative_error(a, b) for name, a, b in zip("Cnm", final, final_ref)})
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(DEVICE) for x in (h_ref, *final_ref)]
    used = 4 if loss_on_final_state else 1  # without: the kernels' backward gets no final-state gradient at all
    sum((x.double() * w).sum() for x, w in zip((h, *final)[:used], weights)).backward()
    sum((x * w).sum() for x, w in zip((h_ref, *final_ref)[:used], weights)).backward()
    names = ["dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"]
    errors.update({name: relative_error(a.grad, b.grad) for name, a, b in zip(names, leaves, ref_leaves)})
    bad = {name: err for name, err in errors.items() if not err <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"


@pytest.mark.parametrize("S", [1, 17, 100, 257])
@pytest.mark.parametrize("DQK, DV, chunk_size", [(16, 16, 16), (24, 40, 32), (32, 48, 64)])
def test_chunkwise_float32(S, DQK, DV, chunk_size):
    check_against_reference(2, 2, S, DQK, DV, torch.float32, chunk_size, with_state=True, tol=5e-4)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("i_offset", [0.0, -8.0])
def test_gate_gradient_scan_carries_across_blocks(with_state, i_offset):
    # Blocks of 16 positions: the reverse scans over the sequence carry their sums across 7 blocks. Low input gates
    # keep the stabiliser on its forget branch for long runs, so the gradient of m travels across blocks too.
    tiling = dataclasses.replace(TILING, gate_block=16)
    check_against_reference(1, 2, 100, 16, 16, torch.float32, 16, with_state=with_state, tol=5e-4, tiling=tiling,
                            i_offset=i_offset)


def test_chunkwise_loss_on_h_only():
    check_against_reference(2, 2, 50, 16, 24, torch.float32, 16, with_state=True, tol=5e-4, loss_on_final_state=False)


@pytest.mark.parametrize("S", [17, 100])
def test_chunkwise_without_initial_state(S):
    check_against_reference(1, 3, S, 16, 32, torch.float32, 16, with_state=False, tol=5e-4)


@pytest.mark.parametrize("with_state", [False, True])
def test_chunkwise_left_padded_rows(with_state):
    # The model's padding: input gate -inf, forget gate +inf, whole chunks of it and a chunk that it ends inside.
    check_against_reference(3, 2, 75, 16, 24, torch.float32, 16, with_state=with_state, tol=5e-4, padding=[0, 37, 5])


def test_chunkwise_float16():
    check_against_reference(1, 2, 50, 32, 32, torch.float16, 16, with_state=True, tol=2e-2)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("S", [5, 17, 40, 64, 128])  # chunks of 16, 32, 64 and 128
@pytest.mark.parametrize("DQK, DV", [(16, 32), (32, 64)])
def test_small_heads_in_half_precision(DQK, DV, S, dtype):
    # The default 128-position chunks, cut to fit: on an H200 (Triton 3.6) heads this small crashed or gave wrong
    # outputs and gradients in 2-byte dtypes with 64-position chunks, while 128-position chunks and float32 were right.
    check_against_reference(2, 2, S, DQK, DV, dtype, None, with_state=False, tol=3e-2)


@pytest.mark.skipif(not GPU, reason="7B shapes in bf16 need the GPU (the interpreter's bf16 dot is wrong)")
@pytest.mark.parametrize("S", [1, 17, 100, 257, 1000])
def test_chunkwise_7b_shapes_bfloat16(S):
    check_against_reference(1, 8, S, 256, 512, torch.bfloat16, 128, with_state=True, tol=3e-2)


@pytest.mark.skipif(not GPU, reason="the 7B's head dims take minutes in the interpreter")
@pytest.mark.parametrize("with_state", [False, True])
def test_chunkwise_7b_shapes_float32_left_padded(with_state):
    check_against_reference(2, 8, 300, 256, 512, torch.float32, 128, with_state=with_state, tol=5e-4,
                            padding=[0, 37])


def check_prefill(B, NH, S, DQK, DV, dtype, with_state, cap, norm, tol, tiling=None):
    """`mlstm_prefill_triton` (soft cap, left padding of row 1, head norm and output gate) against the float64
    recurrent reference followed by the same ops in float64."""
    (q, k, v, i, f), state = make_inputs(B, NH, S, DQK, DV, dtype, with_state=with_state)
    i, f = 6 * i, 6 * f  # pre-activations, some beyond the cap
    gen = torch.Generator().manual_seed(2)
    o = torch.randn(B, S, NH * DV, generator=gen).to(DEVICE, dtype)
    weight = (1 + torch.randn(NH * DV, generator=gen)).to(DEVICE, dtype)
    mask = torch.ones(B, S, dtype=torch.bool, device=DEVICE)
    mask[min(1, B - 1), : S // 3] = False
    norm_args = (o, weight, 1e-5) if norm else (None, None)
    out, final = mlstm_prefill_triton(q, k, v, i, f, state, cap, mask, *norm_args, tiling=tiling)

    # The soft cap in the activations' dtype, as the model's modules compute it (h is sensitive to the gates' rounding)
    i_ref, f_ref = ((x if cap is None else cap * torch.tanh(x / cap)).double() for x in (i, f))
    i_ref, f_ref = (x.transpose(1, 2) for x in pad_gates(i_ref.transpose(1, 2), f_ref.transpose(1, 2), mask))
    state_ref = tuple(x.double() for x in state) if state else None
    ref, final_ref = mlstm_recurrent_sequence(q.double(), k.double(), v.double(), i_ref, f_ref, state_ref)
    if norm:
        heads = torch.nn.functional.layer_norm(ref.transpose(1, 2), (DV,), eps=1e-5)
        ref = torch.sigmoid(o.double()) * heads.flatten(-2) * weight.double()
    assert out.shape == ref.shape and out.dtype == dtype
    errors = {"out": relative_error(out, ref)}
    errors.update({name: relative_error(a, b) for name, a, b in zip("Cnm", final, final_ref)})
    bad = {name: err for name, err in errors.items() if not err <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("cap, norm", [(None, False), (15.0, False), (15.0, True)])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 5e-4), (torch.float16, 2e-2)])
def test_prefill_fuses_the_gate_soft_cap_padding_and_head_norm(with_state, cap, norm, dtype, tol):
    check_prefill(2, 2, 75, 16, 32, dtype, with_state, cap, norm, tol)


def test_prefill_head_norm_after_the_kernel_when_its_tile_is_narrower_than_v():
    narrow = dataclasses.replace(TILING, out_bv=16)  # v has 32 dims: the epilogue cannot see a whole head
    check_prefill(2, 2, 40, 16, 32, torch.float32, True, 15.0, True, 5e-4, tiling=narrow)


# The prefill's fused head norm and output gate (`_head_norm`, `_output_gate` in the mLSTM output kernel's epilogue)
# at the head dims of small models (hidden 64-256 over 2-4 heads, and non-powers of two: tiles of 64 masked past the
# head) in 2-byte dtypes, at lengths that give each chunk length (16: up to 16 positions, 32, 64, 128, and several
# chunks with a tail); also the cell's output alone, as the xLSTM[a:b] stacks' mLSTM layers take it in inference.
# Against the float64 recurrence followed by the same ops in float64 (`check_prefill`). The CPU runs fp16 at two
# shapes (chunks of 32 and 64); bf16 only on a GPU (the interpreter's bf16 dot is wrong).
# Tolerances: at all these shapes the interpreter's fp16 was at most 2.1e-3 off (the output; the state 3.6e-4); bf16
# rounds 8 times coarser.
PREFILL_TOL = {torch.float16: 1e-2, torch.bfloat16: 4e-2}
SMALL_PREFILLS = ([(DQK, DV, S) for DQK, DV in ((16, 32), (24, 40), (32, 64))
                   for S in (5, 16, 17, 40, 64, 128, 300)] if GPU else [(16, 32, 17), (24, 40, 40)])
PREFILL_VARIANTS = ([(15.0, True, False), (15.0, True, True), (None, False, True)] if GPU
                    else [(15.0, True, True)])  # (cap, norm, with_state)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("DQK, DV, S", SMALL_PREFILLS)
@pytest.mark.parametrize("cap, norm, with_state", PREFILL_VARIANTS)
def test_prefill_head_norm_epilogue_at_small_heads_in_half_precision(dtype, DQK, DV, S, cap, norm, with_state):
    check_prefill(2, 2, S, DQK, DV, dtype, with_state, cap, norm, PREFILL_TOL[dtype])


@pytest.mark.skipif(not GPU, reason="7B shapes in bf16 need the GPU (the interpreter's bf16 dot is wrong)")
@pytest.mark.parametrize("S", [1, 300, 1000])
def test_prefill_7b_shapes_bfloat16(S):
    check_prefill(2, 8, S, 256, 512, torch.bfloat16, True, 15.0, True, 3e-2)


def test_prefill_refuses_a_gate_without_its_norm():
    (q, k, v, i, f), _ = make_inputs(1, 2, 8, 16, 16, torch.float32)
    with pytest.raises(ValueError, match="out_gate and norm_weight"):
        mlstm_prefill_triton(q, k, v, i, f, out_gate=torch.zeros(1, 8, 32, device=DEVICE))


def test_inference_needs_no_autograd_node_and_matches_the_training_forward():
    inputs, state = make_inputs(2, 2, 50, 16, 24, torch.float32)
    with torch.no_grad():
        h, final = mlstm_chunkwise_triton(*inputs, state, chunk_size=16)
    assert h.grad_fn is None
    leaves = [x.clone().requires_grad_() for x in inputs]
    h_train, final_train = mlstm_chunkwise_triton(*leaves, state, chunk_size=16)
    assert h_train.grad_fn is not None
    assert torch.equal(h, h_train.detach()) and all(torch.equal(a, b.detach()) for a, b in zip(final, final_train))


@pytest.mark.parametrize("DQK, DV, state_dtype", [(16, 16, torch.float32), (24, 40, torch.float32),
                                                   (32, 64, torch.bfloat16)] + ([(256, 512, torch.float32)]
                                                                                if GPU else []))
@pytest.mark.parametrize("strided", [False, True])
def test_step_updates_the_state_in_place(DQK, DV, state_dtype, strided):
    inputs, state = make_inputs(3, 2, 1, DQK, DV, torch.float32)
    q, k, v, i, f = (x[:, :, 0] for x in inputs)
    if strided:  # views of one projection's output, as the packed projections of the model give them
        projection = torch.cat([x.flatten(1) for x in (q, k, v, i, f)], dim=1)
        q, k, v, i, f = (part.view(x.shape) for part, x in zip(
            projection.split([x[0].numel() for x in (q, k, v, i, f)], dim=1), (q, k, v, i, f)))
        assert not q.is_contiguous()
    state = tuple(s.to(state_dtype).contiguous() for s in state)
    expected_h, expected_state = mlstm_recurrent_step(*(x.double() for x in (q, k, v, i, f)),
                                                      tuple(s.double() for s in state))
    pointers = [s.data_ptr() for s in state]
    h, new_state = mlstm_step_triton(q, k, v, i, f, state)
    assert [s.data_ptr() for s in new_state] == pointers and all(a is b for a, b in zip(new_state, state))
    tol = 1e-5 if state_dtype == torch.float32 else 2e-2
    assert relative_error(h, expected_h) < tol
    for got, want in zip(new_state, expected_state):
        assert relative_error(got, want) < tol


@pytest.mark.parametrize("flags", [(True, True, True), (False, False, False)])
def test_gate_gradient_scan_against_a_sequential_loop(flags):
    # `_gate_grads` on its own, against its docstring's recurrences run position by position in float64: the gradient
    # of the stabiliser is too small a part of the model's gradients for the end-to-end tests to see a wrong carry.
    from xlstm_hf.kernels.mlstm_triton import _gate_grads

    has_initial, has_final, has_dm = flags
    BH, NH, S, S_pad, tiles = 4, 2, 90, 100, 2
    gen = torch.Generator().manual_seed(3)
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    rowsum, colsum, dm_direct = rand(tiles, BH, S_pad), rand(tiles, BH, S_pad), rand(BH, S_pad)
    log_f, i_gate, m_pos = -rand(BH, S_pad).abs(), rand(BH, S_pad), rand(BH, S_pad)
    m0, final, dm_final, f = rand(BH), rand(BH), rand(BH), rand(BH // NH, NH, S)
    di, df, dm0 = torch.empty(BH, S), torch.empty(BH, S), torch.empty(BH)
    to = lambda x: x.to(DEVICE).contiguous()  # noqa: E731
    outs = [to(x) for x in (di, df, dm0)]
    _gate_grads[(BH,)](*(to(x) for x in (rowsum, colsum, dm_direct, log_f, i_gate, m_pos, m0, final, dm_final, f)),
                       *outs, *f.stride(), S_pad, S, NH=NH, TILES=tiles, BLOCK=16, HAS_INITIAL=has_initial,
                       HAS_FINAL=has_final, HAS_DM=has_dm)
    rs, cs = rowsum.double().sum(0), colsum.double().sum(0)
    for bh in range(BH):
        dm = dm_direct[bh].double() - rs[bh]
        dm[-1] += (-final[bh] if has_final else 0) + (dm_final[bh] if has_dm else 0)
        start = m0[bh].item() if has_initial else 0.0
        m_prev = torch.cat([torch.tensor([start], dtype=torch.float64), m_pos[bh, :-1].double()])
        forget = (log_f[bh].double() + m_prev >= i_gate[bh].double()).double()
        g, tail = torch.zeros(S_pad, dtype=torch.float64), 0.0
        d_log_f = torch.zeros(S_pad, dtype=torch.float64)
        for t in reversed(range(S_pad)):
            g[t] = dm[t] + (forget[t + 1] * g[t + 1] if t + 1 < S_pad else 0.0)
            tail += rs[bh, t] - cs[bh, t] + (final[bh] if has_final and t == S_pad - 1 else 0)
            d_log_f[t] = tail + forget[t] * g[t]
        d_i = cs[bh] + (1 - forget) * g
        expected_df = d_log_f[:S] * torch.sigmoid(-f.view(BH, S)[bh].double())
        assert torch.allclose(outs[0][bh].cpu().double(), d_i[:S], atol=1e-4)
        assert torch.allclose(outs[1][bh].cpu().double(), expected_df, atol=1e-4)
        assert abs(outs[2][bh].item() - (forget[0] * g[0]).item()) < 1e-4


def test_fp16_chunk_states_keep_the_range_of_the_state():
    # k, v ~16 under a forget gate near 1: the state grows past 65504, fp16's largest value, after ~250 tokens, while
    # h, a normalised output, stays small. The chunk states that the output kernel reads were fp16 and became inf.
    gen = torch.Generator().manual_seed(0)
    B, NH, S, D = 1, 1, 320, 16
    q = torch.randn(B, NH, S, D, generator=gen)
    k, v = (16 + torch.rand(B, NH, S, D, generator=gen) for _ in range(2))
    i, f = torch.zeros(B, NH, S), torch.full((B, NH, S), 12.0)
    q, k, v = (x.to(DEVICE, torch.float16).requires_grad_() for x in (q, k, v))
    h, (C, _, _) = mlstm_chunkwise_triton(q, k, v, i.to(DEVICE), f.to(DEVICE), chunk_size=16)
    ref_inputs = [x.detach().double().cpu().requires_grad_() for x in (q, k, v)]
    ref, (ref_C, _, _) = mlstm_recurrent_sequence(*ref_inputs, i.double(), f.double())
    assert ref_C.abs().max() > 65504
    assert relative_error(h.cpu(), ref) < 1e-2 and relative_error(C.cpu(), ref_C) < 1e-2
    weight = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    (h.float() * weight.to(DEVICE)).sum().backward()
    (ref * weight).sum().backward()
    # The gradients are small differences of large products here, so fp16's rounding of the inputs to the dots
    # shows: on an H200 one was 4.4e-2 off (relative to its largest entry); before the fix they were NaN.
    errors = [relative_error(ours.grad.cpu(), theirs.grad) for ours, theirs in zip((q, k, v), ref_inputs)]
    assert max(errors) < 0.1, errors
