"""The decode kernels (`xlstm_hf.kernels.decode_triton`, `elementwise_triton.step_gates`) against the PyTorch ops
they replace, and the model's fused decode step against its reference path: on the CPU under Triton's
interpreter (float32, float16), and in bfloat16 on a GPU."""

import pytest
import torch
import torch.nn.functional as F

import xlstm_hf
from helpers import (ALL_DTYPES, DEVICE, HALF_DTYPES, KERNEL_DTYPES, close, perturb_gates, random_ids, randn,
                     tiny_model)
from xlstm_hf.kernels import mlstm_recurrent_step, pad_gates
from xlstm_hf.modeling_xlstm import soft_cap

pytest.importorskip("triton")
from xlstm_hf.kernels import decode_triton as decode  # noqa: E402
from xlstm_hf.kernels import elementwise_triton as fused  # noqa: E402
from xlstm_hf.kernels.mlstm_triton import mlstm_step_triton  # noqa: E402

ROWS = [1, 5, 33] if DEVICE == "cuda" else [1, 5]


def linear_inputs(rows: int, width: int, out: int, dtype: torch.dtype):
    return randn(rows, width, dtype=dtype), randn(out, width, dtype=dtype, scale=width**-0.5)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("width", [80, 512])
def test_linear_with_bias_on_strided_rows(dtype, rows, width):
    wide, weight = linear_inputs(rows, 2 * width, 300, dtype)
    x = wide[:, :width]  # rows strided, as a split of a projection's output
    weight = weight[:, :width].contiguous()
    bias = randn(300, dtype=dtype)
    close(decode.skinny_linear(x, weight, bias), F.linear(x, weight, bias))
    close(decode.skinny_linear(x[None], weight), F.linear(x, weight)[None])  # leading dims kept


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_residual_epilogue(dtype, rows):
    x, weight = linear_inputs(rows, 200, 96, dtype)
    residual = randn(rows, 96, dtype=dtype, scale=4)
    close(decode.skinny_linear(x, weight, residual=residual), residual + F.linear(x, weight))


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_gated_epilogue_of_two_packed_projections(dtype, rows):
    x, weight = linear_inputs(rows, 128, 2 * 72, dtype)
    bias = randn(2 * 72, dtype=dtype)
    gate, z = F.linear(x, weight, bias).split(72, dim=-1)
    close(decode.skinny_linear(x, weight, bias, gated=True), F.silu(gate) * z)


def test_errors_name_the_bad_argument():
    x, weight = linear_inputs(2, 64, 32, torch.float32)
    with pytest.raises(ValueError, match="at most 64 rows"):
        decode.skinny_linear(randn(65, 64, dtype=torch.float32), weight)
    with pytest.raises(ValueError, match="weight must be"):
        decode.skinny_linear(x, weight.t())
    with pytest.raises(ValueError, match="residual or gates"):
        decode.skinny_linear(x, weight, residual=x[:, :16], gated=True)


# On a GPU every dtype a model may be loaded in (KERNEL_DTYPES is bf16 alone there), at the row counts where the
# GEMV's row tile changes (BM = 16 up to 16 rows, 32 up to 32, then 64; the gated form's weight tile doubles past 16
# rows), and at the projections of small models (hidden 64-192: inputs narrower than one weight tile of 128 / 256,
# outputs not a multiple of its 32 / 64 rows). The CPU runs one row count of the two dtypes it has.
TILE_ROWS = [16, 17, 32, 64] if DEVICE == "cuda" else [17]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("rows", TILE_ROWS)
@pytest.mark.parametrize("width, out, epilogue", [(128, 392, "bias"), (96, 160, "residual"), (64, 2 * 88, "gated"),
                                                  (192, 2 * 264, "gated")])
