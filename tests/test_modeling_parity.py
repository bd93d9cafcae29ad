"""Our model against transformers' own xLSTMForCausalLM (its pure-PyTorch path) on identical weights."""

import pytest
import torch
from transformers import xLSTMConfig, xLSTMForCausalLM
from transformers.initialization import no_init_weights

from xlstm_hf import XLSTMConfig, XLSTMForCausalLM
from xlstm_hf.modeling_xlstm import XLSTMBlock

from helpers import TINY, random_ids, tiny_model


def build_theirs(**config) -> xLSTMForCausalLM:
    with no_init_weights():  # transformers' own fused-mode initialisation crashes (shape error in its gate init)
        return xLSTMForCausalLM(xLSTMConfig(**config))


def reference_twin(model: XLSTMForCausalLM) -> xLSTMForCausalLM:
    """transformers' own model with our config and weights."""
    theirs = build_theirs(**model.config.to_diff_dict()).eval()
    theirs.load_state_dict(model.state_dict(), strict=True)
    return theirs


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
def test_module_tree_and_keys_match_transformers(weight_mode):
    ours = XLSTMForCausalLM(XLSTMConfig(**TINY, weight_mode=weight_mode))
    theirs = build_theirs(**TINY, weight_mode=weight_mode)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    assert all(ours_sd[k].shape == theirs_sd[k].shape for k in ours_sd)


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
@pytest.mark.parametrize("length", [1, 7, 64, 100, 300])
def test_logits_match_transformers_float32(weight_mode, length):
    ours = tiny_model(weight_mode=weight_mode, chunk_size=64)
    theirs = reference_twin(ours)
    ids = random_ids(2, length)
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits
    assert a.shape == b.shape == (2, length, TINY["vocab_size"])
    assert (a - b).abs().max().item() < 1e-4


def test_untied_and_tied_embeddings():
    untied = XLSTMForCausalLM(XLSTMConfig(**TINY))
    assert untied.lm_head.weight.data_ptr() != untied.backbone.embeddings.weight.data_ptr()
    tied = XLSTMForCausalLM(XLSTMConfig(**TINY, tie_word_embeddings=True))
    assert tied.lm_head.weight is tied.backbone.embeddings.weight


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
def test_paper_initialisation(weight_mode):
    config = XLSTMConfig(**{**TINY, "num_heads": 4}, weight_mode=weight_mode)
    layer = XLSTMForCausalLM(config).backbone.blocks[0].mlstm_layer
    expected_f = torch.linspace(3.0, 6.0, 4)
    if weight_mode == "single":
        i_bias, f_bias = layer.igate_preact.bias, layer.fgate_preact.bias
        weights = [layer.igate_preact.weight, layer.fgate_preact.weight]
    else:
        i_bias, f_bias = layer.ifgate_preact.bias.split(4)
        weights = [layer.ifgate_preact.weight]
    assert torch.equal(i_bias, torch.full((4,), -10.0)) and torch.allclose(f_bias, expected_f)
    assert all(torch.count_nonzero(w) == 0 for w in weights)


@pytest.mark.parametrize("hidden, heads", [(96, 4), (200, 4)])
def test_widths_that_are_not_multiples_of_64_run_with_state(hidden, heads):
    # transformers' own model builds its cache with rounded widths here and crashes; ours must not.
    model = tiny_model(hidden_size=hidden, num_heads=heads)
    ids = random_ids(2, 9)
    out = model(ids, use_cache=True)
    step = model(random_ids(2, 1, seed=3), cache=out.cache)
    full = model(torch.cat([ids, random_ids(2, 1, seed=3)], 1))
    assert (step.logits[:, -1] - full.logits[:, -1]).abs().max() < 1e-5


def test_blocks_are_gradient_checkpointing_layers():
    assert all(isinstance(b, XLSTMBlock) for b in tiny_model().backbone.blocks)
