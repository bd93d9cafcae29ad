"""Argument checks of the Triton kernels' entry points. A kernel indexes raw pointers with the sizes it is given, so
a state or mask of the wrong shape would be read or written out of bounds, silently, instead of raising."""

from __future__ import annotations

import torch


def check_shapes(function: str, device: torch.device, **tensors: tuple[torch.Tensor, tuple[int, ...]]) -> None:
    """Raise a `ValueError` naming the first argument of `function` whose shape is not the one expected, or that is
    on another device than `device`. `tensors`: name = (tensor, expected shape)."""
    for name, (tensor, shape) in tensors.items():
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"{function}: {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        if tensor.device != device:
            raise ValueError(f"{function}: {name} is on {tensor.device}, the inputs on {device}")


def padding_mask(function: str, mask: torch.Tensor | None, batch: int, length: int,
                 device: torch.device) -> torch.Tensor | None:
    """A (batch, length) padding mask as the kernels read it: bool (an attention mask's integers or floats, 0 for
    padding, are converted), contiguous."""
    if mask is None:
        return None
    check_shapes(function, device, mask=(mask, (batch, length)))
    return (mask if mask.dtype == torch.bool else mask != 0).contiguous()
