"""The chunkwise, parallel and step forms of the mLSTM cell against the float64 recurrent form (the spec)."""

import pytest
import torch

from xlstm_hf.kernels import mlstm, mlstm_chunkwise, mlstm_parallel, mlstm_recurrent_sequence, mlstm_recurrent_step

F64 = torch.float64


def make_inputs(B=2, NH=3, S=17, DQK=8, DV=12, seed=0, with_state=True, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=F64)  # noqa: E731
    inputs = [rand(B, NH, S, DQK), rand(B, NH, S, DQK), rand(B, NH, S, DV), 3 * rand(B, NH, S), 3 * rand(B, NH, S) + 2]
    state = (rand(B, NH, DQK, DV), rand(B, NH, DQK).abs(), rand(B, NH)) if with_state else None
    return [x.to(dtype) for x in inputs], state


def assert_close(a, b, tol):
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= tol, f"max abs error {err:.3e} > {tol:.1e}"


@pytest.mark.parametrize("S", [1, 7, 17, 64, 100, 257])
@pytest.mark.parametrize("chunk_size", [1, 16, 64])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunkwise_matches_recurrent_float64(S, chunk_size, with_state):
    (q, k, v, i, f), state = make_inputs(S=S, with_state=with_state)
    h_ref, s_ref = mlstm_recurrent_sequence(q, k, v, i, f, state)
    h, s = mlstm_chunkwise(q, k, v, i, f, state, chunk_size=chunk_size)
    assert_close(h, h_ref, 1e-10)
    for a, b in zip(s, s_ref):
        assert_close(a, b, 1e-10)


@pytest.mark.parametrize("S", [1, 33])
def test_parallel_matches_recurrent_float64(S):
    (q, k, v, i, f), state = make_inputs(S=S, DQK=16, DV=16)
    h_ref, s_ref = mlstm_recurrent_sequence(q, k, v, i, f, state)
    h, s = mlstm_parallel(q, k, v, i, f, state)
    assert_close(h, h_ref, 1e-10)
    for a, b in zip(s, s_ref):
        assert_close(a, b, 1e-10)


@pytest.mark.parametrize("form", ["chunkwise", "parallel"])
def test_gradients_match_recurrent_float64(form):
    (q, k, v, i, f), state = make_inputs(S=37)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, i, f, *state)]

    def grads(fn):
        for t in leaves:
            t.grad = None
        h, (C, n, m) = fn(*leaves[:5], tuple(leaves[5:]))
        # Weight every output so that no gradient path is trivially zero.
        w = [torch.randn(x.shape, generator=torch.Generator().manual_seed(j), dtype=F64) for j, x in
             enumerate((h, C, n, m))]
        sum((x * wx).sum() for x, wx in zip((h, C, n, m), w)).backward()
        return [t.grad.clone() for t in leaves]

    ref = grads(mlstm_recurrent_sequence)
    other = grads(lambda *a: (mlstm_chunkwise(*a, chunk_size=8) if form == "chunkwise" else mlstm_parallel(*a)))
    for g, g_ref in zip(other, ref):
        assert g_ref.abs().max() > 0
        assert_close(g, g_ref, 1e-10)


def test_step_continues_a_sequence():
    (q, k, v, i, f), state = make_inputs(S=9)
    h_ref, s_ref = mlstm_recurrent_sequence(q, k, v, i, f, state)
    _, s = mlstm_chunkwise(q[:, :, :8], k[:, :, :8], v[:, :, :8], i[:, :, :8], f[:, :, :8], state, chunk_size=4)
    h, s = mlstm(q[:, :, 8:], k[:, :, 8:], v[:, :, 8:], i[:, :, 8:], f[:, :, 8:], s)
    assert_close(h[:, :, 0], h_ref[:, :, 8], 1e-10)
    for a, b in zip(s, s_ref):
        assert_close(a, b, 1e-10)


def test_padded_positions_leave_the_state_untouched():
    (q, k, v, i, f), state = make_inputs(S=20)
    pad = torch.zeros(20, dtype=torch.bool)
    pad[[0, 1, 7, 19]] = True
    i_pad, f_pad = i.masked_fill(pad, float("-inf")), f.masked_fill(pad, float("inf"))
    keep = ~pad
    h_ref, s_ref = mlstm_recurrent_sequence(q[:, :, keep], k[:, :, keep], v[:, :, keep], i[:, :, keep],
                                            f[:, :, keep], state)
    for fn in (mlstm_recurrent_sequence, lambda *a: mlstm_chunkwise(*a, chunk_size=8)):
        h, s = fn(q, k, v, i_pad, f_pad, state)
        assert_close(h[:, :, keep], h_ref, 1e-10)
        for a, b in zip(s, s_ref):
            assert_close(a, b, 1e-10)


def test_float32_inputs_keep_float32_state_and_output_dtype():
    (q, k, v, i, f), state = make_inputs(S=10, dtype=torch.float32)
    h, (C, n, m) = mlstm_chunkwise(q, k, v, i, f, chunk_size=4)
    assert h.dtype == torch.float32 and C.dtype == n.dtype == m.dtype == torch.float32
    h_ref, _ = mlstm_recurrent_sequence(*(x.double() for x in (q, k, v, i, f)))
    assert_close(h.double(), h_ref, 1e-4)


def test_bfloat16_inputs_use_a_float32_state():
    (q, k, v, i, f), _ = make_inputs(S=10, dtype=torch.bfloat16)
    h, (C, n, m) = mlstm_chunkwise(q, k, v, i, f, chunk_size=4)
    assert h.dtype == torch.bfloat16 and C.dtype == torch.float32
    h_ref, _ = mlstm_recurrent_sequence(*(x.double() for x in (q, k, v, i, f)))
    assert_close(h.double(), h_ref, 5e-2)


def test_step_shapes():
    (q, k, v, i, f), state = make_inputs(S=1)
    h, (C, n, m) = mlstm_recurrent_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], state)
    assert h.shape == (2, 3, 12) and C.shape == (2, 3, 8, 12) and n.shape == (2, 3, 8) and m.shape == (2, 3)
