"""The CPU-testable parts of CUDA-graph decoding: when baked-in weights count as moved, and how the graph's state
tensors pass from one cache to the next (the graph itself needs CUDA: tests/test_gpu_model.py)."""

import torch

from helpers import random_ids, tiny_model
from xlstm_hf.decode_graph import SharedState, WeightWatch


def test_weight_watch_sees_reallocation_and_replacement_but_not_in_place_updates():
    model = tiny_model()
    params = lambda: list(model.parameters())  # noqa: E731
    watch = WeightWatch(params())
    with torch.no_grad():
        model.lm_head.weight.mul_(2)  # in place: the graph reads the new values anyway
    assert not watch.moved(params)
    model.backbone.blocks[1].ffn.proj_down = torch.nn.Linear(model.config.ffn_dim, model.config.hidden_size,
                                                             bias=False)  # a replaced layer, as merging adapters does
    assert watch.moved(params)
    watch = WeightWatch(params())
    assert not watch.moved(params)
    model.double()  # reallocates every parameter, registers nothing
    assert watch.moved(params)


def test_shared_state_is_lent_with_the_borrowers_values_and_the_previous_borrower_keeps_its_own():
    model = tiny_model()
    ids = random_ids(2, 12)
    with torch.no_grad():
        first = model(ids[:, :10]).cache
        second = model(ids[:, 2:9]).cache
        shared = SharedState(first)  # as a graph captured on `first`
        tensors = list(shared.tensors)
        values = {name: [t.clone() for t in cache.state_tensors()] for name, cache in (("1", first), ("2", second))}
        expected = {name: model(ids[:, 10:], cache=copy_cache(model, cache)).logits
                    for name, cache in (("1", first), ("2", second))}

        shared.lend(second)
        assert shared.held_by(second) and not shared.held_by(first)
        assert all(a is b for a, b in zip(second.state_tensors(), tensors))  # the graph's tensors, not copies
        for name, cache in (("1", first), ("2", second)):
            assert all(torch.equal(a, b) for a, b in zip(cache.state_tensors(), values[name]))
            assert torch.equal(model(ids[:, 10:], cache=cache).logits, expected[name])

        shared.lend(first)  # back: `first` continues from its own values, in the shared tensors again
        assert shared.held_by(first) and all(a is b for a, b in zip(first.state_tensors(), tensors))
        assert not shared.held_by(second)


def copy_cache(model, cache):
    copy = model.backbone.new_cache(cache.batch_size)
    copy.bind_state([t.clone() for t in cache.state_tensors()])
    copy.seen_tokens = cache.seen_tokens
    return copy
