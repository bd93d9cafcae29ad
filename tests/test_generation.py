"""Generation: the recurrent state as a transformers Cache, every generate() mode, exact padding, long prompts."""

import threading

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer, TextStreamer, pipeline
from transformers.cache_utils import Cache
from transformers.masking_utils import create_causal_mask

from helpers import (
    ASSISTED_DECODING_REFUSAL,
    DEVICE,
    GENERATION_MODES,
    check_cached_generate_equals_recomputing,
    check_padded_batch_matches_each_row,
    left_pad,
    make_tokenizer,
    random_ids,
    right_pad,
    tiny_config,
    tiny_model,
)
from xlstm_hf import XLSTMCache


# --- the cache ---------------------------------------------------------------------------------------------------

def test_cache_is_a_static_transformers_cache():
    config = tiny_config()
    cache = XLSTMCache(config, batch_size=3)
    assert isinstance(cache, Cache) and cache.is_compileable and len(cache) == config.num_hidden_layers
    C, n, m = cache.layers[0].state
    assert C.shape == (3, config.num_heads, config.qk_head_dim, config.v_head_dim) and C.dtype == torch.float32
    assert n.shape == (3, config.num_heads, config.qk_head_dim) and m.shape == (3, config.num_heads)
    assert XLSTMCache(config, 1, dtype=torch.bfloat16).layers[0].C.dtype == torch.bfloat16
    assert XLSTMCache(tiny_config(inference_state_dtype="bfloat16"), 1).layers[0].C.dtype == torch.bfloat16


def test_cache_is_updated_in_place_and_resets():
    model = tiny_model()
    cache = XLSTMCache(model.config, 2)
    pointers = [t.data_ptr() for layer in cache.layers for t in layer.state]
    out = model(random_ids(2, 9), cache=cache)
    assert out.cache is cache and cache.get_seq_length() == 9
    assert [t.data_ptr() for layer in cache.layers for t in layer.state] == pointers
    assert cache.layers[0].C.abs().sum() > 0
    cache.reset()
    assert cache.get_seq_length() == 0 and all(t.abs().sum() == 0 for layer in cache.layers for t in layer.state)


def test_cache_answers_transformers_state_and_mask_queries():
    """`has_previous_state` and `get_mask_sizes` as transformers asks them: the base class's versions assume layers
    of another kind and raised errors that contradicted each other. A mask built over the cache must be the last rows
    of the mask over the whole sequence."""
    model = tiny_model()
    cache = XLSTMCache(model.config, 2)
    assert not cache.has_previous_state()
    model(random_ids(2, 9), cache=cache)
    assert cache.has_previous_state() and cache.has_previous_state(layer_idx=1)
    with pytest.raises(IndexError, match="layer_idx"):
        cache.has_previous_state(layer_idx=len(cache.layers))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :2] = 0

    def causal_mask(length, cache):
        return create_causal_mask(config=model.config, inputs_embeds=torch.zeros(2, length, 8), attention_mask=mask,
                                  cache=cache, position_ids=torch.arange(12 - length, 12).expand(2, -1))

    assert torch.equal(causal_mask(3, cache), causal_mask(12, None)[:, :, -3:])


def test_cache_layers_start_zeroed_on_their_devices_and_share_no_state():
    config = tiny_config(num_hidden_layers=5)
    devices = ["cpu", "meta", "cpu", "cpu", "meta"]  # a model split per layer: each device's layers in its own buffers
    cache = XLSTMCache(config, 2, device=devices)
    assert [layer.C.device.type for layer in cache.layers] == devices
    on_cpu = [layer for layer in cache.layers if layer.C.device.type == "cpu"]
    assert all(t.abs().sum() == 0 for layer in on_cpu for t in layer.state)
    for value, layer in enumerate(on_cpu, 1):
        for t in layer.state:
            t.fill_(value)
    for value, layer in enumerate(on_cpu, 1):  # a layer's write reached neither another layer nor another state
        assert all(torch.equal(t, torch.full_like(t, value)) for t in layer.state)
    with pytest.raises(ValueError, match="device lists 2 devices for 5 layers"):
        XLSTMCache(config, 2, device=["cpu", "cpu"])


