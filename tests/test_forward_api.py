"""The forward API users expect from a transformers causal LM."""

import functools
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from helpers import TINY, random_ids, tiny_config, tiny_model
from xlstm_hf import XLSTMCache, XLSTMForCausalLM

V = TINY["vocab_size"]


def test_labels_give_the_shifted_cross_entropy_ignoring_minus_100():
    model = tiny_model()
    ids = random_ids(2, 12)
    labels = ids.clone()
    labels[0, :5] = -100
    out = model(ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_inputs_embeds_equal_the_ids_path():
    model = tiny_model()
    ids = random_ids(2, 9)
    embeds = model.get_input_embeddings()(ids)
    assert torch.equal(model(ids).logits, model(inputs_embeds=embeds).logits)


def test_output_hidden_states():
    model = tiny_model()
    ids = random_ids(2, 9)
    out = model.backbone(ids, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == TINY["num_hidden_layers"] + 1
    assert torch.equal(hs[0], model.get_input_embeddings()(ids))
    assert torch.equal(hs[-1], out.last_hidden_state)
    assert model(ids).hidden_states is None


def test_return_dict_false_gives_a_tuple():
    model = tiny_model()
    ids = random_ids(1, 5)
    out = model(ids, labels=ids, return_dict=False)
    assert isinstance(out, tuple)
    ref = model(ids, labels=ids)
    assert torch.equal(out[0], ref.loss) and torch.equal(out[1], ref.logits)


@pytest.mark.parametrize("keep", [1, 3])
def test_logits_to_keep(keep):
    model = tiny_model()
    ids = random_ids(2, 10)
    full = model(ids).logits
    part = model(ids, logits_to_keep=keep).logits
    assert part.shape == (2, keep, V)
    assert torch.allclose(part, full[:, -keep:], atol=1e-6)
    indices = torch.tensor([0, 4])
    assert torch.allclose(model(ids, logits_to_keep=indices).logits, full[:, indices], atol=1e-6)


def grads_of(model, ids):
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model().train()
    ids = random_ids(2, 20)
    plain = grads_of(model, ids)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert all(block.gradient_checkpointing for block in model.backbone.blocks)
    checkpointed = grads_of(model, ids)
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_training_with_the_default_use_cache():
    # transformers' own model fails here (backward through its in-place cache).
    model = tiny_model().train()
    assert model.config.use_cache
    ids = random_ids(2, 20)
    out = model(ids, labels=ids)
    assert isinstance(out.cache, XLSTMCache)
    out.loss.backward()
    # Continue training from the returned state: the cache is updated in place again, backward still works.
    out2 = model(random_ids(2, 7, seed=1), labels=random_ids(2, 7, seed=1), cache=out.cache)
    out2.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 0.3), (torch.float16, 0.05)])
def test_half_precision(dtype, tol):
    model = tiny_model()
    ids = random_ids(2, 30)
    ref = model(ids).logits
    low = tiny_model().to(dtype)
    out = low(ids).logits
    assert out.dtype == torch.float32  # logits are always float32
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() < tol


def test_prefill_then_continue_equals_full_forward():
    model = tiny_model()
    ids = random_ids(2, 25)
    full = model(ids).logits
    out = model(ids[:, :17], use_cache=True)
    assert out.cache.get_seq_length() == 17
    rest = model(ids[:, 17:24], cache=out.cache)
    step = model(ids[:, 24:], cache=rest.cache)
    assert torch.allclose(torch.cat([out.logits, rest.logits, step.logits], 1), full, atol=1e-5)
    assert step.cache is out.cache and out.cache.get_seq_length() == 25


@pytest.mark.parametrize("family", ["xlstm", "stack"])
@pytest.mark.parametrize("name", ["past_key_values", "cache_params"])
def test_the_cache_under_transformers_other_names_is_continued(family, name):
    # cache_params is the name in transformers' own xLSTM; it used to fall into **kwargs, and the step ran from a
    # fresh state.
    if family == "xlstm":
        model, vocab = tiny_model(), TINY["vocab_size"]
        backbone = model.backbone
    else:
        from test_xlstm_stack import VOCAB, tiny_stack

        from xlstm_hf import XLSTMStackModel

        model, vocab = tiny_stack(), VOCAB
        backbone = functools.partial(XLSTMStackModel.forward, model)  # the causal LM is its own backbone
    ids = random_ids(2, 9, vocab=vocab)
    with torch.no_grad():
        for call in (model, backbone):
            cache = model(ids[:, :8]).cache
            with pytest.warns(FutureWarning, match=name):
                out = call(ids[:, 8:], **{name: cache})
            assert out.cache is cache and cache.get_seq_length() == 9
        with pytest.warns(FutureWarning, match=name):
            step = model(ids[:, 8:], **{name: model(ids[:, :8]).cache}).logits
        assert torch.allclose(step, model(ids).logits[:, -1:], atol=1e-5)


