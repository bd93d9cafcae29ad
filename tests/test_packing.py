"""Projections packed into one buffer (xlstm_hf.packing): the one GEMM against the separate layers, and everything
that must not notice: the state dict, saving for vanilla transformers, dtype casts, training, wrapped layers."""

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from helpers import random_ids, tiny_model
from xlstm_hf.packing import pack, packed, packed_or_pack


def groups(model):
    for block in model.backbone.blocks:
        yield block.mlstm_layer.projections()
        yield block.ffn.up_projections()


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
def test_one_gemm_over_the_packed_buffer_equals_the_separate_layers(weight_mode):
    model = tiny_model(weight_mode=weight_mode)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    assert all(packed(group) is None for group in groups(model) if len(group) > 1)
    model.backbone.pack_projections()
    assert all(torch.equal(p, before[name]) for name, p in model.state_dict().items())
    x = torch.randn(3, 5, model.config.hidden_size)
    for group in groups(model):
        weight, bias = packed(group)
        assert weight.shape == (sum(g.out_features for g in group), model.config.hidden_size)
        separate = torch.cat([g(x) for g in group], dim=-1)
        torch.testing.assert_close(F.linear(x, weight, bias), separate, rtol=1e-5, atol=1e-6)
    layer = model.backbone.blocks[0].mlstm_layer
    torch.testing.assert_close(torch.cat(layer.project(x, packed=True), -1), torch.cat(layer.project(x), -1),
                               rtol=1e-5, atol=1e-6)


def test_a_packed_model_saves_for_vanilla_transformers(tmp_path):
    model = tiny_model()
    ids = random_ids(2, 12)
    with torch.no_grad():
        expected = model(ids).logits
        model.backbone.pack_projections()
        model.save_pretrained(tmp_path)
    assert all(packed(group) is not None for group in groups(model))  # saving left the model packed
    vanilla = transformers.xLSTMForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(vanilla(ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_a_cast_unpacks_and_the_next_call_packs_again():
    model = tiny_model()
    model.backbone.pack_projections()
    model.double()
    group = model.backbone.blocks[0].mlstm_layer.projections()
    assert packed(group) is None
    weight, _ = packed_or_pack(group)
    assert weight.dtype == torch.float64 and packed(group) is not None


def test_packed_in_inference_mode_the_model_still_trains():
    model = tiny_model()
    with torch.inference_mode():
        model.backbone.pack_projections()
    model.train()
    ids = random_ids(2, 12)
    model(ids, labels=ids).loss.backward()
    q = model.backbone.blocks[0].mlstm_layer.q
    assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0
    group = model.backbone.blocks[0].mlstm_layer.projections()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    weight, _ = packed(group)  # the optimizer's in-place update is what the packed GEMM reads
    torch.testing.assert_close(weight[: q.out_features], q.weight.detach())


def test_layers_that_do_not_own_their_storage_or_are_wrapped_stay_as_they_are():
    shared = torch.randn(8, 4)
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    a.weight.data = shared[:4]  # a view of someone else's buffer (as FSDP's flat parameters are)
    assert not pack([a, b]) and a.weight.data_ptr() == shared.data_ptr()

    class Wrapped(nn.Linear):
        pass

    c, d = Wrapped(4, 4), nn.Linear(4, 4)
    pointers = [c.weight.data_ptr(), d.weight.data_ptr()]
    assert not pack([c, d]) and [c.weight.data_ptr(), d.weight.data_ptr()] == pointers
    assert not pack([nn.Linear(4, 4), nn.Linear(5, 4)])  # different input sizes


def test_nothing_is_packed_while_torch_compile_traces(monkeypatch):
    group = tiny_model().backbone.blocks[0].mlstm_layer.projections()
    pointers = [linear.weight.data_ptr() for linear in group]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert packed_or_pack(group) is None and [linear.weight.data_ptr() for linear in group] == pointers
    monkeypatch.undo()
    assert packed_or_pack(group) is not None