def test_bfloat16_state_stays_close_to_float32():
    model = tiny_model()
    ids = random_ids(2, 12)
    ref = model(ids, cache=XLSTMCache(model.config, 2)).cache
    low = model(ids, cache=XLSTMCache(model.config, 2, dtype=torch.bfloat16)).cache
    for a, b in zip(ref.layers, low.layers):
        assert torch.allclose(a.C, b.C.float(), rtol=2e-2, atol=2e-2)


def test_cache_batch_operations():
    model = tiny_model()
    ids = random_ids(3, 6)
    cache = model(ids).cache
    before = [t.clone() for t in cache.layers[1].state]
    cache.reorder_cache(torch.tensor([2, 0, 0]))
    assert all(torch.equal(t, b[[2, 0, 0]]) for t, b in zip(cache.layers[1].state, before))
    cache.batch_select_indices(torch.tensor([1, 2]))
    assert all(torch.equal(t, b[[0, 0]]) for t, b in zip(cache.layers[1].state, before))
    cache.batch_repeat_interleave(2)
    assert cache.batch_size == 4 and torch.equal(cache.layers[1].C[3], before[0][0])
    cache.to(dtype=torch.float64)
    assert cache.layers[0].C.dtype == torch.float64
    assert cache.to(torch.bfloat16).layers[1].n.dtype == torch.bfloat16  # positional, as Tensor.to takes it
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        cache.crop(1)


# --- exactness ---------------------------------------------------------------------------------------------------

def test_prefill_then_decode_equals_full_forward_at_every_step():
    model = tiny_model()
    ids = random_ids(2, 30)
    full = model(ids).logits
    out = model(ids[:, :18])
    assert (out.logits - full[:, :18]).abs().max() < 1e-5
    cache = out.cache
    for t in range(18, 30):
        step = model(ids[:, t : t + 1], cache=cache)
        assert step.cache is cache and cache.get_seq_length() == t + 1
        assert (step.logits[:, 0] - full[:, t]).abs().max() < 1e-5, t


def test_left_padded_batch_matches_each_row_alone():
    check_padded_batch_matches_each_row(tiny_model(), [random_ids(1, 13, seed=1), random_ids(1, 6, seed=2),
                                                       random_ids(1, 1, seed=3)], new_tokens=8)


def test_right_padded_training_batch_is_exact():
    model = tiny_model().train()
    rows = [random_ids(1, 11, seed=4), random_ids(1, 5, seed=5)]
    batch, mask = right_pad(rows)
    labels = batch.masked_fill(mask == 0, -100)
    out = model(batch, attention_mask=mask, labels=labels)
    for r, row in enumerate(rows):
        alone = model(row, labels=row)
        assert (out.logits[r, : row.shape[1]] - alone.logits[0]).abs().max() < 1e-5
        for a, b in zip(out.cache.layers, alone.cache.layers):  # padding after the row leaves its state as it was
            assert torch.allclose(a.C[r], b.C[0], atol=1e-5) and torch.allclose(a.m[r], b.m[0], atol=1e-5)
    # Mean over the real tokens of both rows, as one long batch would give.
    per_row = [model(row, labels=row).loss * (row.shape[1] - 1) for row in rows]
    assert torch.allclose(out.loss, sum(per_row) / sum(row.shape[1] - 1 for row in rows), atol=1e-5)
    out.loss.backward()


@pytest.mark.parametrize("segment", [1, 7, 16])
def test_segmented_prefill_is_exact(segment):
    # In float64: the chunkwise and step forms round differently, and in float32 that reached 1e-4 on some CPUs.
    model = tiny_model().double()
    ids = random_ids(2, 40)
    ref = model(ids, output_hidden_states=True)
    model.config.max_inference_chunksize = segment
    out = model(ids, output_hidden_states=True)
    assert (out.logits - ref.logits).abs().max() < 1e-9
    assert all((a - b).abs().max() < 1e-9 for a, b in zip(out.hidden_states, ref.hidden_states))
    for a, b in zip(out.cache.layers, ref.cache.layers):
        assert torch.allclose(a.C, b.C, rtol=0, atol=1e-9)
    last = model(ids, logits_to_keep=3)
    assert last.logits.shape[1] == 3 and (last.logits - ref.logits[:, -3:]).abs().max() < 1e-9


