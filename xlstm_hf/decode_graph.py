"""One decode step captured in a CUDA graph: every later token replays it, with no Python or launch overhead.

The graph records the addresses of the state tensors it was captured on: a `SharedState` lends them to one cache at a
time. A cache that does not hold them (the cache of the next generate() call, or one whose tensors were replaced)
borrows them, with its values, so one capture serves every later cache of the same batch size.

The weights' addresses are baked in too. Checking them each token must cost little: the list of parameters is
gathered again only after a module or parameter was registered somewhere in the process (a replaced layer, merged
adapters, `load_state_dict(assign=True)`), which a global registration hook counts; `model.to(...)` keeps the
parameter objects and changes their addresses, which the pointer comparison sees.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.modules.module import (register_module_module_registration_hook,
                                     register_module_parameter_registration_hook)

_registrations = 0


def _count_registration(*_) -> None:
    global _registrations
    _registrations += 1


register_module_module_registration_hook(_count_registration)
register_module_parameter_registration_hook(_count_registration)


class SinceRegistration:
    """A value worked out again only after a module or parameter was registered somewhere in the process, so that
    asking for it every token costs one comparison."""

    def __init__(self) -> None:
        self.registrations, self.value = -1, None

    def get(self, compute: Callable[[], Any]) -> Any:
        if self.registrations != _registrations:
            self.value, self.registrations = compute(), _registrations
        return self.value


class WeightWatch:
    """Tells whether the weights a graph baked in are still the model's: `moved(parameters)` is True once any of
    them was reallocated (`model.to`, `load_state_dict(assign=True)`) or replaced (a new layer, merged adapters)."""

    def __init__(self, weights: list[torch.Tensor]):
        self.weights = SinceRegistration()
        self.pointers = self.addresses(self.weights.get(lambda: list(weights)))

    @staticmethod
    def addresses(tensors: list[torch.Tensor]) -> tuple[int, ...]:
        return tuple(t.data_ptr() for t in tensors)

    def moved(self, parameters: Callable[[], list[torch.Tensor]]) -> bool:
        """`parameters()` lists the model's weights now; it is called only after a registration somewhere."""
        return self.pointers != self.addresses(self.weights.get(parameters))


class SharedState:
    """The state tensors a decode graph reads and writes, held by one cache at a time (the borrower)."""

    def __init__(self, cache):
        self.tensors = cache.state_tensors()
        self.borrower = weakref.ref(cache)

    def held_by(self, cache) -> bool:
        return all(a is b for a, b in zip(cache.state_tensors(), self.tensors))

    def lend(self, cache) -> None:
        """Make `cache` hold these tensors, loaded with its own values (nothing to do when it holds them already).
        The previous borrower, when it is alive and still holds them, keeps its values in copies of its own."""
        if self.held_by(cache):
            return
        previous = self.borrower()
        if previous is not None and previous is not cache and self.held_by(previous):
            previous.bind_state([t.clone() for t in self.tensors])
        torch._foreach_copy_(self.tensors, cache.state_tensors())
        cache.bind_state(self.tensors)
        self.borrower = weakref.ref(cache)


class DecodeGraph:
    """Capture `step(ids, mask) -> logits` once over the state tensors of `cache`, then replay it for new token ids.

    Args:
        step: One sync-free decode step reading and updating the cache's state in place.
        cache: The cache the graph is captured on (its tensors become the graph's `SharedState`).
        weights: The parameters the step reads (their addresses are baked in too).
        device: The CUDA device.
    """

    def __init__(self, step: Callable, cache, weights: list[torch.Tensor], device: torch.device):
        self.state = SharedState(cache)
        self.weights = WeightWatch(weights)
        self.ids = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=device)
        self.mask = torch.ones(cache.batch_size, 1, dtype=torch.bool, device=device)
        saved = [t.clone() for t in self.state.tensors]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # compiles the kernels and settles the allocator before capture
                step(self.ids, self.mask)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step(self.ids, self.mask)
        for tensor, value in zip(self.state.tensors, saved):  # the warm-up steps advanced the state: undo them
            tensor.copy_(value)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.ids.copy_(ids)
        self.mask.copy_(mask)
        self.graph.replay()
        return self.logits.clone()  # the graph's output buffer is overwritten by the next replay
