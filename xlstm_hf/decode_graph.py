"""One decode step captured in a CUDA graph: every later token replays it, with no Python or launch overhead.

The graph records the addresses of the cache's state tensors, which `XLSTMCache` keeps fixed (updates are in place);
an operation that replaces them (batch selection, repeat) makes the graph stale, and it is captured again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


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
        self.ids = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.mask = torch.ones(batch_size, 1, dtype=torch.bool, device=device)
        self.pointers = self.addresses(state_tensors, weights)
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

    @staticmethod
    def addresses(*groups: list[torch.Tensor]) -> tuple[int, ...]:
        """What the graph baked in: if any of these tensors moved (a new cache, `model.to`, merged adapters), the
        graph is stale."""
        return tuple(t.data_ptr() for group in groups for t in group)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.ids.copy_(ids)
        self.mask.copy_(mask)
        self.graph.replay()
        return self.logits.clone()  # the graph's output buffer is overwritten by the next replay