def test_generate_computes_the_head_only_for_the_last_position():
    model = tiny_model()
    widths = []
    model.lm_head.register_forward_hook(lambda module, inputs, output: widths.append(inputs[0].shape[1]))
    model.generate(random_ids(2, 25), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert widths == [1, 1, 1]


@pytest.mark.parametrize("segment", [7, 64])
def test_the_last_block_works_out_only_the_kept_positions(each_backend, segment):
    # Segments of 7: the kept positions lie in the last one, and the last block of the others only updates its state.
    model = tiny_model().to(DEVICE)
    model.config.max_inference_chunksize = segment
    ids, mask = (t.to(DEVICE) for t in left_pad([random_ids(1, 20), random_ids(1, 14, seed=1)]))
    widths = []
    last = model.backbone.blocks[-1]
    last.mlstm_layer.out_proj.register_forward_hook(lambda module, inputs, output: widths.append(inputs[0].shape[1]))
    with torch.no_grad():
        assert last.fused_inference(ids.new_zeros(1, dtype=torch.float)) == (each_backend == "triton")
        full = model(ids, attention_mask=mask)
        assert sum(widths) == 20
        widths.clear()
        kept = model(ids, attention_mask=mask, logits_to_keep=3)
    assert sum(widths) == 3
    assert (kept.logits - full.logits[:, -3:]).abs().max() < 1e-5
    for a, b in zip(kept.cache.layers, full.cache.layers):
        assert all(torch.equal(x, y) for x, y in zip(a.state, b.state))


# --- generate() modes --------------------------------------------------------------------------------------------

def greedy_by_hand(model, ids, steps):
    for _ in range(steps):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


def test_greedy_equals_argmax_by_hand():
    model = tiny_model()
    ids = random_ids(2, 10)
    out = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(out, greedy_by_hand(model, ids, 6))


@pytest.mark.parametrize("mode", list(GENERATION_MODES))
def test_generate_with_the_cache_equals_recomputing_everything(mode):
    check_cached_generate_equals_recomputing(tiny_model(), [random_ids(1, 9, seed=6), random_ids(1, 4, seed=7)], mode,
                                             new_tokens=6)


def test_eos_and_min_new_tokens():
    model = tiny_model()
    ids = random_ids(1, 8)
    free = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    eos = int(free[0, 8 + 2])  # greedy emits this as its third new token
    stopped = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=eos)
    first = (free[0, 8:] == eos).nonzero()[0, 0].item()
    assert torch.equal(stopped[0], free[0, : 8 + first + 1])
    forced = model.generate(ids, max_new_tokens=6, min_new_tokens=5, do_sample=False, eos_token_id=eos)
    assert forced.shape[1] >= 8 + 5 and (forced[0, 8 : 8 + 4] != eos).all()


def test_stopping_criteria():
    class StopAfter(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 12, dtype=torch.bool)

    out = tiny_model().generate(random_ids(1, 8), max_new_tokens=20, do_sample=False,
                                stopping_criteria=StoppingCriteriaList([StopAfter()]))
    assert out.shape[1] == 12


