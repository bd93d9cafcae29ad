"""generate() without a host synchronisation per token on CUDA.

transformers' sampling loop asks the GPU "have all rows finished?" after every token. The answer makes the host wait
for the step to end, so the next step's Python work (input preparation, logits processors, launching the decode
graph) runs while the GPU idles: about a millisecond a token. transformers has the cure built in,
`DeferredStopCheck` (the flag is copied asynchronously and read one step late; the extra step this may run is undone
afterwards), but switches it on for Apple's MPS alone. Our models switch it on for their own sampling loops on CUDA
whenever generate() hands no cache back (no `return_dict_in_generate`, no cache passed in): undoing a step of a
recurrent state would need a copy of the whole state before every step, which costs what the deferral saves.

The switch is a context variable read by a wrapper around `DeferredStopCheck.is_supported`: any other model, thread or
loop sees transformers' own decision. Versions of transformers without `DeferredStopCheck` keep their loop.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from transformers.generation import utils as generation_utils

_devices: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("xlstm_hf_deferred_stop", default=())


def _install() -> bool:
    stop_check = getattr(generation_utils, "DeferredStopCheck", None)
    if stop_check is None or not hasattr(stop_check, "is_supported"):
        return False
    original = stop_check.is_supported
    if getattr(original, "xlstm_hf_wrapper", False):  # this module was imported again
        return True

    def is_supported(device, cache, cache_is_returned: bool, is_assistant: bool) -> bool:
        if device.type in _devices.get() and not is_assistant and not cache_is_returned:
            return True
        return original(device, cache, cache_is_returned, is_assistant)

    is_supported.xlstm_hf_wrapper = True
    stop_check.is_supported = staticmethod(is_supported)
    return True


AVAILABLE = _install()


@contextlib.contextmanager
def deferred_stop_checks(device_types: tuple[str, ...] = ("cuda",)) -> Iterator[None]:
    """Within this context, transformers' decoding loops on `device_types` read the stop flag one step late."""
    token = _devices.set(tuple(device_types))
    try:
        yield
    finally:
        _devices.reset(token)
