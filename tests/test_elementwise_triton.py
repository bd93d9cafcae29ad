"""The fused inference kernels (`xlstm_hf.kernels.elementwise_triton`) against the model's PyTorch modules they
replace: on the CPU under Triton's interpreter (float32, float16), and in bfloat16 on a GPU."""

import pytest
import torch
import torch.nn.functional as F

import xlstm_hf
from helpers import DEVICE, KERNEL_DTYPES as DTYPES, close, random_ids, randn, tiny_model
from xlstm_hf.modeling_xlstm import XLSTMMultiHeadLayerNorm, XLSTMRMSNorm, soft_cap
from xlstm_hf.packing import packed

pytest.importorskip("triton")
from xlstm_hf.kernels import elementwise_triton as fused  # noqa: E402


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [96, 256])
def test_rms_norm_with_and_without_the_residual_add(dtype, width):
    norm = XLSTMRMSNorm(width, eps=1e-6).to(DEVICE)
    norm.weight.data = randn(width, dtype=torch.float32)
    norm = norm.to(dtype)
    x, y = randn(2, 5, width, dtype=dtype, scale=3), randn(2, 5, width, dtype=dtype)
    with torch.no_grad():
        out, same = fused.rms_norm(x, norm.weight, norm.eps)
        close(out, norm(x))
        assert same is x
        out, total = fused.rms_norm(y, norm.weight, norm.eps, residual=x)
        close(total, x + y)
        close(out, norm(x + y))


@pytest.mark.parametrize("dtype", DTYPES)
def test_head_norm_gate_reads_the_cell_output_and_a_strided_gate(dtype):
    B, NH, S, DV = 2, 3, 7, 48
    norm = XLSTMMultiHeadLayerNorm(NH, DV, eps=1e-6).to(DEVICE)
    norm.weight.data = randn(NH * DV, dtype=torch.float32)
    norm = norm.to(dtype)
    h = randn(B, NH, S, DV, dtype=dtype, scale=2) + 0.5
    fused_projection = randn(B, S, 3 * NH * DV, dtype=dtype)
    o = fused_projection[..., NH * DV : 2 * NH * DV]  # a view, as the fused weight layout splits it
    with torch.no_grad():
        close(fused.head_norm_gate(h, o, norm.weight, norm.eps), torch.sigmoid(o) * norm(h.transpose(1, 2)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_on_views_of_one_projection(dtype):
    both = randn(3, 4, 2 * 200, dtype=dtype, scale=3)
    gate, z = both.split(200, dim=-1)
    close(fused.silu_mul(gate, z), F.silu(gate) * z)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_soft_cap_gates_and_the_padding_mask(dtype, with_mask):
    B, S, NH, cap = 2, 9, 4, 15.0
    both = randn(B, S, 2 * NH, dtype=dtype, scale=20)  # beyond the cap too
    i, f = both.split(NH, dim=-1)
    mask = torch.ones(B, S, dtype=torch.bool, device=DEVICE)
    mask[1, :4] = False
    ours_i, ours_f = fused.soft_cap_gates(i, f, cap, mask if with_mask else None)
    ref_i, ref_f = soft_cap(i, cap), soft_cap(f, cap)
    if with_mask:
        ref_i = ref_i.masked_fill(~mask[..., None], float("-inf"))
        ref_f = ref_f.masked_fill(~mask[..., None], float("inf"))
        assert torch.equal(ours_i.isinf(), ref_i.isinf()) and torch.equal(ours_f.isinf(), ref_f.isinf())
        keep = mask[..., None].expand_as(ref_i)
        ours_i, ours_f, ref_i, ref_f = ours_i[keep], ours_f[keep], ref_i[keep], ref_f[keep]
    close(ours_i, ref_i)
    close(ours_f, ref_f)


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
def test_the_model_takes_the_fused_path_in_inference_and_matches_the_modules(triton_backend, weight_mode):
    model = tiny_model(weight_mode=weight_mode).to(DEVICE)
    ids = random_ids(2, 21).to(DEVICE)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    block = model.backbone.blocks[0]
    weights = {name: p.clone() for name, p in model.state_dict().items()}
    with torch.no_grad():
        assert block.fused_inference(torch.zeros(1, device=DEVICE))
        prefill = model(ids[:, :-1], attention_mask=mask[:, :-1])
        step = model(ids[:, -1:], attention_mask=mask, cache=prefill.cache)
    # The fused path packed each group of projections into one buffer, values unchanged.
    assert packed(block.mlstm_layer.projections()) is not None and packed(block.ffn.up_projections()) is not None
    assert all(torch.equal(p, weights[name]) for name, p in model.state_dict().items())
    with torch.enable_grad():
        assert not block.fused_inference(torch.zeros(1, device=DEVICE))  # training keeps autograd's modules
    xlstm_hf.set_kernel_backend("torch")
    with torch.no_grad():
        ref_prefill = model(ids[:, :-1], attention_mask=mask[:, :-1])
        ref_step = model(ids[:, -1:], attention_mask=mask, cache=ref_prefill.cache)
    for ours, ref in ((prefill.logits, ref_prefill.logits), (step.logits, ref_step.logits)):
        assert (ours - ref).abs().max() < 1e-4
