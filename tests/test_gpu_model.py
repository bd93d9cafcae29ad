"""On a GPU: the model on the Triton kernels (chosen automatically) against the PyTorch reference backend."""

import pytest
import torch

import xlstm_hf
from helpers import random_ids, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def reset_backend():
    yield
    xlstm_hf.set_kernel_backend(None)


def run(model, ids, backend):
    xlstm_hf.set_kernel_backend(backend)
    prefill = model(ids[:, :-1])
    step = model(ids[:, -1:], cache=prefill.cache)
    return prefill.logits, step.logits, step.cache


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-3), (torch.bfloat16, 0.25)])
@pytest.mark.parametrize("hidden, heads", [(512, 4), (128, 2)])  # head dims 64 / 128, and the tiny model's 32 / 64
def test_prefill_and_decode_match_the_reference(dtype, tol, hidden, heads):
    model = tiny_model(hidden_size=hidden, num_heads=heads, num_hidden_layers=2).to("cuda", dtype)
    assert model.kernel_backend == "triton"
    ids = random_ids(2, 301).cuda()
    with torch.no_grad():
        ours, ref = run(model, ids, "triton"), run(model, ids, "torch")
    assert (ours[0] - ref[0]).abs().max() < tol and (ours[1] - ref[1]).abs().max() < tol
    if dtype == torch.float32:  # in bf16 an argmax may flip on a near tie
        greedy = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        xlstm_hf.set_kernel_backend("torch")
        assert torch.equal(greedy, model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False))


def test_training_gradients_match_the_reference():
    model = tiny_model(hidden_size=512, num_heads=4, num_hidden_layers=2).to("cuda").train()
    ids = random_ids(2, 200).cuda()
    grads = {}
    for backend in ("triton", "torch"):
        xlstm_hf.set_kernel_backend(backend)
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, g in grads["torch"].items():
        err = ((grads["triton"][name] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item()
        assert err < 1e-3, (name, err)


@pytest.mark.parametrize("mode", [dict(do_sample=False), dict(num_beams=3, do_sample=False)])
def test_cuda_graph_decode_gives_the_eager_tokens(mode):
    model = tiny_model(hidden_size=512, num_heads=4, num_hidden_layers=2).cuda()
    ids = random_ids(2, 40).cuda()
    runs = {}
    for graphs in (True, False):
        model.cuda_graphs = graphs
        runs[graphs] = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                                      **mode)
    assert torch.equal(runs[True], runs[False])
    assert model._decode_graphs, "the decode steps should have replayed a CUDA graph"


def test_cuda_graph_follows_the_cache_and_the_weights():
    model = tiny_model(hidden_size=256, num_heads=2, num_hidden_layers=2).cuda()
    model.cuda_graphs = True
    ids = random_ids(1, 20).cuda()
    out = model(ids[:, :19])
    graphed = model(ids[:, 19:], cache=out.cache).logits
    model.cuda_graphs = False
    eager = model(ids[:, 19:], cache=model(ids[:, :19]).cache).logits
    assert (graphed - eager).abs().max() < 1e-4
    model.cuda_graphs = True
    model.half()  # new weight tensors: the captured graph is stale and must be captured again
    cache = model(ids[:, :19]).cache
    halved = model(ids[:, 19:], cache=cache).logits
    model.cuda_graphs = False
    assert (halved - model(ids[:, 19:], cache=model(ids[:, :19]).cache).logits).abs().max() < 1e-2
    # A replaced layer (as merging adapters does): the graph must read the new module's weights.
    down = model.backbone.blocks[0].ffn.proj_down
    replacement = torch.nn.Linear(down.in_features, down.out_features, bias=False, device="cuda", dtype=torch.half)
    with torch.no_grad():
        replacement.weight.copy_(down.weight * 3)
    model.cuda_graphs = True
    model(ids[:, 19:], cache=model(ids[:, :19]).cache)  # a replay with the old module
    model.backbone.blocks[0].ffn.proj_down = replacement
    replaced = model(ids[:, 19:], cache=model(ids[:, :19]).cache).logits
    model.cuda_graphs = False
    assert (replaced - model(ids[:, 19:], cache=model(ids[:, :19]).cache).logits).abs().max() < 1e-2
    assert (replaced - halved).abs().max() > 1e-2


def test_a_new_cache_is_zeros_on_recycled_memory_and_a_one_token_prompt_decodes_from_it():
    # The cache allocates without filling and zeroes all its tensors in one launch: on the caching allocator's
    # recycled blocks, that launch is all that makes them zeros. A one-token prompt replays the decode graph on them.
    model = tiny_model(hidden_size=256, num_heads=2, num_hidden_layers=2).cuda()
    ids = random_ids(3, 1).cuda()
    with torch.no_grad():
        expected = model(ids).logits  # no cache passed: a fresh state, read from no tensor
        for _ in range(3):
            freed = model.backbone.new_cache(3)
            for tensor in freed.state_tensors():
                tensor.fill_(float("nan"))
            pointers = {tensor.data_ptr() for tensor in freed.state_tensors()}
            del freed
            cache = model.backbone.new_cache(3)
            assert cache.layers[0].C.data_ptr() in pointers  # the premise: allocated on the NaN-filled blocks
            assert all(torch.count_nonzero(tensor) == 0 for tensor in cache.state_tensors())
            assert (model(ids, cache=cache).logits - expected).abs().max() < 1e-4
        assert model._decode_graphs


def test_one_capture_serves_later_generate_calls_and_earlier_caches_keep_their_state():
    model = tiny_model(hidden_size=256, num_heads=2, num_hidden_layers=2).cuda()
    ids = random_ids(2, 30).cuda()
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    first = model.generate(ids, **kwargs)
    (graph,) = model._decode_graphs.values()
    kept = [t.clone() for t in first.cache.state_tensors()]
    second = model.generate(ids[:, :20], **kwargs)
    assert list(model._decode_graphs.values()) == [graph]  # no second capture
    assert all(torch.equal(a, b) for a, b in zip(first.cache.state_tensors(), kept))
    model.cuda_graphs = False
    eager = model.generate(ids[:, :20], **kwargs, disable_compile=True)
    assert torch.equal(second.sequences, eager.sequences)
    assert all(torch.equal(a, b) for a, b in zip(second.cache.state_tensors(), eager.cache.state_tensors()))


def test_7b_greedy_tokens_fast_path_vs_reference_path():
    """The 7B config (random float32 weights): Triton kernels + CUDA-graph decode against the PyTorch reference
    cell decoding eagerly."""
    from xlstm_hf import XLSTMConfig, XLSTMForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = XLSTMForCausalLM(XLSTMConfig()).eval()
    ids = random_ids(2, 300, vocab=model.config.vocab_size).cuda()
    mask = torch.ones_like(ids)
    mask[1, :37] = 0  # a left-padded row
    kwargs = dict(attention_mask=mask, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    fast = model.generate(ids, **kwargs)
    assert model._decode_graphs and model.kernel_backend == "triton"
    model.cuda_graphs = False
    xlstm_hf.set_kernel_backend("torch")
    reference = model.generate(ids, **kwargs, disable_compile=True)  # no torch.compile of the reference either
    assert torch.equal(fast, reference)
