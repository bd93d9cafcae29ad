"""The CPU-testable parts of CUDA-graph decoding: when baked-in weights count as moved, and a cache taking over
another's state tensors (the graph itself needs CUDA: tests/test_gpu_model.py)."""

import torch

from helpers import random_ids, tiny_model
from xlstm_hf.decode_graph import WeightWatch


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


def test_a_cache_bound_to_another_cache_s_tensors_continues_the_same():
    model = tiny_model()
    ids = random_ids(2, 12)
    with torch.no_grad():
        first = model(ids[:, :10]).cache
        taken_over = model.backbone.new_cache(2)
        taken_over.bind_state([t.clone() for t in first.state_tensors()])
        taken_over.seen_tokens = first.seen_tokens
        assert all(a.data_ptr() != b.data_ptr() for a, b in zip(first.state_tensors(), taken_over.state_tensors()))
        expected = model(ids[:, 10:], cache=first).logits
        assert torch.equal(model(ids[:, 10:], cache=taken_over).logits, expected)
    assert all(torch.equal(a, b) for a, b in zip(first.state_tensors(), taken_over.state_tensors()))
