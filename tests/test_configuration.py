"""XLSTMConfig: defaults, the three dialects, validation, and a saved config that vanilla transformers accepts."""

import json

import pytest
from transformers import AutoConfig, xLSTMConfig

from xlstm_hf import XLSTMConfig

# The original NX-AI/xLSTM-7b config.json, field for field.
NXAI_7B_CONFIG = {
    "architectures": ["xLSTMForCausalLM"],
    "add_embedding_dropout": False,
    "add_forward_backend_padding": False,
    "add_out_norm": True,
    "add_post_blocks_norm": True,
    "add_post_norm": False,
    "add_qk_norm": False,
    "bos_token_id": 0,
    "cell_norm_eps": 1e-06,
    "chunk_size": 64,
    "embedding_dim": 4096,
    "eos_token_id": 2,
    "ffn_proj_factor": 2.667,
    "ffn_round_up_to_multiple_of": 64,
    "force_bos_token_insert": True,
    "forward_backend_name": "chunkwise--triton_limit_chunk",
    "gate_soft_cap": 15.0,
    "head_dim": 512,
    "igate_bias_init_range": -10.0,
    "mlstm_round_up_to_multiple_of": 64,
    "model_type": "xlstm",
    "norm_eps": 1e-06,
    "norm_reduction_force_float32": True,
    "num_blocks": 32,
    "num_heads": 8,
    "output_logit_soft_cap": 30.0,
    "pad_token_id": 1,
    "qk_dim_factor": 0.5,
    "return_last_states": True,
    "step_backend_name": "triton_fused",
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "use_bias": False,
    "v_dim_factor": 1.0,
    "vocab_size": 50304,
    "weight_mode": "single",
}


def dims(c: XLSTMConfig):
    return (c.hidden_size, c.num_hidden_layers, c.num_heads, c.qk_head_dim, c.v_head_dim, c.ffn_dim, c.vocab_size)


SEVEN_B = (4096, 32, 8, 256, 512, 10944, 50304)


def test_defaults_are_the_7b():
    c = XLSTMConfig()
    assert dims(c) == SEVEN_B
    assert (c.gate_soft_cap, c.output_logit_soft_cap, c.weight_mode, c.tie_word_embeddings) == (15.0, 30.0, "single",
                                                                                                 False)


def test_reads_the_original_nxai_config():
    c = XLSTMConfig.from_dict(NXAI_7B_CONFIG)
    assert dims(c) == SEVEN_B
    assert c.add_out_norm is True and c.eps == 1e-6
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (0, 2, 1)
    assert c.chunkwise_kernel == "chunkwise--native_autograd"  # the Triton name is a run-time preference only
    assert c.kernel_preference == "chunkwise--triton_limit_chunk" and "forward_backend_name" not in c.to_dict()


def test_legacy_renames_take_effect():
    c = XLSTMConfig(embedding_dim=64, num_blocks=3, num_heads=2, add_post_blocks_norm=False, cell_norm_eps=1e-5)
    assert (c.hidden_size, c.num_hidden_layers, c.add_out_norm, c.eps) == (64, 3, False, 1e-5)


def test_reads_transformers_dialect():
    theirs = xLSTMConfig(hidden_size=256, num_hidden_layers=3, num_heads=4, weight_mode="fused", vocab_size=77)
    c = XLSTMConfig.from_dict(theirs.to_dict())
    assert (c.hidden_size, c.num_hidden_layers, c.num_heads, c.weight_mode, c.vocab_size) == (256, 3, 4, "fused", 77)
    assert c.qk_dim == theirs.qk_dim and c.v_dim == theirs.v_dim


def test_reads_xlstm_large_config_names():
    # The xlstm package's xLSTMLargeConfig field names (a dataclass there; its asdict() here).
    large = dict(embedding_dim=512, num_heads=4, num_blocks=6, vocab_size=2048, use_bias=False, norm_eps=1e-6,
                 norm_reduction_force_float32=True, add_out_norm=True, qk_dim_factor=0.5, v_dim_factor=1.0,
                 chunkwise_kernel="chunkwise--triton_xl_chunk", sequence_kernel="native_sequence__triton",
                 step_kernel="triton", mode="inference", chunk_size=64, return_last_states=True,
                 autocast_kernel_dtype="bfloat16", eps=1e-6, inference_state_dtype="float32", ffn_proj_factor=2.667,
                 ffn_round_up_to_multiple_of=64, gate_soft_cap=15.0, output_logit_soft_cap=30.0, weight_mode="single")
    c = XLSTMConfig(**large)
    assert (c.hidden_size, c.num_hidden_layers, c.qk_head_dim, c.v_head_dim) == (512, 6, 64, 128)
    assert (c.chunkwise_kernel, c.sequence_kernel, c.step_kernel) == (
        "chunkwise--native_autograd", "native_sequence__native", "native")


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_heads=3), "num_heads"),
    (dict(hidden_size=96, num_heads=5), "num_heads"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(num_hidden_layers=-2), "num_hidden_layers"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(num_heads=0), "num_heads"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(weight_mode="quantum"), "weight_mode"),
    (dict(gate_soft_cap=0.0), "gate_soft_cap"),
    (dict(output_logit_soft_cap=-1.0), "output_logit_soft_cap"),
    (dict(qk_dim_factor=0.0), "qk_dim_factor"),
    (dict(inference_state_dtype="float8"), "inference_state_dtype"),
    (dict(hidden_size=64, embedding_dim=128), "embedding_dim"),
    (dict(hidden_size=64, num_heads=2, head_dim=16), "head_dim"),
    (dict(tie_word_embeddings="no"), "tie_word_embeddings"),  # tied the embeddings: the string is truthy
    (dict(use_bias=1), "use_bias"),
    (dict(hidden_size=64, num_heads=2, ffn_proj_factor=0.01), "ffn_proj_factor"),  # an FFN of width 0
    (dict(pad_token_id="1"), "pad_token_id"),
    (dict(eos_token_id=[2, "3"]), "eos_token_id"),
])
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        XLSTMConfig(**kwargs)


