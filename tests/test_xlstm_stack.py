"""The original xLSTM family (xLSTM[a:b] stacks of mLSTM and sLSTM blocks): exactness against the `xlstm` package's
own model, the sLSTM cell against the package's float64 recurrence, the cache, padding, generation, checkpoints,
gradient checkpointing and LoRA."""

import dataclasses
import importlib.util

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import xlstm_hf  # noqa: F401  (registers the Auto classes)
from helpers import (
    ASSISTED_DECODING_REFUSAL,
    GENERATION_MODES,
    check_cached_generate_equals_recomputing,
    check_padded_batch_matches_each_row,
    left_pad,
    random_ids,
    right_pad,
)
from xlstm_hf.modeling_xlstm_stack import LORA_TARGET_MODULES as STACK_LORA_TARGET_MODULES
from xlstm_hf import XLSTMStackCache, XLSTMStackConfig, XLSTMStackForCausalLM, XLSTMStackModel
from xlstm_hf.kernels.slstm_torch import slstm_recurrent_sequence, slstm_recurrent_step, slstm_zero_state

VOCAB = 101


def stack_config(num_blocks=2, slstm_at=(1,), backend="vanilla", **overrides) -> dict:
    """A plain nested dict in the `xlstm` package's layout (what a YAML config gives), with small dims."""
    config = dict(
        vocab_size=VOCAB, embedding_dim=32, num_blocks=num_blocks, slstm_at=list(slstm_at), context_length=64,
        mlstm_block={"mlstm": {"conv1d_kernel_size": 4, "qkv_proj_blocksize": 4, "num_heads": 4}},
        slstm_block={"slstm": {"backend": backend, "num_heads": 4, "conv1d_kernel_size": 4,
                               "bias_init": "powerlaw_blockdependent"},
                     "feedforward": {"proj_factor": 1.3, "act_fn": "gelu"}},
    )
    if len(slstm_at) == num_blocks:
        config["mlstm_block"] = None
    if not slstm_at:
        config["slstm_block"] = None
    return {**config, **overrides}


