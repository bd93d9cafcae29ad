"""PEFT LoRA on both weight modes: training lowers the loss, adapters round-trip, merging is exact, generate works,
and gradient checkpointing with `enable_input_require_grads`."""

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

from helpers import random_ids, tiny_model  # noqa: E402
from test_xlstm_stack import tiny_stack  # noqa: E402
from xlstm_hf import lora_target_modules  # noqa: E402


def pattern_batch(batch=4, length=24, seed=0):
    """A task a model learns quickly: each row repeats a short random motif."""
    gen = torch.Generator().manual_seed(seed)
    motifs = torch.randint(3, 50, (batch, 4), generator=gen)
    return motifs.repeat(1, length // 4)


def lora_model(weight_mode="single", target_modules=None, seed=0):
    model = tiny_model(weight_mode=weight_mode, seed=seed)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                        target_modules=target_modules or lora_target_modules(model.config))
    return get_peft_model(model, config)


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
def test_lora_training_lowers_the_loss(weight_mode):
    torch.manual_seed(0)
    model = lora_model(weight_mode).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    ids = pattern_batch()
    first = model(input_ids=ids, labels=ids).loss.item()
    for _ in range(40):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    last = model(input_ids=ids, labels=ids).loss.item()
    assert last < 0.5 * first, (first, last)


def test_all_linear_and_the_documented_names_find_their_modules():
    for weight_mode in ("single", "fused"):
        model = lora_model(weight_mode, target_modules="all-linear")
        wrapped = {n.split(".")[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
        assert set(lora_target_modules(model.config)) <= wrapped
    default = get_peft_model(tiny_model(), LoraConfig(r=4))  # PEFT's default for model_type "xlstm" (registered)
    assert any(hasattr(m, "lora_A") for m in default.modules())


def test_default_targets_of_the_stack_family_are_its_linear_layers():
    """finetune_lora.py's default targets, `lora_target_modules(config)`, read `weight_mode`, which an xlstm_stack
    config has not. Against the model's own nn.Linear modules (PEFT leaves the head out)."""
    model = tiny_stack()
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head"}
    adapted = get_peft_model(model, LoraConfig(r=4, target_modules=lora_target_modules(model.config)))
    assert {n.removeprefix("base_model.model.") for n, m in adapted.named_modules() if hasattr(m, "lora_A")} == linear


def train_a_little(model, steps=5):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = pattern_batch()
    for _ in range(steps):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
def test_adapters_save_reload_and_merge(tmp_path, weight_mode):
    model = train_a_little(lora_model(weight_mode).train())
    ids = random_ids(2, 15)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(tiny_model(weight_mode=weight_mode), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, expected)
        merged = reloaded.merge_and_unload()
        assert not any(hasattr(m, "lora_A") for m in merged.modules())
        assert (merged(input_ids=ids).logits - expected).abs().max() < 1e-4  # float32 rounding of W + BA


def test_generate_from_a_peft_model_equals_the_merged_model():
    model = train_a_little(lora_model().train())
    ids = random_ids(2, 9)
    tokens = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                            do_sample=False)
    merged = model.merge_and_unload()
    assert torch.equal(tokens, merged.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                               min_new_tokens=6, do_sample=False))


def test_adapter_switches_reach_generate():
    """`disable_adapter`, `merge_adapter` and `set_adapter` are Python state and in-place weight updates: on CUDA a
    decode graph captured before the switch kept computing the old adapters (logits off by 3-4, other tokens). Each
    is checked against generate() without a cache, which runs the whole sequence through the forward at every step."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = get_peft_model(tiny_model().to(device), LoraConfig(r=4, target_modules=["q", "v", "out_proj", "proj_down"],
                                                               init_lora_weights=False)).eval()
    ids = random_ids(2, 8).to(device)

    def check() -> None:
        greedy = dict(attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                      output_logits=True, return_dict_in_generate=True)
        with torch.no_grad():
            cached, uncached = model.generate(ids, **greedy), model.generate(ids, use_cache=False, **greedy)
        assert torch.equal(cached.sequences, uncached.sequences)
        assert (torch.stack(cached.logits) - torch.stack(uncached.logits)).abs().max() < 1e-4

    check()  # the adapter on (on CUDA the step that was captured)
    with model.disable_adapter():
        check()
    model.merge_adapter()
    check()
    model.unmerge_adapter()
    model.add_adapter("two", LoraConfig(r=4, target_modules=["q", "v"], init_lora_weights=False))
    model.set_adapter("two")
    check()


def test_gradient_checkpointing_with_input_require_grads():
    ids = pattern_batch()
    grads = []
    for checkpointing in (False, True):
        base = tiny_model()
        if checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            base.enable_input_require_grads()  # reentrant checkpointing needs an input that requires grad
        model = get_peft_model(base, LoraConfig(r=4, lora_dropout=0.0, target_modules=["q", "v", "proj_down"]))
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    # lora_B starts at zero, so lora_A's first gradient is zero; lora_B's is not.
    assert all(g.abs().sum() > 0 for name, g in grads[1].items() if "lora_B" in name)
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