@pytest.mark.parametrize("hidden, heads", [(96, 4), (200, 4), (40, 2)])
def test_head_dims_are_consistent_when_width_is_not_a_multiple_of_64(hidden, heads):
    c = XLSTMConfig(hidden_size=hidden, num_heads=heads)
    assert c.qk_head_dim * heads == c.qk_dim == int(hidden * 0.5)
    assert c.v_head_dim * heads == c.v_dim == hidden


def test_saved_config_passes_vanilla_strict_validation(tmp_path):
    ours = XLSTMConfig.from_dict({**NXAI_7B_CONFIG, "embedding_dim": 256, "num_blocks": 2, "head_dim": 32,
                                   "gate_soft_cap": 15, "ffn_proj_factor": 3})
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "xlstm"
    theirs = xLSTMConfig.from_pretrained(tmp_path)  # strict: raises on a bad type or kernel name
    assert (theirs.hidden_size, theirs.num_hidden_layers, theirs.qk_dim, theirs.v_dim) == (256, 2, 128, 256)
    assert isinstance(theirs.gate_soft_cap, float) and isinstance(theirs.ffn_proj_factor, float)


def test_autoconfig_returns_ours():
    assert type(AutoConfig.for_model("xlstm", hidden_size=64, num_heads=2)) is XLSTMConfig


def test_round_trip_through_json(tmp_path):
    c = XLSTMConfig(hidden_size=96, num_hidden_layers=3, num_heads=4, weight_mode="fused", tie_word_embeddings=True)
    c.save_pretrained(tmp_path)
    back = XLSTMConfig.from_pretrained(tmp_path)
    assert dims(back) == dims(c) and back.weight_mode == "fused" and back.tie_word_embeddings


SMALL = dict(hidden_size=64, num_hidden_layers=2, num_heads=2, vocab_size=128)


@pytest.mark.parametrize("kwargs, field", [
    (dict(weight_mode="Fused"), "weight_mode"), (dict(use_bias="no"), "use_bias"), (dict(num_heads=3), "num_heads"),
    (dict(bos_token_id=0.5), "bos_token_id"),
])
def test_load_time_arguments_are_checked_like_constructor_ones(tmp_path, kwargs, field):
    XLSTMConfig(**SMALL).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=field):
        XLSTMConfig(**{**SMALL, **kwargs})
    with pytest.raises(ValueError, match=field):  # transformers would set these after __post_init__'s checks
        AutoConfig.from_pretrained(tmp_path, **kwargs)


def test_load_time_kernel_name_and_alias_are_normalised_before_saving(tmp_path):
    XLSTMConfig(**SMALL).save_pretrained(tmp_path / "a")
    ours = AutoConfig.from_pretrained(tmp_path / "a", chunkwise_kernel="chunkwise--triton_xl_chunk", embedding_dim=96,
                                      gate_soft_cap=10)
    assert ours.kernel_preference == "chunkwise--triton_xl_chunk" and ours.hidden_size == 96
    ours.save_pretrained(tmp_path / "b")
    theirs = xLSTMConfig.from_pretrained(tmp_path / "b")  # vanilla's strict validation: native names, float caps
    assert theirs.chunkwise_kernel == "chunkwise--native_autograd" and theirs.hidden_size == 96
    assert isinstance(theirs.gate_soft_cap, float) and theirs.gate_soft_cap == 10.0


def test_attribute_set_after_construction_is_checked_when_saved(tmp_path):
    config = XLSTMConfig(**SMALL)
    config.step_kernel = "triton"
    config.save_pretrained(tmp_path)
    assert xLSTMConfig.from_pretrained(tmp_path).step_kernel == "native" and config.kernel_preference == "triton"
    config.num_heads = 3
    with pytest.raises(ValueError, match="num_heads"):
        config.save_pretrained(tmp_path / "bad")
    assert not (tmp_path / "bad" / "config.json").exists()