def perturb(model: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """The paper's init leaves gates inert (zero gate and recurrent weights): give every weight order-one noise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=gen) * scale)
    return model


def tiny_stack(num_blocks=2, slstm_at=(1,), seed=0, **overrides) -> XLSTMStackForCausalLM:
    torch.manual_seed(seed)
    config = XLSTMStackConfig(**stack_config(num_blocks, slstm_at, chunk_size=8, pad_token_id=1, bos_token_id=0,
                                             eos_token_id=2, **overrides))
    return perturb(XLSTMStackForCausalLM(config), seed=seed).eval()


# --- the xlstm package: the reference --------------------------------------------------------------------------

XLSTM_MISSING = importlib.util.find_spec("xlstm") is None
needs_xlstm = pytest.mark.skipif(XLSTM_MISSING, reason="the `xlstm` package (test extra) is not installed")


def package_model(config: dict, seed: int = 0, perturbed: bool = True):
    """The `xlstm` package's xLSTMLMModel for a plain config dict (its dataclasses, built the way dacite would),
    with its own initialisation, then (`perturbed`) order-one noise on every weight."""
    from xlstm import (FeedForwardConfig, mLSTMBlockConfig, mLSTMLayerConfig, sLSTMBlockConfig, sLSTMLayerConfig,
                       xLSTMLMModel, xLSTMLMModelConfig)

    mlstm, slstm = config["mlstm_block"], config["slstm_block"]
    package_config = xLSTMLMModelConfig(
        **{k: v for k, v in config.items() if k not in ("mlstm_block", "slstm_block")},
        mlstm_block=None if mlstm is None else mLSTMBlockConfig(mlstm=mLSTMLayerConfig(**mlstm["mlstm"])),
        slstm_block=None if slstm is None else sLSTMBlockConfig(
            slstm=sLSTMLayerConfig(**slstm["slstm"]), feedforward=FeedForwardConfig(**slstm["feedforward"])),
    )
    torch.manual_seed(seed)
    model = xLSTMLMModel(package_config)
    model.reset_parameters()
    return (perturb(model, seed=seed) if perturbed else model).eval()


STACKS = {"[1:0]": (1, []), "[0:1]": (1, [0]), "[7:1]": (8, [3]), "[1:1]": (2, [1])}


@needs_xlstm
@pytest.mark.parametrize("stack", list(STACKS))
def test_logits_equal_the_xlstm_package(stack):
    num_blocks, slstm_at = STACKS[stack]
    reference = package_model(stack_config(num_blocks, slstm_at))
    model = XLSTMStackForCausalLM.from_xlstm_package(reference)  # the package's config object and state dict
    assert model.state_dict().keys() == reference.state_dict().keys()
    ids = random_ids(2, 24, vocab=VOCAB)
    with torch.no_grad():
        expected, logits = reference(ids), model(ids).logits
    assert expected.abs().max() > 1  # not a degenerate model
    assert (logits - expected).abs().max() < 1e-4


@needs_xlstm
def test_the_cuda_layout_of_the_slstm_weights():
    # The package's CUDA backend stores the recurrent kernel and bias in another layout; convert the vanilla model's
    # weights with the package's own functions and load them under backend="cuda".
    from xlstm.blocks.slstm.cell import sLSTMCell_cuda

    reference = package_model(stack_config(2, [1]))
    state_dict = reference.state_dict()
    cell = reference.xlstm_block_stack.blocks[1].xlstm.slstm_cell
    as_cuda = type("CudaCell", (), {"config": cell.config})()
    prefix = "xlstm_block_stack.blocks.1.xlstm.slstm_cell."
    state_dict[prefix + "_recurrent_kernel_"] = sLSTMCell_cuda._recurrent_kernel_ext2int(
        as_cuda, cell.recurrent_kernel.clone())
    state_dict[prefix + "_bias_"] = sLSTMCell_cuda._bias_ext2int(as_cuda, cell.bias.clone())
    config = XLSTMStackConfig.from_xlstm_package(dataclasses.asdict(reference.config))
    config.slstm_block["slstm"]["backend"] = "cuda"
    model = XLSTMStackForCausalLM.from_xlstm_package(state_dict, config)
    ids = random_ids(2, 16, vocab=VOCAB)
    with torch.no_grad():
        assert (model(ids).logits - reference(ids)).abs().max() < 1e-4


@needs_xlstm
def test_slstm_cell_equals_the_package_recurrence_in_float64():
    from xlstm.blocks.slstm.src.vanilla import slstm_forward, slstm_pointwise_function_registry

    B, S, NH, DH = 2, 9, 3, 4
    gen = torch.Generator().manual_seed(1)
    gates = torch.randn(B, S, 4, NH, DH, generator=gen, dtype=torch.float64) * 2
    R = torch.randn(NH, DH, 4, DH, generator=gen, dtype=torch.float64) * 0.5  # [head, in, gate, out]
    h, (h_last, c, n, m) = slstm_recurrent_sequence(gates, R)
    # The package: inputs (S, B, 4 * H) gate-major, recurrent kernel (NH, 4 * DH_out, DH_in), states (4, B, H).
    package_states = slstm_forward(
        gates.transpose(0, 1).reshape(S, B, -1), torch.zeros(4, B, NH * DH, dtype=torch.float64),
        R.permute(0, 2, 3, 1).reshape(NH, 4 * DH, DH), torch.zeros(4 * NH * DH, dtype=torch.float64),
        slstm_pointwise_function_registry["slstm"],
    )[0]
    assert torch.allclose(h, package_states[0, 1:].transpose(0, 1).view(B, S, NH, DH), atol=1e-12)
    for ours, theirs in zip((h_last, c, n, m), package_states[:, -1]):
        assert torch.allclose(ours.flatten(1), theirs, atol=1e-12)


def test_slstm_padding_and_state_in_out():
    B, S, NH, DH = 2, 10, 2, 4
    gen = torch.Generator().manual_seed(2)
    gates = torch.randn(B, S, 4, NH, DH, generator=gen, dtype=torch.float64)
    R = torch.randn(NH, DH, 4, DH, generator=gen, dtype=torch.float64) * 0.3
    full, state = slstm_recurrent_sequence(gates, R)
    first, middle = slstm_recurrent_sequence(gates[:, :6], R)  # a split sequence continues exactly
    rest, split_state = slstm_recurrent_sequence(gates[:, 6:], R, middle)
    assert torch.allclose(torch.cat([first, rest], 1), full) and all(map(torch.allclose, state, split_state))
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, :3] = mask[0, 7] = False  # padding at the start and in the middle of row 0
    padded, padded_state = slstm_recurrent_sequence(gates, R, mask=mask)
    alone, alone_state = slstm_recurrent_sequence(gates[:1, mask[0]], R)
    assert torch.allclose(padded[0, mask[0]], alone[0]) and all(
        torch.allclose(a[0], b[0]) for a, b in zip(padded_state, alone_state))
    h, stepped = slstm_recurrent_step(gates[:, 0], R, slstm_zero_state(B, NH, DH, dtype=torch.float64))
    assert torch.allclose(h, full[:, 0]) and stepped[2].min() > 0


@needs_xlstm
def test_initialisation_is_the_packages():
    # The package's reset_parameters: deterministic tensors (gate biases, zeros, ones) equal, random ones of its scale.
    config = stack_config(4, [1, 2])
    theirs = [dict(package_model(config, seed=seed, perturbed=False).named_parameters()) for seed in (0, 1)]
    torch.manual_seed(0)
    ours = dict(XLSTMStackForCausalLM(XLSTMStackConfig(**config)).named_parameters())
    assert ours.keys() == theirs[0].keys()
    for name, parameter in ours.items():
        if torch.allclose(theirs[0][name], theirs[1][name], atol=1e-6):
            assert torch.allclose(parameter, theirs[0][name], atol=1e-6), name
        elif parameter.numel() >= 256:
            assert 0.8 < parameter.std() / theirs[0][name].std() < 1.25, name


# --- configuration and checkpoints -----------------------------------------------------------------------------

@needs_xlstm
def test_config_accepts_the_package_config_and_round_trips(tmp_path):
    reference = package_model(stack_config(8, [3]))
    config = XLSTMStackConfig.from_xlstm_package(reference.config)  # private and derived fields included
    assert config.block_types == ["mlstm"] * 3 + ["slstm"] + ["mlstm"] * 4
    assert config.mlstm_inner_dim == reference.config.mlstm_block.mlstm._inner_embedding_dim
    assert config.ffn_dim == reference.xlstm_block_stack.blocks[3].ffn.config._proj_up_dim
    assert config.hidden_size == 32 and config.num_hidden_layers == 8 and not config.tie_word_embeddings
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is XLSTMStackConfig and loaded.to_diff_dict() == config.to_diff_dict()


@pytest.mark.parametrize("overrides, field", [
    (dict(slstm_at=[5]), "slstm_at"),
    (dict(mlstm_block={"mlstm": {"num_heads": 3}}), "mlstm_block.mlstm.num_heads"),
    (dict(mlstm_block={"mlstm": {"heads": 4}}), "mlstm_block.mlstm has unknown fields"),
    (dict(slstm_block={"slstm": {"num_heads": 5}}), "slstm_block.slstm.num_heads"),
    (dict(slstm_block={"slstm": {"backend": "triton"}}), "slstm_block.slstm.backend"),
    (dict(slstm_block={"slstm": {"function": "lstm"}}), "slstm_block.slstm.function"),
    (dict(slstm_block={"feedforward": {"act_fn": "tanh"}}), "slstm_block.feedforward.act_fn"),
    (dict(slstm_block=None), "slstm_block is None"),
    (dict(embedding_dim=0), "embedding_dim"),
    (dict(hidden_size=64), "its alias hidden_size=64 disagree"),  # beside embedding_dim=32: silently 64 before
    (dict(dropout="0.1"), "dropout"),  # TypeErrors that named no field
    (dict(mlstm_block={"mlstm": {"proj_factor": "2"}}), "mlstm_block.mlstm.proj_factor"),
    (dict(mlstm_block={"mlstm": {"proj_factor": float("nan")}}), "mlstm_block.mlstm.proj_factor"),
    (dict(slstm_block={"feedforward": {"proj_factor": -1.0}}), "slstm_block.feedforward.proj_factor"),
    (dict(slstm_block={"feedforward": {"dropout": "0.1"}}), "slstm_block.feedforward.dropout"),  # at model build
    (dict(slstm_block={"feedforward": {"dropout": 1.5}}), "slstm_block.feedforward.dropout"),
    (dict(slstm_block={"feedforward": {"round_proj_up_dim_up": "False"}}),  # read as true, silently
     "slstm_block.feedforward.round_proj_up_dim_up"),
    (dict(mlstm_block={"mlstm": {"round_proj_up_dim_up": "no"}}), "mlstm_block.mlstm.round_proj_up_dim_up"),
    (dict(slstm_block={"slstm": {"group_norm_weight": 1}}), "slstm_block.slstm.group_norm_weight"),
    (dict(add_embedding_dropout="yes"), "add_embedding_dropout"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        XLSTMStackConfig(**{**stack_config(), **overrides})


@pytest.mark.parametrize("overrides, field", [
    (dict(slstm_at=[5]), "slstm_at"), (dict(add_embedding_dropout="yes"), "add_embedding_dropout"),
    (dict(dropout="0.1"), "dropout"), (dict(mlstm_block={"mlstm": {"num_heads": 0}}), "mlstm_block.mlstm.num_heads"),
])
def test_load_time_arguments_are_checked_like_constructor_ones(tmp_path, overrides, field):
    # transformers sets from_pretrained's config arguments after the config is built: slstm_at=[5] made the sLSTM
    # block a random mLSTM one, silently.
    XLSTMStackConfig(**stack_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        AutoConfig.from_pretrained(tmp_path, **overrides)


def test_a_block_given_at_load_time_is_completed_and_a_later_attribute_checked_at_save(tmp_path):
    model = tiny_stack()
    model.save_pretrained(tmp_path / "a")
    block = {"slstm": {"num_heads": 4, "backend": "vanilla", "bias_init": "powerlaw_blockdependent"},
             "feedforward": {"proj_factor": 1.3, "dropout": 0.1}}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a", slstm_block=block)  # a KeyError at build before
    assert loaded.config.slstm_block == XLSTMStackConfig(**{**stack_config(), "slstm_block": block}).slstm_block
    ids = random_ids(1, 9, vocab=VOCAB)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)  # dropout is idle in eval
    config = model.config
    config.slstm_at = [7]
    with pytest.raises(ValueError, match="slstm_at"):
        config.save_pretrained(tmp_path / "b")
    assert not (tmp_path / "b" / "config.json").exists()


def test_an_empty_config_is_a_one_block_mlstm_model_and_all_slstm_is_understood():
    assert XLSTMStackConfig().block_types == ["mlstm"]
    only_slstm = XLSTMStackConfig(**stack_config(3, [0, 1, 2]))
    assert only_slstm.block_types == ["slstm"] * 3 and only_slstm.mlstm_block is None
    config = stack_config(3, [0])
    config.update(mlstm_block=None, slstm_at="all")
    assert XLSTMStackConfig(**config).slstm_at == [0, 1, 2]
    del config["slstm_at"]  # the package's rule: no mlstm_block means sLSTM everywhere
    assert XLSTMStackConfig(**config).slstm_at == [0, 1, 2]


@pytest.mark.parametrize("tied", [False, True])
def test_save_pretrained_round_trip_and_auto_classes(tmp_path, tied):
    model = tiny_stack(tie_weights=tied)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is XLSTMStackForCausalLM
    assert (loaded.lm_head.weight is loaded.token_embedding.weight) == tied
    ids = random_ids(2, 13, vocab=VOCAB)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
        backbone = AutoModel.from_pretrained(tmp_path)
        assert type(backbone) is XLSTMStackModel
        assert torch.equal(backbone(ids).last_hidden_state, model(ids, output_hidden_states=True).hidden_states[-1])


# --- the cache and exactness of generation ---------------------------------------------------------------------

def test_cache_layout_and_batch_operations():
    model = tiny_stack(3, [1])
    cache = model(random_ids(3, 7, vocab=VOCAB)).cache
    assert isinstance(cache, XLSTMStackCache) and cache.get_seq_length() == 7 and cache.batch_size == 3
    assert [layer.names for layer in cache.layers] == [("conv", "C", "n", "m"), ("conv", "h", "c", "n", "m"),
                                                       ("conv", "C", "n", "m")]
    conv, C, n, m = cache.layers[0].state
    assert conv.shape == (3, 3, 64) and C.shape == (3, 4, 16, 16) and m.shape == (3, 4)
    assert cache.layers[1].state[1].shape == (3, 4, 8)
    before = [t.clone() for t in cache.layers[1].state]
    pointers = [t.data_ptr() for t in cache.layers[1].state]
    cache.reorder_cache(torch.tensor([2, 0, 0]))
    assert all(torch.equal(t, b[[2, 0, 0]]) for t, b in zip(cache.layers[1].state, before))
    assert [t.data_ptr() for t in cache.layers[1].state] == pointers  # in place
    cache.batch_select_indices(torch.tensor([0]))
    cache.batch_repeat_interleave(2)
    assert cache.batch_size == 2 and torch.equal(cache.layers[1].state[2][1], before[2][2])
    cache.reset()
    assert cache.get_seq_length() == 0 and all(t.eq(0).all() for layer in cache.layers for t in layer.state)
    with pytest.raises(ValueError, match="batch size"):
        model(random_ids(3, 2, vocab=VOCAB), cache=cache)


@pytest.mark.parametrize("stack", ["[1:1]", "[0:1]", "[1:0]"])
def test_prefill_then_decode_equals_full_forward(stack):
    num_blocks, slstm_at = STACKS[stack]
    model = tiny_stack(num_blocks, slstm_at)
    ids = random_ids(2, 26, vocab=VOCAB)
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :11])
        cache = out.cache
        assert (out.logits - full[:, :11]).abs().max() < 1e-5
        segment = model(ids[:, 11:17], cache=cache)  # a multi-token continuation
        assert (segment.logits - full[:, 11:17]).abs().max() < 1e-5
        for t in range(17, 26):
            step = model(ids[:, t : t + 1], cache=cache)
            assert step.cache is cache and cache.get_seq_length() == t + 1
            assert (step.logits[:, 0] - full[:, t]).abs().max() < 1e-5, t


def test_left_padded_batch_matches_each_row_alone():
    rows = [random_ids(1, 13, vocab=VOCAB, seed=1), random_ids(1, 6, vocab=VOCAB, seed=2),
            random_ids(1, 1, vocab=VOCAB, seed=3)]
    check_padded_batch_matches_each_row(tiny_stack(), rows, new_tokens=6)


def test_right_padded_training_batch_leaves_every_state_as_the_row_alone():
    model = tiny_stack().train()
    model.config.dropout = 0.0
    rows = [random_ids(1, 11, vocab=VOCAB, seed=4), random_ids(1, 5, vocab=VOCAB, seed=5)]
    batch, mask = right_pad(rows)
    out = model(batch, attention_mask=mask, labels=batch.masked_fill(mask == 0, -100), use_cache=True)
    for r, row in enumerate(rows):
        alone = model(row, use_cache=True)
        assert (out.logits[r, : row.shape[1]] - alone.logits[0]).abs().max() < 1e-5
        for a, b in zip(out.cache.layers, alone.cache.layers):  # convolution and cell states alike
            assert all(torch.allclose(x[r], y[0], atol=1e-5) for x, y in zip(a.state, b.state))
    out.loss.backward()
    left, left_mask = left_pad(rows)  # padding before the first token: the cells start from a fresh state there
    model(left, attention_mask=left_mask, labels=left.masked_fill(left_mask == 0, -100)).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("mode", list(GENERATION_MODES))
def test_generate_with_the_cache_equals_recomputing_everything(mode):
    rows = [random_ids(1, 9, vocab=VOCAB, seed=6), random_ids(1, 4, vocab=VOCAB, seed=7)]
    check_cached_generate_equals_recomputing(tiny_stack(), rows, mode, new_tokens=5)


def test_generate_continues_a_returned_cache():
    model = tiny_stack()
    ids = random_ids(2, 12, vocab=VOCAB)
    prefix = model(ids[:, :7])
    continued = model.generate(ids, attention_mask=torch.ones_like(ids), cache=prefix.cache, max_new_tokens=4,
                               min_new_tokens=4, do_sample=False)
    fresh = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4,
                           do_sample=False)
    assert torch.equal(continued, fresh)


def test_chunked_prefill_embeddings_prompt_and_no_assisted_decoding():
    model = tiny_stack()
    ids = random_ids(2, 30, vocab=VOCAB)
    ones = torch.ones_like(ids)  # explicit: some random ids equal pad_token_id
    plain = model.generate(ids, attention_mask=ones, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    chunked = model.generate(ids, attention_mask=ones, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                             prefill_chunk_size=8)
    embedded = model.generate(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=ones,
                              max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(plain, chunked) and torch.equal(embedded[:, -4:], plain[:, -4:])
    with pytest.raises(ValueError, match=ASSISTED_DECODING_REFUSAL):
        model.generate(ids[:1], assistant_model=tiny_stack(seed=1), max_new_tokens=3)  # batch 1: refused as stateful


# --- training --------------------------------------------------------------------------------------------------

def test_gradient_checkpointing_gives_the_same_gradients():
    ids = random_ids(2, 12, vocab=VOCAB)
    grads = []
    for checkpointing in (False, True):
        model = tiny_stack().train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert all(g.abs().sum() > 0 for name, g in grads[0].items() if "slstm_cell" in name)
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_lora_trains():
    peft = pytest.importorskip("peft")
    # PEFT's default for model_type "xlstm_stack" (registered by `import xlstm_hf`): every nn.Linear of the blocks.
    model = peft.get_peft_model(tiny_stack(), peft.LoraConfig(r=8, lora_alpha=16)).train()
    wrapped = {n.removeprefix("base_model.model.") for n, m in model.named_modules() if hasattr(m, "lora_A")}
    linear = {n for n, m in tiny_stack().named_modules() if isinstance(m, torch.nn.Linear)}
    assert wrapped == linear - {"lm_head"} and model.peft_config["default"].target_modules == set(
        STACK_LORA_TARGET_MODULES)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    ids = torch.randint(3, 50, (4, 4), generator=torch.Generator().manual_seed(0)).repeat(1, 5)
    first = model(input_ids=ids, labels=ids).loss.item()
    for _ in range(25):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    assert model(input_ids=ids, labels=ids).loss.item() < 0.5 * first


@needs_xlstm
def test_slstm_benchmark_runs_in_its_cpu_mode(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "slstm.py"
    run = subprocess.run([sys.executable, str(script), "--tiny", "--out", str(tmp_path / "slstm.json")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads((tmp_path / "slstm.json").read_text())["rows"]
    assert {r["name"] for r in rows} == {"xlstm_hf_torch", "xlstm_vanilla"}
    assert all(r["max_abs_err_vs_fp64"] < 0.05 and r["ms"] > 0 for r in rows)  # bfloat16 against float64