def test_meta_device_and_device_map(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    with torch.device("meta"):
        empty = XLSTMForCausalLM(tiny_config())
    assert all(p.device.type == "meta" for p in empty.parameters())
    mapped = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto")
    gpu = torch.cuda.is_available()  # accelerate fills the GPU first; there the kernels are Triton's, not PyTorch's
    assert {p.device.type for p in mapped.parameters()} == {"cuda" if gpu else "cpu"}
    ids = random_ids(2, 9)
    difference = (mapped(ids.to(mapped.device)).logits.cpu() - model(ids).logits).abs().max()
    assert difference <= (1e-4 if gpu else 0)


@pytest.mark.parametrize("family", ["xlstm", "stack"])
def test_blocks_offloaded_to_cpu_and_disk_keep_their_state(tmp_path, family):
    """accelerate keeps an offloaded block's weights on the meta device between forwards: its state must live where
    the block computes (the meta device lost it, so continuing and generate() failed), and on a GPU the fused kernels
    and the decode graph must leave such blocks to their modules. Block 1 on the CPU (offloaded where a GPU computes),
    block 2 on disk."""
    main = 0 if torch.cuda.is_available() else "cpu"
    if family == "xlstm":
        model, blocks, ids = tiny_model(num_hidden_layers=3), "backbone.blocks", random_ids(2, 9)
        rest = ["backbone.embeddings", "backbone.out_norm", "lm_head"]
    else:
        from test_xlstm_stack import VOCAB, tiny_stack

        model, blocks, ids = tiny_stack(3, [1]), "xlstm_block_stack.blocks", random_ids(2, 9, vocab=VOCAB)
        rest = ["token_embedding", "emb_dropout", "xlstm_block_stack.post_blocks_norm", "lm_head"]
    model.save_pretrained(tmp_path / "model")
    device_map = {**dict.fromkeys([*rest, f"{blocks}.0"], main), f"{blocks}.1": "cpu", f"{blocks}.2": "disk"}
    offloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model", device_map=device_map,
                                                     offload_folder=tmp_path / "offload")
    assert any(p.device.type == "meta" for p in offloaded.parameters())
    model, ids = model.to(offloaded.device), ids.to(offloaded.device)
    with torch.no_grad():
        out = offloaded(ids[:, :6], use_cache=True)
        step = offloaded(ids[:, 6:], cache=out.cache)
        assert torch.allclose(torch.cat([out.logits, step.logits], 1), model(ids).logits, atol=1e-4)
        greedy = dict(attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
        assert torch.equal(offloaded.generate(ids, **greedy), model.generate(ids, **greedy))


@pytest.mark.parametrize("family", ["xlstm", "stack"])
def test_documents_packed_without_padding_are_refused(family):
    """transformers' DataCollatorWithFlattening packs documents into one row and marks each start by position_ids
    restarting at 0: the recurrent state would carry across them (documents after the first came out up to 2.7 off
    in logits, unnoticed). Position ids of left-padded rows, or of a continued cache, are no such restart."""
    from transformers import DataCollatorWithFlattening

    from helpers import left_pad

    if family == "xlstm":
        model, vocab = tiny_model(), TINY["vocab_size"]
    else:
        from test_xlstm_stack import VOCAB, tiny_stack

        model, vocab = tiny_stack(), VOCAB
    docs = [random_ids(1, n, vocab=vocab, seed=n) for n in (6, 4, 5)]
    for flash_kwargs in (False, True):
        batch = DataCollatorWithFlattening(return_position_ids=True, return_flash_attn_kwargs=flash_kwargs)(
            [{"input_ids": d[0].tolist()} for d in docs])
        with pytest.raises(ValueError, match="packed into one row"):
            model(**batch)
    ids, mask = left_pad(docs)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as transformers' generate() makes them
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        assert torch.equal(model(ids, attention_mask=mask, position_ids=positions).logits, full)
        prefix = model(ids[:, :3], attention_mask=mask[:, :3], use_cache=True)
        rest = model(ids[:, 3:], attention_mask=mask, cache=prefix.cache, position_ids=positions[:, 3:]).logits
        assert torch.allclose(rest, full[:, 3:], atol=1e-5)
