"""transformers' sampling loop reading its stop flag one step late (xlstm_hf.deferred_stop): the switch, and the tokens
against the synchronised loop."""

import pytest
import torch
from transformers.generation import utils as generation_utils
from transformers.generation.utils import DeferredStopCheck

from helpers import random_ids, tiny_model
from xlstm_hf.deferred_stop import AVAILABLE, deferred_stop_checks

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_the_switch_applies_only_inside_its_context_and_never_when_the_cache_is_returned():
    assert AVAILABLE
    cpu, mps = torch.device("cpu"), torch.device("mps")
    assert not DeferredStopCheck.is_supported(cpu, None, False, False)
    with deferred_stop_checks(("cpu",)):
        assert DeferredStopCheck.is_supported(cpu, object(), False, False)
        assert not DeferredStopCheck.is_supported(cpu, object(), True, False)  # a returned cache: synchronised
        assert not DeferredStopCheck.is_supported(cpu, object(), False, True)  # assisted decoding's assistant
        assert not DeferredStopCheck.is_supported(torch.device("meta"), None, False, False)
    assert not DeferredStopCheck.is_supported(cpu, None, False, False)
    assert DeferredStopCheck.is_supported(mps, None, False, False)  # transformers' own decision stays


class HostEvent:
    """CPU tensors have no events; CPU work is done when its call returns, so recording and waiting are no-ops."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


@pytest.mark.parametrize("device", DEVICES)
def test_deferred_stop_gives_the_synchronised_tokens(device, monkeypatch):
    """Rows reaching EOS at different steps, all before max_new_tokens: the deferred flag runs one step more, which
    must be undone. A returned cache keeps the synchronised loop (a recurrent step is not undone)."""
    if device == "cpu":
        monkeypatch.setattr(torch, "Event", HostEvent)
    deferred = []
    init = DeferredStopCheck.__init__
    monkeypatch.setattr(generation_utils.DeferredStopCheck, "__init__",
                        lambda self, *a, **k: (deferred.append(1), init(self, *a, **k))[1])
    model = tiny_model(hidden_size=256, num_heads=2, num_hidden_layers=2).to(device)
    model.deferred_stop_devices = (device,)
    ids = random_ids(3, 25).to(device)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, pad_token_id=0)
    free = model.generate(ids, min_new_tokens=12, **kwargs)[:, 25:]
    eos = [free[0, 2].item(), free[1, 4].item(), free[2, 1].item()]  # every row stops by its fifth token
    runs = {}
    for devices in ((), (device,)):
        model.deferred_stop_devices = devices
        runs[devices] = model.generate(ids, eos_token_id=eos, **kwargs)
    assert len(deferred) == 2, "the free run and the deferred run should have used DeferredStopCheck"
    assert torch.equal(runs[()], runs[(device,)]) and runs[()].shape[1] < 25 + 12
    returned = model.generate(ids, eos_token_id=eos, return_dict_in_generate=True, **kwargs)
    assert len(deferred) == 2 and torch.equal(returned.sequences, runs[()])
