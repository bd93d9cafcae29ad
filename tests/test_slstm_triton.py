"""The fused sLSTM kernel against the float64 recurrent reference (Triton's interpreter on the CPU, the GPU where
there is one), and the xLSTM[a:b] model on the Triton kernels against the model on the PyTorch reference."""

import pytest
import torch

triton = pytest.importorskip("triton")

import xlstm_hf  # noqa: E402
from helpers import HALF_DTYPES, left_pad, random_ids  # noqa: E402
from test_xlstm_stack import VOCAB, tiny_stack  # noqa: E402
from xlstm_hf.kernels import backend  # noqa: E402
from xlstm_hf.kernels.slstm_torch import slstm_recurrent_sequence  # noqa: E402
from xlstm_hf.kernels.slstm_triton import RESIDENT_HEAD_DIM, slstm_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(B, S, NH, DH, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    gates, R = 2 * rand(B, S, 4, NH, DH), 0.3 * rand(NH, DH, 4, DH)
    state = (rand(B, NH, DH), rand(B, NH, DH), rand(B, NH, DH).abs() + 0.5, rand(B, NH, DH))
    for s in state[:3]:
        s[0] = 0  # row 0 starts fresh (n = 0)
    mask = torch.rand(B, S, generator=gen) > 0.3
    return gates, R, state, mask


@pytest.mark.parametrize("B, S, NH, DH, dtype, tol", [
    (3, 9, 2, 8, torch.float32, 1e-5),      # a head narrower than a tile
    (2, 6, 3, 20, torch.float32, 1e-5),     # not a power of two
    (20, 5, 2, 16, torch.float16, 2e-3),    # two blocks of batch rows
])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("resident", [True, False])
def test_kernel_equals_the_float64_reference(B, S, NH, DH, dtype, tol, with_state, resident):
    gates, R, state, mask = make_inputs(B, S, NH, DH)
    gates = gates.to(dtype).double()  # the reference sees the inputs the kernel sees
    state = state if with_state else None
    for row_mask in (None, mask):
        h_ref, final_ref = slstm_recurrent_sequence(gates, R, state, row_mask)
        to = lambda x: x.to(DEVICE)  # noqa: E731
        h, final = slstm_triton(to(gates.to(dtype)), to(R.float()),
                                None if state is None else tuple(to(s.float()) for s in state),
                                None if row_mask is None else to(row_mask), resident=resident)
        assert h.dtype == dtype and h.shape == h_ref.shape and all(s.dtype == torch.float32 for s in final)
        assert (h.double().cpu() - h_ref).abs().max() < tol
        for ours, ref in zip(final, final_ref):
            assert ((ours.double().cpu() - ref).abs() / ref.abs().clamp_min(1)).max() < tol


def weighted_loss(h, final_state, seed=1):
    """A loss on the output and on every part of the final state (m included), with random weights."""
    gen = torch.Generator().manual_seed(seed)
    total = 0
    for x in (h, *final_state):
        total = total + (x.double().cpu() * torch.randn(x.shape, generator=gen, dtype=torch.float64)).sum()
    return total


def gradients(fn, gates, R, state, mask, dtype):
    """d loss / d (gates_x, R, initial state) of `fn` run on copies of the inputs in `dtype` (R and the state in
    float32, as the model keeps them, unless `dtype` is float64)."""
    wide = dtype if dtype == torch.float64 else torch.float32
    leaves = [gates.to(DEVICE, dtype), R.to(DEVICE, wide)] + [s.to(DEVICE, wide) for s in state or ()]
    leaves = [x.clone().requires_grad_() for x in leaves]
    h, final = fn(leaves[0], leaves[1], tuple(leaves[2:]) or None, None if mask is None else mask.to(DEVICE))
    weighted_loss(h, final).backward()
    return [x.grad.double().cpu() for x in leaves]


@pytest.mark.parametrize("B, S, NH, DH, dtype, tol", [
    (3, 7, 2, 8, torch.float32, 1e-5),      # a head narrower than a tile
    (2, 5, 3, 20, torch.float32, 1e-5),     # not a power of two
    (3, 4, 1, 80, torch.float32, 1e-5),     # two tiles of units in the streamed kernels
    (20, 5, 2, 16, torch.float16, 5e-3),    # two blocks of batch rows
])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("resident", [True, False])
def test_gradients_equal_float64_autograd_of_the_reference(B, S, NH, DH, dtype, tol, with_state, with_mask,
                                                           resident):
    if resident and DH > RESIDENT_HEAD_DIM[dtype]:
        pytest.skip("too wide for the resident kernels (slstm_triton refuses it)")
    gates, R, state, mask = make_inputs(B, S, NH, DH)
    gates = gates.to(dtype).double()
    state, mask = state if with_state else None, mask if with_mask else None
    reference = gradients(slstm_recurrent_sequence, gates, R, state, mask, torch.float64)
    ours = gradients(lambda *args: slstm_triton(*args, resident=resident), gates, R, state, mask, dtype)
    assert len(ours) == (6 if with_state else 2)
    for grad, ref in zip(ours, reference):
        assert (grad - ref).abs().max() / ref.abs().max().clamp_min(1) < tol


# Half precision at the head dims users configure: the xLSTM[a:b] stacks' sLSTM (embedding 32-1024 over 2-4 heads:
# 8-256 dims) and non-powers of two (tiles of 32 / 64 masked past the head). Every recurrent product is a tl.dot of
# (16 batch rows x BD) by (BD x BD), BD = 16 for heads up to 16 dims: dots as shallow as those that crashed or gave
# wrong results in the mLSTM kernels on an H200 in 2-byte dtypes. bf16 only on a GPU (the interpreter's bf16 dot is
# wrong); the CPU runs one fp16 shape.
HALF_SHAPES = ([(3, 24, 4, 8), (20, 24, 2, 16), (3, 24, 2, 24), (3, 24, 2, 40), (20, 24, 2, 64), (3, 24, 1, 128),
                (3, 24, 1, 192), (2, 24, 1, 256)] if DEVICE == "cuda" else [(3, 9, 2, 24)])
# Three times the worst error of a float64 emulation of the kernels' rounding (h_{t-1} and the gates' gradients
# rounded to the dtype before the products with R in that dtype, fp32 elsewhere; 3 seeds, these shapes, S up to 64):
# fp16 1.2e-3, bf16 1.0e-2.
HALF_TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("B, S, NH, DH", HALF_SHAPES)
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("resident", [True, False])
def test_half_precision_at_small_and_odd_head_dims(dtype, B, S, NH, DH, with_mask, resident):
    if resident and DH > RESIDENT_HEAD_DIM[dtype]:
        pytest.skip("too wide for the resident kernels (slstm_triton refuses it)")
    gates, R, state, mask = make_inputs(B, S, NH, DH)
    # R as a model in `dtype` holds it (the reference sees the same values), scaled by 1/sqrt(DH) past 16 dims: with
    # the 0.3 * randn of make_inputs a wide head's recurrence is chaotic: rounding alone moves its gradients by O(1).
    gates, R = gates.to(dtype).double(), (R * min(1.0, (16 / DH) ** 0.5)).to(dtype).double()
    mask = mask if with_mask else None
    tol = HALF_TOL[dtype]
    to = lambda x, dt: x.to(DEVICE, dt).clone()  # noqa: E731

    # Inference (no state kept for a backward), then training: the forward kernel's two variants.
    h_ref, final_ref = slstm_recurrent_sequence(gates, R, state, mask)
    with torch.no_grad():
        h, final = slstm_triton(to(gates, dtype), to(R, dtype), tuple(to(s, torch.float32) for s in state),
                                None if mask is None else mask.to(DEVICE), resident=resident)
    assert h.dtype == dtype and h.shape == h_ref.shape
    assert (h.double().cpu() - h_ref).abs().max() < tol
    for ours, ref in zip(final, final_ref):
        assert ((ours.double().cpu() - ref).abs() / ref.abs().clamp_min(1)).max() < tol

    # A loss on h and the final h only: c and n scale with the stabiliser m, whose max switches branch on a rounding,
    # so their gradients jump where h's (independent of m) do not.
    leaves = [to(gates, dtype), to(R, dtype)] + [to(s, torch.float32) for s in state]
    ref_leaves = [gates, R, *state]
    leaves, ref_leaves = ([x.requires_grad_() for x in xs] for xs in (leaves, ref_leaves))
    for fn, xs in ((lambda *a: slstm_triton(*a, resident=resident), leaves), (slstm_recurrent_sequence, ref_leaves)):
        out, last = fn(xs[0], xs[1], tuple(xs[2:]), None if mask is None else mask.to(xs[0].device))
        weighted_loss(out, last[:1]).backward()
    for ours, ref in zip(leaves, ref_leaves):
        assert ours.grad.dtype == ours.dtype
        assert (ours.grad.double().cpu() - ref.grad).abs().max() / ref.grad.abs().max().clamp_min(1) < tol


def test_a_head_too_wide_for_the_resident_kernels_is_refused():
    gates, R, _, _ = make_inputs(1, 3, 1, RESIDENT_HEAD_DIM[torch.float32] + 1)
    with pytest.raises(ValueError, match="resident=True"):
        slstm_triton(gates.float(), R.float(), resident=True)


@pytest.fixture
def triton_backend():
    xlstm_hf.set_kernel_backend("triton")  # on the CPU: the interpreter (TRITON_INTERPRET=1, tests/conftest.py)
    backend._decide.cache_clear()
    yield
    xlstm_hf.set_kernel_backend(None)
    backend._decide.cache_clear()


def test_the_model_on_the_triton_kernels_equals_the_reference(triton_backend):
    model = tiny_stack().to(DEVICE)
    ids = random_ids(2, 20, vocab=VOCAB).to(DEVICE)
    with torch.no_grad():
        xlstm_hf.set_kernel_backend("torch")
        reference = model(ids).logits
        xlstm_hf.set_kernel_backend("triton")
        assert model.xlstm_block_stack.blocks[0].xlstm.mlstm_cell.outnorm.weight.device.type == DEVICE
        assert backend.resolve_backend(ids.device) == "triton"
        out = model(ids[:, :14])
        assert (out.logits - reference[:, :14]).abs().max() < 1e-4
        for t in range(14, 20):  # the fused steps, updating the cache in place
            step = model(ids[:, t : t + 1], cache=out.cache)
            assert (step.logits[:, 0] - reference[:, t]).abs().max() < 1e-4


def test_training_on_the_triton_kernels_gives_the_reference_gradients(triton_backend):
    model = tiny_stack().to(DEVICE)  # xLSTM[1:1]: an mLSTM block, then an sLSTM block
    rows = [random_ids(1, 12, vocab=VOCAB, seed=4), random_ids(1, 7, vocab=VOCAB, seed=5)]
    batch, mask = left_pad(rows)  # the short row's padding: masked steps of the sLSTM
    batch, mask = batch.to(DEVICE), mask.to(DEVICE)
    cell = model.xlstm_block_stack.blocks[1].xlstm.slstm_cell
    backward_nodes = []
    cell.register_forward_hook(lambda module, args, out: backward_nodes.append(type(out[0].grad_fn).__name__))
    grads = {}
    for name in ("torch", "triton"):
        xlstm_hf.set_kernel_backend(name)
        model.zero_grad()
        model(batch, attention_mask=mask, labels=batch.masked_fill(mask == 0, -100)).loss.backward()
        grads[name] = {key: p.grad.clone() for key, p in model.named_parameters()}
    assert backward_nodes[1] == "_SLSTMFunctionBackward" and backward_nodes[0] != backward_nodes[1]
    assert grads["torch"]["xlstm_block_stack.blocks.1.xlstm.slstm_cell._recurrent_kernel_"].abs().max() > 1e-3
    for key, ref in grads["torch"].items():
        assert (grads["triton"][key] - ref).abs().max() <= 1e-5 * ref.abs().max().clamp_min(1), key
