"""One decode step captured in a CUDA graph: every later token replays it, with no Python or launch overhead.

The graph records the addresses of the state tensors it was captured on. A cache that is not bound to them (the
cache of the next generate() call, or one whose tensors were replaced) takes them over through `adopt`, so one capture
serves every later cache of the same batch size.

The weights' addresses are baked in too. Checking them each token must cost little: the list of parameters is
gathered again only after a module or parameter was registered somewhere in the process (a replaced layer, merged
adapters, `load_state_dict(assign=True)`), which a global registration hook counts; `model.to(...)` keeps the
parameter objects and changes their addresses, which the pointer comparison sees.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.modules.module import register_module_module_registration_hook, register_module_parameter_registration_hook

_registrations = 0


def _count_registration(*_) -> None:
    global _registrations
    _registrations += 1


register_module_module_registration_hook(_count_registration)
register_module_parameter_registration_hook(_count_registration)


class WeightWatch:
    """Tells whether the weights a graph baked in are still the model's: `moved(parameters)` is True once any of
    them was reallocated (`model.to`, `load_state_dict(assign=True)`) or replaced (a new layer, merged adapters)."""

    def __init__(self, weights: list[torch.Tensor]):
        self.weights, self.registrations = list(weights), _registrations
        self.pointers = self.addresses(self.weights)

    @staticmethod
    def addresses(tensors: list[torch.Tensor]) -> tuple[int, ...]:
        return tuple(t.data_ptr() for t in tensors)

    def moved(self, parameters: Callable[[], list[torch.Tensor]]) -> bool:
        """`parameters()` lists the model's weights now; it is called only after a registration somewhere."""
        if self.registrations != _registrations:
            self.weights, self.registrations = parameters(), _registrations
        return self.pointers != self.addresses(self.weights)


class DecodeGraph:
    """Capture `step(ids, mask) -> logits` once over `state_tensors`, then replay it for new token ids.

    Args:
        step: One sync-free decode step reading and updating `state_tensors` in place.
        state_tensors: The recurrent state the step reads and writes (restored after the warm-up runs).
        weights: The parameters the step reads (their addresses are baked in too).
        batch_size: Rows of `ids` (B, 1).
        device: The CUDA device.
    """

    def __init__(self, step: Callable, state_tensors: list[torch.Tensor], weights: list[torch.Tensor],
                 batch_size: int, device: torch.device):
        self.state = list(state_tensors)
        self.weights = WeightWatch(weights)
        self.ids = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.mask = torch.ones(batch_size, 1, dtype=torch.bool, device=device)
        saved = [t.clone() for t in state_tensors]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # compiles the kernels and settles the allocator before capture
                step(self.ids, self.mask)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step(self.ids, self.mask)
        for tensor, value in zip(state_tensors, saved):  # the warm-up steps advanced the state: undo them
            tensor.copy_(value)

    def binds(self, state_tensors: list[torch.Tensor]) -> bool:
        """Whether these are the tensors the graph reads and writes."""
        return all(a is b for a, b in zip(state_tensors, self.state))

    def adopt(self, state_tensors: list[torch.Tensor], previous_owner_state: list[torch.Tensor] | None) -> list:
        """Load `state_tensors` into the graph's own state tensors, which the caller then binds to its cache. The
        previous owner's values (when it is still alive and bound) are cloned first: returned, for it to keep."""
        kept = [t.clone() for t in previous_owner_state] if previous_owner_state is not None else None
        for own, new in zip(self.state, state_tensors):
            own.copy_(new)
        return kept

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.ids.copy_(ids)
        self.mask.copy_(mask)
        self.graph.replay()
        return self.logits.clone()  # the graph's output buffer is overwritten by the next replay