def test_streamers():
    model, tokenizer = tiny_model(), make_tokenizer()
    prompt = tokenizer("the way of the word", return_tensors="pt")
    reference = model.generate(**prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    expected = tokenizer.decode(reference[0, prompt.input_ids.shape[1]:], skip_special_tokens=True)

    printed = []

    class Capture(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            printed.append(text)

    model.generate(**prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                   streamer=Capture(tokenizer, skip_prompt=True, skip_special_tokens=True))
    assert "".join(printed).strip() == expected.strip()

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = threading.Thread(target=model.generate, kwargs=dict(**prompt, max_new_tokens=6, min_new_tokens=6,
                                                                 do_sample=False, streamer=streamer))
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    assert streamed.strip() == expected.strip()


def test_text_generation_pipeline():
    model, tokenizer = tiny_model(), make_tokenizer()
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    result = generator("the way of", max_new_tokens=5, min_new_tokens=5, do_sample=False, return_tensors=True)[0]
    ids = tokenizer("the way of", return_tensors="pt").to(model.device)  # the pipeline may have moved it to a GPU
    reference = model.generate(**ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert list(result["generated_token_ids"]) == reference[0].tolist()
    text = generator("the way of", max_new_tokens=5, min_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("the way of") and len(text) > len("the way of")


def test_chat_template_and_multi_turn_continuation_from_the_returned_cache():
    model, tokenizer = tiny_model(), make_tokenizer()
    chat = [{"role": "user", "content": "what is the way"}]
    first = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**first, max_new_tokens=4, min_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    cache = out.cache
    assert isinstance(cache, XLSTMCache) and cache.get_seq_length() == out.sequences.shape[1] - 1
    reply = tokenizer.decode(out.sequences[0, first["input_ids"].shape[1]:], skip_special_tokens=True)
    chat += [{"role": "assistant", "content": reply}, {"role": "user", "content": "how can you see"}]
    # The second turn: the whole conversation so far plus the new user turn, continuing from the cache.
    second_turn = tokenizer("<user> how can you see <assistant> ", return_tensors="pt").input_ids
    conversation = torch.cat([out.sequences, second_turn], 1)
    continued = model.generate(conversation, attention_mask=torch.ones_like(conversation), cache=cache,
                               max_new_tokens=4, min_new_tokens=4, do_sample=False)
    fresh = model.generate(conversation, attention_mask=torch.ones_like(conversation), max_new_tokens=4,
                           min_new_tokens=4, do_sample=False)
    assert torch.equal(continued, fresh)


def test_generate_from_a_cache_passed_in_expands_it_for_beams():
    model = tiny_model()
    ids = random_ids(2, 7)
    prefix = model(ids[:, :5])
    continued = model.generate(ids, attention_mask=torch.ones_like(ids), cache=prefix.cache, num_beams=2,
                               max_new_tokens=3, min_new_tokens=3, do_sample=False)
    fresh = model.generate(ids, num_beams=2, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert torch.equal(continued, fresh)


def test_prefill_chunk_size_of_generate():
    model = tiny_model()
    ids = random_ids(2, 30)
    plain = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    chunked = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, prefill_chunk_size=8)
    assert torch.equal(plain, chunked)


def test_inputs_embeds_prompt():
    model = tiny_model()
    ids = random_ids(1, 9)
    from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(ids), max_new_tokens=4,
                                 min_new_tokens=4, do_sample=False)
    from_ids = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(from_embeds[0, -4:], from_ids[0, -4:])


def test_assisted_decoding_is_refused_clearly():
    model = tiny_model()
    with pytest.raises(ValueError, match=ASSISTED_DECODING_REFUSAL):
        model.generate(random_ids(1, 5), assistant_model=tiny_model(seed=1), max_new_tokens=3)


def test_a_cache_with_the_wrong_batch_size_for_generate():
    model = tiny_model()
    with pytest.raises(ValueError, match="batch size"):
        model.generate(random_ids(3, 5), cache=XLSTMCache(model.config, 2), max_new_tokens=2)
    # A batch size that the cache's divides is no exception: one prompt's state is never copied to other prompts.
    ids = random_ids(2, 6)
    for beams in (1, 2):
        with pytest.raises(ValueError, match="batch size 1"):
            model.generate(ids, cache=model(ids[:1, :4]).cache, num_beams=beams, max_new_tokens=2)


def test_a_cache_that_already_holds_the_input_is_refused():
    # Re-feeding tokens the state holds would count them twice: generate() says so instead, with or without
    # chunked prefill, whether the cache holds all of the input or more.
    model = tiny_model()
    ids = random_ids(1, 9)
    for prompt in (ids, ids[:, :5]):
        for chunk in (None, 4):
            with pytest.raises(ValueError, match="already holds 9 tokens"):
                model.generate(prompt, cache=model(ids).cache, prefill_chunk_size=chunk, max_new_tokens=2)
    # A refused call leaves the cache as it was (it had been expanded for the beams before the check), so the
    # corrected call continues it.
    cache = model(ids).cache
    with pytest.raises(ValueError, match="already holds 9 tokens"):
        model.generate(ids, cache=cache, num_beams=2, max_new_tokens=2)
    assert cache.batch_size == 1
    more = torch.cat([ids, random_ids(1, 3, seed=5)], 1)
    continued = model.generate(more, attention_mask=torch.ones_like(more), cache=cache, num_beams=2,
                               max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert torch.equal(continued, model.generate(more, num_beams=2, max_new_tokens=3, min_new_tokens=3,
                                                 do_sample=False))
    # Only the new tokens, with a mask over the whole conversation, continue the cache.
    ids = random_ids(1, 12)
    continued = model.generate(ids[:, 9:], attention_mask=torch.ones_like(ids), cache=model(ids[:, :9]).cache,
                               max_new_tokens=3, min_new_tokens=3, do_sample=False)
    fresh = model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert torch.equal(continued, fresh[:, 9:])


def test_a_cache_with_use_cache_false_is_refused():
    model = tiny_model()
    ids = random_ids(1, 9)
    with pytest.raises(ValueError, match="use_cache=False"):
        model.generate(ids, cache=model(ids[:, :5]).cache, use_cache=False, max_new_tokens=2)


def test_a_long_prompt_is_never_held_whole():
    # Constant memory in context: with segments of 16 tokens, no block ever sees more than 16 positions, the
    # backbone hands the head one position, and the state has the same size whatever the prompt length.
    model = tiny_model(max_inference_chunksize=16)
    widths = []
    for block in model.backbone.blocks:
        block.register_forward_hook(lambda module, inputs, output: widths.append(inputs[0].shape[1]))
    kept = []
    model.backbone.register_forward_hook(lambda module, inputs, output: kept.append(output.last_hidden_state.shape[1]))
    ids = random_ids(1, 200)
    out = model.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    assert max(widths) == 16 and kept == [1, 1]
    short = model.generate(ids[:, :20], max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    assert [t.shape for t in out.cache.layers[0].state] == [t.shape for t in short.cache.layers[0].state]
    assert torch.equal(out.sequences[:, 200:], greedy_by_hand(model, ids, 2)[:, 200:])


def test_sync_free_decode_step_equals_the_forward():
    # The step that CUDA graphs capture: same logits and state as the checked forward, and a masked row is left be.
    model = tiny_model()
    ids = random_ids(2, 12)
    out = model(ids[:, :11])
    reference = model(ids[:, 11:], cache=out.cache)
    again = model(ids[:, :11]).cache
    before = [t.clone() for t in again.layers[0].state]
    mask = torch.tensor([[True], [False]])
    logits = model._head(model.backbone.decode_step(ids[:, 11:], mask, again))
    assert (logits[0] - reference.logits[0]).abs().max() < 1e-5
    new_state = zip(again.layers[0].state, reference.cache.layers[0].state)
    assert all(torch.allclose(a[0], b[0], atol=1e-6) for a, b in new_state)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(again.layers[0].state, before))  # masked: untouched


# --- caches generate() hands back or is handed --------------------------------------------------------------------

def test_rows_finished_by_eos_leave_their_state_at_their_end():
    # transformers appends pad tokens to a finished row; fed as padding, the returned cache continues each row as
    # the row alone, up to its EOS, continues.
    model = tiny_model()
    ids = random_ids(2, 8, seed=3)
    options = dict(attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)  # the prompts hold pad ids
    free = model.generate(ids, min_new_tokens=6, **options)
    eos = int(free[0, 8 + 1])  # row 0 emits it as its second new token; row 1 must run on
    assert eos not in free[1, 8:].tolist() and eos not in free[0, 8:9].tolist()
    out = model.generate(ids, eos_token_id=eos, pad_token_id=1, return_dict_in_generate=True, **options)
    assert out.sequences.shape[1] == 14 and (out.sequences[0, 10:] == 1).all()  # the test needs pads in row 0
    step = random_ids(2, 1, seed=4)
    continued = model(step, cache=out.cache).logits[:, -1]
    for row, absorbed in ((0, 8 + 2), (1, 14 - 1)):  # row 0: the prompt, a token and EOS; row 1: all but the last
        alone = torch.cat([out.sequences[row : row + 1, :absorbed], step[row : row + 1]], 1)
        assert (continued[row] - model(alone).logits[0, -1]).abs().max() < 1e-4


def test_a_cache_left_by_beam_search_is_not_continued():
    model = tiny_model()
    ids = random_ids(1, 7)
    out = model.generate(ids, num_beams=2, num_return_sequences=2, max_new_tokens=3, min_new_tokens=3,
                         do_sample=False, return_dict_in_generate=True)
    # The cache has a row per returned sequence, but it holds the running beams' states, not theirs.
    assert out.cache.batch_size == out.sequences.shape[0] == 2
    with pytest.raises(ValueError, match="beam search"):
        model.generate(out.sequences, cache=out.cache, max_new_tokens=2)
    with pytest.raises(ValueError, match="beam search"):
        model(random_ids(2, 1), cache=out.cache)
    out.cache.reset()  # a new start: continued from zero, as a new cache would be
    assert torch.equal(model.generate(ids.expand(2, -1), cache=out.cache, max_new_tokens=3, do_sample=False),
                       model.generate(ids.expand(2, -1), max_new_tokens=3, do_sample=False))


def test_a_cache_of_returned_sequences_continues_them_and_not_the_prompts():
    model = tiny_model()
    ids = random_ids(2, 6)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, num_return_sequences=3,
                         max_new_tokens=3, min_new_tokens=3, return_dict_in_generate=True)
    assert out.cache.batch_size == 6
    # With the sequences it returned, the cache continues them exactly.
    more = torch.cat([out.sequences, random_ids(6, 2, seed=2)], 1)
    options = dict(attention_mask=torch.ones_like(more), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    continued = model.generate(more, cache=out.cache, **options)
    assert torch.equal(continued, model.generate(more, **options))
    # With the prompts (and more tokens than it holds), its six diverged states are not copies of two prompt states
    # to sample from again.
    longer = torch.cat([ids, random_ids(2, 10, seed=3)], 1)
    with pytest.raises(ValueError, match="they differ"):
        model.generate(longer, cache=out.cache, do_sample=True, num_return_sequences=3, max_new_tokens=2)


def test_a_cache_of_another_kind_is_refused_naming_the_one_needed():
    from transformers import DynamicCache

    from xlstm_hf import XLSTMStackCache, XLSTMStackConfig

    model = tiny_model()
    ids = random_ids(1, 5)
    stack_cache = XLSTMStackCache(XLSTMStackConfig(vocab_size=101, embedding_dim=32, num_heads=2, num_blocks=2), 1)
    for cache in (stack_cache, DynamicCache(), ((torch.zeros(1), torch.zeros(1)),)):
        with pytest.raises(TypeError, match="XLSTMCache"):
            model.generate(ids, cache=cache, max_new_tokens=2)
    with pytest.raises(TypeError, match="XLSTMCache"):
        model(ids, cache=stack_cache)


@pytest.mark.parametrize("stop", ["refused", "interrupted"])
def test_a_generate_call_stopped_before_the_state_took_a_token_leaves_the_cache_as_it_was(stop):
    # Both come after the cache was expanded for the beams; an interrupt left it expanded.
    model = tiny_model()
    ids = random_ids(1, 9)
    cache = model(ids[:, :5]).cache
    prompt = ids.clone()
    if stop == "refused":
        prompt[0, 7] = model.config.vocab_size  # found by the forward
        error, match = ValueError, "vocabulary"
    else:
        def interrupt(module, args):
            raise KeyboardInterrupt("stopped")

        hook = model.backbone.register_forward_pre_hook(interrupt)
        error, match = KeyboardInterrupt, "stopped"
    with pytest.raises(error, match=match):
        model.generate(prompt, attention_mask=torch.ones_like(prompt), cache=cache, num_beams=2, max_new_tokens=2)
    if stop == "interrupted":
        hook.remove()
    assert cache.batch_size == 1 and cache.get_seq_length() == 5 and cache.not_continuable is None
    options = dict(num_beams=2, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    continued = model.generate(ids, attention_mask=torch.ones_like(ids), cache=cache, **options)
    assert torch.equal(continued, model.generate(ids, **options))


def test_a_chunked_prefill_refuses_a_bad_token_before_any_chunk_is_absorbed():
    model = tiny_model()
    ids = random_ids(1, 20)
    cache = model(ids[:, :5]).cache
    bad = ids.clone()
    bad[0, 18] = model.config.vocab_size  # in the last of four chunks
    with pytest.raises(ValueError, match="vocabulary"):
        model.generate(bad, attention_mask=torch.ones_like(bad), cache=cache, prefill_chunk_size=4, max_new_tokens=2)
    assert cache.get_seq_length() == 5
    options = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False)
    continued = model.generate(ids, attention_mask=torch.ones_like(ids), cache=cache, prefill_chunk_size=4, **options)
    assert torch.equal(continued, model.generate(ids, **options))


@pytest.mark.parametrize("where, error", [("chunked prefill", RuntimeError), ("decoding", KeyboardInterrupt)])
def test_a_cache_that_a_failed_generate_call_changed_is_not_continued(where, error):
    # The second forward fails: after one chunk of the prompt, or after the prefill. The cache holds part of the
    # call's tokens, and the caller has no output saying which.
    model = tiny_model()
    ids = random_ids(1, 20)
    cache = model(ids[:, :5]).cache
    forwards = []

    def fail_second(module, args, kwargs):
        forwards.append(kwargs)
        if len(forwards) == 2:
            raise error("stopped")

    hook = model.backbone.register_forward_pre_hook(fail_second, with_kwargs=True)
    with pytest.raises(error, match="stopped"):
        model.generate(ids, attention_mask=torch.ones_like(ids), cache=cache, max_new_tokens=3,
                       prefill_chunk_size=4 if where == "chunked prefill" else None)
    hook.remove()
    assert cache.get_seq_length() == 5 + (4 if where == "chunked prefill" else 15)
    with pytest.raises(ValueError, match="generate\\(\\) call failed"):
        model.generate(ids, attention_mask=torch.ones_like(ids), cache=cache, max_new_tokens=2)
    with pytest.raises(ValueError, match="generate\\(\\) call failed"):
        model(random_ids(1, 1), cache=cache)
    cache.reset()
    options = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert torch.equal(model.generate(ids, cache=cache, **options), model.generate(ids, **options))


def test_a_mask_that_does_not_cover_the_conversation_is_refused():
    model = tiny_model()
    ids = random_ids(1, 12)
    for length in (11, 13):  # the cache holds 9 tokens, the input adds 3
        with pytest.raises(ValueError, match=f"covers {length} tokens"):
            model.generate(ids[:, 9:], attention_mask=torch.ones(1, length, dtype=torch.long),
                           cache=model(ids[:, :9]).cache, max_new_tokens=2)


def test_prefill_chunk_size_splits_an_embeddings_prompt_too():
    model = tiny_model()
    ids, mask = left_pad([random_ids(1, 9, seed=1), random_ids(1, 6, seed=2)])
    embeds = model.get_input_embeddings()(ids)
    widths = []
    model.backbone.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append((kwargs.get("inputs_embeds") if kwargs.get("input_ids") is None
                                                    else kwargs["input_ids"]).shape[1]), with_kwargs=True)
    options = dict(attention_mask=mask, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    chunked = model.generate(inputs_embeds=embeds, prefill_chunk_size=4, **options)
    assert widths[:3] == [4, 4, 1]
    assert torch.equal(chunked, model.generate(inputs_embeds=embeds, **options))
    assert torch.equal(chunked, model.generate(ids, **options)[:, 9:])