def test_small_projections_at_every_row_tile_and_dtype(dtype, rows, width, out, epilogue):
    x, weight = linear_inputs(rows, width, out, dtype)
    bias = randn(out, dtype=dtype) if epilogue != "residual" else None
    if epilogue == "gated":
        gate, z = F.linear(x, weight, bias).split(out // 2, dim=-1)
        close(decode.skinny_linear(x, weight, bias, gated=True), F.silu(gate) * z)
    elif epilogue == "residual":
        residual = randn(rows, out, dtype=dtype, scale=4)
        close(decode.skinny_linear(x, weight, residual=residual), residual + F.linear(x, weight))
    else:
        close(decode.skinny_linear(x, weight, bias), F.linear(x, weight, bias))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("DQK, DV", [(16, 32), (24, 40), (32, 64)]
                         + [(8, 16), (20, 48), (64, 128)] * (DEVICE == "cuda"))
def test_step_kernels_at_small_heads_against_the_float64_step(dtype, state_dtype, DQK, DV):
    # A decode step as `XLSTMBlock.fused_step` runs it (step_gates' snapshot, then the step kernel updating the state
    # in place) with the inputs in the model's dtype, at the head dims of small models (hidden 64-256 over 2-4
    # heads; blocks of 16-64 masked past the head), against the float64 recurrent step of the same rounded inputs.
    B, NH, cap = 3, 2, 15.0
    # q, k, v and the gates as views of one projection's output (randn gives equal shapes equal values)
    q, k, v = randn(B, NH, 2 * DQK + DV, dtype=dtype, scale=2).split([DQK, DQK, DV], dim=-1)
    i, f = randn(B, 2 * NH, dtype=dtype, scale=20).split(NH, dim=-1)  # beyond the cap too
    C, n = randn(B, NH, DQK, DV, dtype=state_dtype), randn(B, NH, DQK + 1, dtype=state_dtype)[..., 1:].abs() + 0.5
    m = randn(B, NH, dtype=state_dtype) + 1
    mask = torch.ones(B, 1, dtype=torch.bool, device=DEVICE)
    mask[1] = False  # a padded row: its state stays as it was
    ref_i, ref_f = pad_gates(soft_cap(i, cap)[:, :, None], soft_cap(f, cap)[:, :, None], mask)
    ref_h, ref_state = mlstm_recurrent_step(*(x.double() for x in (q, k, v, ref_i[:, :, 0], ref_f[:, :, 0])),
                                            (C.double(), n.double(), m.double()))
    state = tuple(x.clone() for x in (C, n, m))
    step_i, step_f, *snapshot = fused.step_gates(i, f, cap, mask, *state[1:])
    h, new_state = mlstm_step_triton(q, k, v, step_i, step_f, state, snapshot=snapshot)
    assert all(a is b for a, b in zip(new_state, state))  # in place
    close(h, ref_h.to(dtype), steps=2)  # the kernel's fp32 arithmetic and the reference's, each rounded once
    for ours, ref in zip(new_state, ref_state):
        close(ours, ref.to(state_dtype), steps=2)
    assert all(torch.equal(ours[1], old[1]) for ours, old in zip(new_state, (C, n, m)))


@pytest.mark.parametrize("with_mask", [False, True])
def test_step_gates_cap_mask_and_snapshot(with_mask):
    B, NH, DQK, cap = 3, 4, 48, 15.0
    both = randn(B, 2 * NH, dtype=torch.float32, scale=20)
    i, f = both.split(NH, dim=-1)
    state = randn(B, NH, DQK, dtype=torch.float32), randn(B, NH, dtype=torch.float32)
    mask = torch.ones(B, 4, dtype=torch.bool, device=DEVICE)
    mask[1, -1] = False
    mask = mask[:, -1:]  # a strided view, as the last column of a bool attention mask
    ours_i, ours_f, n, m = fused.step_gates(i, f, cap, mask if with_mask else None, *state)
    ref_i, ref_f = pad_gates(soft_cap(i, cap)[:, :, None], soft_cap(f, cap)[:, :, None], mask if with_mask else None)
    for ours, ref in ((ours_i, ref_i[:, :, 0]), (ours_f, ref_f[:, :, 0])):
        assert torch.equal(ours.isinf(), ref.isinf()) and ours.isinf().any() == with_mask
        close(ours[ref.isfinite()], ref[ref.isfinite()])
    assert torch.equal(n, state[0]) and torch.equal(m, state[1])
    assert n.data_ptr() != state[0].data_ptr() and m.data_ptr() != state[1].data_ptr()


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
def test_the_model_steps_on_the_decode_kernels_and_matches_the_reference(triton_backend, weight_mode, monkeypatch):
    model = tiny_model(weight_mode=weight_mode).to(DEVICE)
    model.cuda_graphs = False  # a graph's capture would call the step more often
    ids = random_ids(3, 12).to(DEVICE)
    mask = torch.ones_like(ids)
    mask[0, -1] = 0  # a padded step leaves that row's state untouched
    steps = []
    block_class = type(model.backbone.blocks[0])
    original = block_class.fused_step
    monkeypatch.setattr(block_class, "fused_step", lambda *args: steps.append(original(*args)) or steps[-1])
    with torch.no_grad():
        prefill = model(ids[:, :-1])
        before = [t.clone() for t in prefill.cache.state_tensors()]
        step = model(ids[:, -1:], attention_mask=mask, cache=prefill.cache)
    assert len(steps) == len(model.backbone.blocks) and all(s is not None for s in steps)
    xlstm_hf.set_kernel_backend("torch")
    with torch.no_grad():
        ref_prefill = model(ids[:, :-1])
        ref_step = model(ids[:, -1:], attention_mask=mask, cache=ref_prefill.cache)
    assert (step.logits - ref_step.logits).abs().max() < 1e-4
    for ours, ref in zip(step.cache.state_tensors(), ref_step.cache.state_tensors()):
        assert (ours - ref).abs().max() < 1e-4
    assert all(torch.equal(ours[0], old[0]) for ours, old in zip(step.cache.state_tensors(), before))
    assert not all(torch.equal(ours[1], old[1]) for ours, old in zip(step.cache.state_tensors(), before))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("hidden, heads", [(128, 4)] + [(128, 2), (192, 4), (256, 4)] * (DEVICE == "cuda"))
@pytest.mark.parametrize("batch", [3] + [17, 33] * (DEVICE == "cuda"))
def test_small_models_step_on_the_decode_kernels_in_half_precision(triton_backend, dtype, hidden, heads, batch,
                                                                   monkeypatch):
    # A layer's fused step (its nine launches: every projection on the decode GEMV, the step kernels) for models of
    # 16-64-dim heads in 2-byte dtypes, against the layer's PyTorch modules (the reference backend: no Triton at
    # all). Tolerances as the 7B's layer test: on the CPU in fp16 the output was within one rounding step and the
    # state within 1e-3 at these shapes.
    model = tiny_model(hidden_size=hidden, num_heads=heads, num_hidden_layers=1).to(DEVICE, dtype)
    block = model.backbone.blocks[0]
    x = randn(batch, 1, hidden, dtype=dtype)
    C, n, m = model.backbone.new_cache(batch).layers[0].state
    gen = torch.Generator().manual_seed(0)
    state = tuple(t.to(DEVICE) for t in (torch.rand(C.shape, generator=gen) * 0.1, torch.rand(n.shape, generator=gen),
                                         torch.randn(m.shape, generator=gen)))
    mask = torch.ones(batch, 1, dtype=torch.bool, device=DEVICE)
    mask[0] = False
    steps = []
    original = type(block).fused_step
    monkeypatch.setattr(type(block), "fused_step", lambda *args: steps.append(original(*args)) or steps[-1])
    with torch.no_grad():
        ours, ours_state = block(x, tuple(t.clone() for t in state), mask)
        xlstm_hf.set_kernel_backend("torch")
        ref, ref_state = block(x, tuple(t.clone() for t in state), mask)
    assert len(steps) == 1 and steps[0] is not None  # the fused step ran, and only for the Triton backend
    close(ours, ref, steps=2)
    for a, b in zip(ours_state, ref_state):
        assert ((a - b).abs() / b.abs().clamp_min(1)).max() < 1e-2
    assert all(torch.equal(a[0], s[0]) for a, s in zip(ours_state, state))  # the padded row's state is untouched


class Adapted(torch.nn.Module):
    """A projection with an adapter beside it, as PEFT wraps one: it exposes the base layer's weight and bias, which
    alone are not what it computes."""

    def __init__(self, base: torch.nn.Linear):
        super().__init__()
        self.base = base
        self.adapter = torch.nn.Linear(base.in_features, base.out_features, bias=False, device=base.weight.device)

    weight = property(lambda self: self.base.weight)
    bias = property(lambda self: self.base.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.adapter(x)


def test_the_general_fused_path_takes_more_rows_and_projections_that_cannot_be_packed(triton_backend):
    model = tiny_model().to(DEVICE)
    block = model.backbone.blocks[0]
    x = randn(decode.MAX_ROWS + 1, 1, 128, dtype=torch.float32)
    state = model.backbone.new_cache(decode.MAX_ROWS + 1).layers[0].state
    few = tuple(t[:2].contiguous() for t in state)
    with torch.no_grad():
        assert block.fused_step(x, state, None) is None
        assert block.fused_step(x[:2], few, None) is not None
        block.ffn.proj_up = Adapted(block.ffn.proj_up)  # packing refuses a wrapped layer
        assert block.fused_step(x[:2], few, None) is None


@pytest.mark.parametrize("owner, name", [("mlstm_layer", "out_proj"), ("ffn", "proj_down")])
def test_a_wrapped_output_projection_runs_as_itself_in_prefill_and_step(triton_backend, owner, name):
    model = tiny_model().to(DEVICE)
    model.cuda_graphs = False
    for block in model.backbone.blocks:
        parent = getattr(block, owner)
        setattr(parent, name, Adapted(getattr(parent, name)))
    ids = random_ids(2, 9).to(DEVICE)
    results = []
    for backend in ("triton", "torch"):
        xlstm_hf.set_kernel_backend(backend)
        with torch.no_grad():
            prefill = model(ids[:, :-1])
            results.append((prefill.logits, model(ids[:, -1:], cache=prefill.cache).logits))
    for ours, ref in zip(*results):
        assert (ours - ref).abs().max() < 1e-4


@pytest.mark.skipif(DEVICE != "cuda", reason="the 7B's shapes, in bfloat16, on a GPU")
@pytest.mark.parametrize("batch", [1, 32])
def test_7b_layer_step_matches_the_general_fused_path(batch, monkeypatch):
    from xlstm_hf import XLSTMConfig, XLSTMForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = XLSTMForCausalLM(XLSTMConfig(num_hidden_layers=1))
    model = perturb_gates(model).to(torch.bfloat16).eval()
    block = model.backbone.blocks[0]
    x = randn(batch, 1, model.config.hidden_size, dtype=torch.bfloat16)
    C, n, m = model.backbone.new_cache(batch).layers[0].state
    state = (torch.rand_like(C) * 0.1, torch.rand_like(n), torch.randn_like(m))
    mask = torch.ones(batch, 1, dtype=torch.bool, device=DEVICE)
    mask[0] = False
    with torch.no_grad():
        ours, ours_state = block(x, tuple(t.clone() for t in state), mask)
        monkeypatch.setattr(type(block), "fused_step", lambda *args: None)
        ref, ref_state = block(x, tuple(t.clone() for t in state), mask)
    close(ours, ref, steps=2)
    for a, b in zip(ours_state, ref_state):
        assert ((a - b).abs() / b.abs().clamp_min(1)).max() < 1e-2
    assert all(torch.equal(a[0], s[0]) for a, s in zip(ours_state, state))  # the padded row's state is untouched
