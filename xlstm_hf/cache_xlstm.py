"""The recurrent state of xLSTM as a transformers `Cache`: per layer (C, n, m), preallocated and updated in place."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from .configuration_xlstm import XLSTMConfig
from .kernels import MLSTMState


def copy_states(buffers: list[tuple[torch.Tensor, ...]], states: list[tuple[torch.Tensor, ...]]) -> None:
    """Copy each state tensor into its buffer, all in one multi-tensor launch where they share a device (a prefill
    ends with ~100 of them), skipping those that already are the buffer (the fused step kernel wrote them in place).
    Detached: a cache carries values between calls, never a graph (a later in-place update would break it)."""
    pairs = [(buffer, new.detach()) for pair in zip(buffers, states) for buffer, new in zip(*pair) if new is not buffer]
    if pairs:
        torch._foreach_copy_(*(list(tensors) for tensors in zip(*pairs)))


class XLSTMCacheLayer:
    """The mLSTM state of one layer: C (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH), in static tensors.

    The tensors keep their storage for the cache's whole life (updates are `copy_`), so a captured CUDA graph
    or a compiled decode step sees them at fixed addresses.
    """

    is_compileable = True
    is_croppable = False
    is_sliding = False
    supports_early_init = False

    def __init__(self, C: torch.Tensor, n: torch.Tensor, m: torch.Tensor):
        self.C, self.n, self.m = C, n, m

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(C={tuple(self.C.shape)}, dtype={self.C.dtype})"

    @property
    def state(self) -> MLSTMState:
        return self.C, self.n, self.m

    @property
    def batch_size(self) -> int:
        return self.C.shape[0]

    def update(self, state: MLSTMState) -> None:
        copy_states([self.state], [state])

    def reset(self) -> None:
        torch._foreach_zero_(list(self.state))

    def _replace(self, fn) -> None:
        self.C, self.n, self.m = (fn(t) for t in self.state)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for buffer in self.state:
            buffer.copy_(buffer.index_select(0, beam_idx.to(buffer.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._replace(lambda t: t[indices].contiguous())

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._replace(lambda t: t.repeat_interleave(repeats, dim=0))

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("A recurrent state cannot be cropped: it holds no per-token history.")

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return -1

    def to(self, device=None, dtype=None) -> None:
        self._replace(lambda t: t.to(device=device, dtype=dtype))


class XLSTMCache(Cache):
    """Recurrent state of every mLSTM layer of an [`XLSTMModel`], plus the number of tokens it has absorbed.

    Args:
        config: The model's configuration (gives layer count, heads and head dims).
        batch_size: Number of sequences.
        device: Where the state lives: one device, or one per layer (a model split with `device_map`).
        dtype: State dtype, float32 by default (config `inference_state_dtype`); bfloat16 halves its memory.
    """

    def __init__(
        self,
        config: XLSTMConfig,
        batch_size: int,
        device: torch.device | str | list[torch.device | str] | None = None,
        dtype: torch.dtype | None = None,
    ):
        if dtype is None:
            dtype = getattr(torch, config.inference_state_dtype)
        devices = device if isinstance(device, (list, tuple)) else [device] * config.num_hidden_layers
        if len(devices) != config.num_hidden_layers:
            raise ValueError(f"device lists {len(devices)} devices for {config.num_hidden_layers} layers")
        shapes = [(batch_size, config.num_heads, config.qk_head_dim, config.v_head_dim),
                  (batch_size, config.num_heads, config.qk_head_dim), (batch_size, config.num_heads)]
        # One zeroed buffer per state kind and device, each layer's tensors views of them: three allocations and fills
        # instead of three per layer, on the host's path before a prefill's first kernel. (Views from `unbind` refuse
        # in-place writes autograd would track; the state is only ever written detached, see `copy_states`.)
        views = {d: [iter(torch.zeros((devices.count(d), *shape), device=d, dtype=dtype).unbind(0)) for shape in shapes]
                 for d in dict.fromkeys(devices)}
        super().__init__(layers=[XLSTMCacheLayer(*map(next, views[d])) for d in devices])
        self.seen_tokens = 0
        self.not_continuable: str | None = None  # why a forward must not continue this state, where it must not

    def __repr__(self) -> str:
        layer = self.layers[0]
        return (
            f"{self.__class__.__name__}(layers={len(self.layers)}, batch_size={layer.batch_size}, "
            f"C={tuple(layer.C.shape[1:])}, dtype={layer.C.dtype}, seen_tokens={self.seen_tokens})"
        )

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Number of tokens absorbed into the state so far."""
        return self.seen_tokens

    def has_previous_state(self, layer_idx: int | None = None, state_idx: int | None = None) -> bool:
        """Whether the state holds any token yet (the same for every layer: they absorb tokens together)."""
        if layer_idx is not None and not 0 <= layer_idx < len(self.layers):
            raise IndexError(f"layer_idx={layer_idx} is outside the cache's {len(self.layers)} layers")
        return self.seen_tokens > 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        """(kv_length, kv_offset) of a mask over this cache: a 2D attention mask covers the absorbed tokens and the
        new ones, as generate() passes it (the base class's answer assumes key/value layers, which this cache lacks)."""
        return self.seen_tokens + query_length, 0

    def reset(self) -> None:
        torch._foreach_zero_(self.state_tensors())
        self.seen_tokens = 0
        self.not_continuable = None

    def check_continuable(self) -> None:
        """Raise a `ValueError` if the state is known not to be the one of the sequences it would continue (beam
        search leaves the running beams' states, not those of the sequences it returns)."""
        if self.not_continuable:
            raise ValueError(f"this cache cannot be continued: {self.not_continuable}. Start from a new cache, or "
                             "call reset() on this one")

    def rows_repeat(self, repeats: int) -> bool:
        """Whether every group of `repeats` consecutive rows holds one state, as `batch_repeat_interleave` leaves it
        (one host synchronisation)."""
        return all(bool((t.unflatten(0, (-1, repeats)) == t[::repeats, None]).all()) for t in self.state_tensors())

    def states_to_continue(self) -> list[tuple | None]:
        """Each layer's state for a forward pass to continue from (None for all when nothing was absorbed yet). Copies
        when autograd may save them: the in-place update of `absorb` must not touch a tensor saved for backward."""
        if not self.seen_tokens:
            return [None] * len(self.layers)
        copy = torch.is_grad_enabled()
        return [tuple(t.clone() for t in layer.state) if copy else layer.state for layer in self.layers]

    def absorb(self, states: list[tuple], length: int) -> None:
        """Store the states a forward pass over `length` more tokens ended in."""
        copy_states([layer.state for layer in self.layers], states)
        self.seen_tokens += length

    def state_tensors(self) -> list[torch.Tensor]:
        """Every layer's C, n and m, in layer order."""
        return [t for layer in self.layers for t in layer.state]

    def bind_state(self, tensors: list[torch.Tensor]) -> None:
        """Hold `tensors` (shaped as `state_tensors()`) as the state from now on, in place of the current ones.
        A CUDA graph of the decode step is bound to fixed tensors: a new cache takes them over this way."""
        tensors = iter(tensors)
        for layer in self.layers:
            layer._replace(lambda _: next(tensors))

    def to(self, device: torch.device | str | torch.dtype | None = None, dtype: torch.dtype | None = None
           ) -> "XLSTMCache":
        """Move (or cast) every layer's state; returns the cache. As with tensors, `cache.to(torch.bfloat16)` casts."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        for layer in self.layers:
            layer.to(device=device, dtype=dtype)
        return self

    def check_compatible(self, config: XLSTMConfig, batch_size: int) -> None:
        """Raise a `ValueError` naming the mismatch if this cache cannot continue a model with `config`."""
        if len(self.layers) != config.num_hidden_layers:
            raise ValueError(
                f"cache has {len(self.layers)} layers but the model has num_hidden_layers={config.num_hidden_layers}"
            )
        if self.batch_size != batch_size:
            raise ValueError(f"cache has batch size {self.batch_size} but the input has batch size {batch_size}")
        expected = (config.num_heads, config.qk_head_dim, config.v_head_dim)
        if tuple(self.layers[0].C.shape[1:]) != expected:
            raise ValueError(
                f"cache state C has (heads, qk_head_dim, v_head_dim) = {tuple(self.layers[0].C.shape[1:])}, "
                f"the model needs {expected}"
            )
