"""The recurrent state of an xLSTM[a:b] stack as a transformers `Cache`: per block, preallocated, updated in place.

The design of [`XLSTMCache`] (static tensors, `copy_` updates, beam reordering, batch selection and repetition),
with one state layout per block type:

* mLSTM block: `conv` (B, K-1, inner) the last inputs of the causal convolution; `C` (B, NH, DH, DH), `n` (B, NH, DH),
  `m` (B, NH) of the mLSTM cell.
* sLSTM block: `conv` (B, K-1, embedding_dim); `h`, `c`, `n`, `m` (B, NH, DH) of the sLSTM cell.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from .cache_xlstm import XLSTMCache, XLSTMCacheLayer
from .configuration_xlstm_stack import XLSTMStackConfig


def block_state_layout(config: XLSTMStackConfig, block_type: str, batch_size: int) -> list[tuple[str, tuple]]:
    """(name, shape) of each state tensor of one block."""
    if block_type == "mlstm":
        mlstm = config.mlstm_block["mlstm"]
        nh, dh = mlstm["num_heads"], config.mlstm_head_dim
        conv = (batch_size, mlstm["conv1d_kernel_size"] - 1, config.mlstm_inner_dim)
        return [("conv", conv), ("C", (batch_size, nh, dh, dh)), ("n", (batch_size, nh, dh)), ("m", (batch_size, nh))]
    slstm = config.slstm_block["slstm"]
    shape = (batch_size, slstm["num_heads"], config.slstm_head_dim)
    conv = (batch_size, max(slstm["conv1d_kernel_size"] - 1, 0), config.embedding_dim)
    return [("conv", conv)] + [(name, shape) for name in ("h", "c", "n", "m")]


def initial_block_state(config: XLSTMStackConfig, block_type: str, batch_size: int, device=None,
                        dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """A fresh state of one block, all zeros (what a block starts from without a cache)."""
    return tuple(torch.zeros(shape, device=device, dtype=dtype)
                 for _, shape in block_state_layout(config, block_type, batch_size))


class XLSTMStackCacheLayer(XLSTMCacheLayer):
    """The state of one block, as a tuple of static tensors (see the module docstring for the layouts)."""

    def __init__(self, config: XLSTMStackConfig, block_type: str, batch_size: int, device=None,
                 dtype: torch.dtype = torch.float32):
        self.block_type = block_type
        layout = block_state_layout(config, block_type, batch_size)
        self.names = tuple(name for name, _ in layout)
        self.tensors = list(initial_block_state(config, block_type, batch_size, device, dtype))

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}={tuple(t.shape[1:])}" for name, t in zip(self.names, self.tensors))
        return f"{self.__class__.__name__}({self.block_type}: {shapes}, dtype={self.tensors[-1].dtype})"

    @property
    def state(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.tensors)

    @property
    def batch_size(self) -> int:
        return self.tensors[0].shape[0]

    def _replace(self, fn) -> None:
        self.tensors = [fn(t) for t in self.tensors]


class XLSTMStackCache(XLSTMCache):
    """Recurrent state of every block of an [`XLSTMStackModel`], plus the number of tokens it has absorbed.

    Args:
        config: The model's configuration (block types, heads, widths, convolution sizes).
        batch_size: Number of sequences.
        device: Where the state lives: one device, or one per block.
        dtype: State dtype (float32 by default).
    """

    def __init__(
        self,
        config: XLSTMStackConfig,
        batch_size: int,
        device: torch.device | str | list[torch.device | str] | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        devices = device if isinstance(device, (list, tuple)) else [device] * config.num_blocks
        if len(devices) != config.num_blocks:
            raise ValueError(f"device lists {len(devices)} devices for {config.num_blocks} blocks")
        layers = [XLSTMStackCacheLayer(config, block_type, batch_size, layer_device, dtype)
                  for block_type, layer_device in zip(config.block_types, devices)]
        Cache.__init__(self, layers=layers)
        self.seen_tokens = 0
        self.not_continuable = None

    def __repr__(self) -> str:
        types = "".join(layer.block_type[0] for layer in self.layers)
        return (f"{self.__class__.__name__}(blocks={types!r}, batch_size={self.batch_size}, "
                f"seen_tokens={self.seen_tokens})")

    def check_compatible(self, config: XLSTMStackConfig, batch_size: int) -> None:
        """Raise a `ValueError` naming the mismatch if this cache cannot continue a model with `config`."""
        if [layer.block_type for layer in self.layers] != config.block_types:
            raise ValueError(f"cache holds blocks {[layer.block_type for layer in self.layers]}, "
                             f"the model has {config.block_types}")
        if self.batch_size != batch_size:
            raise ValueError(f"cache has batch size {self.batch_size} but the input has batch size {batch_size}")
        for index, (layer, block_type) in enumerate(zip(self.layers, config.block_types)):
            expected = [shape[1:] for _, shape in block_state_layout(config, block_type, batch_size)]
            if [tuple(t.shape[1:]) for t in layer.tensors] != expected:
                raise ValueError(f"cache block {index} has state shapes {[tuple(t.shape[1:]) for t in layer.tensors]}"
                                 f", the model needs {expected}")
