"""Linear layers that read one input, run as one GEMM: their parameters become row blocks of one buffer.

Decoding is bound by reading the weights, and the six small GEMVs of an mLSTM layer (q, k, v, o, the input and
forget gates) read them at a fraction of the bandwidth one large GEMV reaches, each with a launch of its own.
Concatenated copies would double the memory those weights take; instead, as `torch.nn.LSTM.flatten_parameters` does
for cuDNN, the parameters themselves become views of one buffer (:func:`pack`). Modules, names and the state dict stay
what they are (transformers' save_pretrained clones views that share a buffer before it writes safetensors).

Only parameters that own their storage are packed: not the flat buffers of FSDP, not a PEFT wrapper's layer, not a
tensor subclass. Whatever replaces a weight later (`model.to(dtype)`, `load_state_dict(assign=True)`, a new module)
leaves it unpacked, which :func:`packed` sees; the next call of :func:`packed_or_pack` packs again.
"""

from __future__ import annotations

import torch
from torch import nn


def is_plain(linear: nn.Module) -> bool:
    """Whether `linear` is an `nn.Linear` itself, whose weight kernels may read directly: not a subclass or a wrapper
    that changes its forward (a PEFT adapter, a quantised layer), which must run as itself."""
    return type(linear) is nn.Linear


def _owns_storage(t: torch.Tensor) -> bool:
    return (type(t.data) is torch.Tensor and not t.is_meta and t.storage_offset() == 0 and t.is_contiguous()
            and t.untyped_storage().nbytes() == t.numel() * t.element_size())


def _is_view_at(t: torch.Tensor, storage_ptr: int, offset: int) -> bool:
    return t.untyped_storage().data_ptr() == storage_ptr and t.storage_offset() == offset and t.is_contiguous()


def packed(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The (sum of out_features, in_features) weight and the bias (None when no layer has one) that `linears` are
    row blocks of, in order; None when they are not packed. Detached: for inference only. Called for every forward:
    it reads the parameters from `_parameters` (a module attribute costs more than the checks)."""
    weights = [linear._parameters.get("weight") for linear in linears]
    if any(w is None for w in weights):  # e.g. a parametrized weight, computed on access
        return None
    first = weights[0]
    storage, start, width = first.untyped_storage().data_ptr(), first.storage_offset(), first.shape[1]
    starts = [0]
    for weight in weights:
        if not _is_view_at(weight, storage, start + starts[-1] * width):
            return None
        starts.append(starts[-1] + weight.shape[0])
    total = starts.pop()
    biases = (linear._parameters.get("bias") for linear in linears)
    biased = [(rows, bias) for rows, bias in zip(starts, biases) if bias is not None]
    weight = first.detach().as_strided((total, width), (width, 1))
    if not biased:
        return weight, None
    anchor = biased[0][1]
    bias_start, bias_storage = anchor.storage_offset() - biased[0][0], anchor.untyped_storage()
    if bias_start < 0 or (bias_start + total) * anchor.element_size() > bias_storage.nbytes() or not all(
        _is_view_at(bias, bias_storage.data_ptr(), bias_start + rows) for rows, bias in biased
    ):
        return None
    return weight, anchor.detach().as_strided((total,), (1,), bias_start)


def pack(linears: list[nn.Linear]) -> bool:
    """Make the weights (and biases) of `linears` row blocks of one new buffer, in order, values unchanged; rows of a
    layer without a bias get a zero bias. Returns False, changing nothing, when they can't be packed: not all plain
    `nn.Linear`s of one input size, dtype and device, or a parameter that doesn't own its storage."""
    weights = [linear.weight for linear in linears]
    biases = [linear.bias for linear in linears if linear.bias is not None]
    if not all(map(is_plain, linears)) or not all(map(_owns_storage, weights + biases)):
        return False
    if len({(w.shape[1], w.dtype, w.device) for w in weights}) != 1 or len({(b.dtype, b.device) for b in biases}) > 1:
        return False
    rows = sum(linear.out_features for linear in linears)
    # Outside inference mode, or the buffer would be an inference tensor that training could not use later.
    with torch.inference_mode(False), torch.no_grad():
        weight = torch.empty(rows, weights[0].shape[1], dtype=weights[0].dtype, device=weights[0].device)
        bias = torch.zeros(rows, dtype=biases[0].dtype, device=biases[0].device) if biases else None
        start = 0
        for linear in linears:
            end = start + linear.out_features
            weight[start:end].copy_(linear.weight)
            linear.weight.data = weight[start:end]
            if linear.bias is not None:
                bias[start:end].copy_(linear.bias)
                linear.bias.data = bias[start:end]
            start = end
    return True


def packed_or_pack(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """:func:`packed`, packing first where it can: never while a CUDA graph is being captured (the copies would only
    be recorded) or torch.compile traces."""
    result = packed(linears)
    if result is not None or torch.compiler.is_compiling():
        return result
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return None
    return packed(linears) if pack(linears) else None
