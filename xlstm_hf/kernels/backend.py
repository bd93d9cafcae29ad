"""Run-time choice of the mLSTM kernels, in one place.

Order of precedence: :func:`set_backend` (Python) > the ``XLSTM_HF_KERNELS`` environment variable (``torch`` |
``triton`` | ``auto``) > the preference a model's config states (legacy kernel names map onto ours) > ``auto``.
``auto`` takes Triton for CUDA tensors when Triton imports, and the PyTorch reference otherwise. A request for Triton
that cannot be met (CPU tensors, no Triton) falls back to the reference, with one warning; under Triton's interpreter
(``TRITON_INTERPRET=1``) a request for Triton runs the kernels on the CPU.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from .mlstm_torch import MLSTMState, mlstm_chunkwise, mlstm_recurrent_step

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "XLSTM_HF_KERNELS"

# Kernel names found in configs of transformers' xLSTM, the xlstm package and NX-AI/xLSTM-7b.
LEGACY_KERNEL_NAMES = {
    "chunkwise--triton_xl_chunk": "triton",
    "chunkwise--triton_limit_chunk": "triton",
    "parallel--triton_limit_headdim": "triton",
    "native_sequence__triton": "triton",
    "native_sequence__triton_step_fused": "triton",
    "triton": "triton",
    "triton_fused": "triton",
    "chunkwise--native_autograd": "torch",
    "chunkwise--native_custbw": "torch",
    "parallel--native_autograd": "torch",
    "parallel--native_custbw": "torch",
    "parallel--native_stablef_autograd": "torch",
    "parallel--native_stablef_custbw": "torch",
    "native_sequence__native": "torch",
    "native": "torch",
}

_override: str | None = None


def normalize_backend(name: str | None) -> str:
    """Map a backend or legacy kernel name onto "auto", "torch" or "triton" (None means "auto")."""
    if name is None:
        return "auto"
    key = str(name).strip().lower()
    if key in BACKENDS:
        return key
    if key in LEGACY_KERNEL_NAMES:
        return LEGACY_KERNEL_NAMES[key]
    if "siging" in key:  # mlstm_kernels' sigmoid-input-gate kernels compute another cell
        raise ValueError(f"{name!r} is the mLSTM with a sigmoid input gate, another cell than xLSTM 7B's exponential "
                         "input gate: not supported")
    raise ValueError(
        f"unknown mLSTM kernel backend {name!r}: use one of {BACKENDS} or a legacy name "
        f"({', '.join(sorted(LEGACY_KERNEL_NAMES))})"
    )


def set_backend(name: str | None) -> None:
    """Force a backend for the whole process ("torch", "triton", "auto"), or None to undo."""
    global _override
    _override = None if name is None else normalize_backend(name)


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401

        from . import mlstm_triton  # noqa: F401
    except Exception as error:  # noqa: BLE001  (any import failure means: not usable here)
        logger.info("Triton kernels unavailable: %s", error)
        return False
    return True


def requested_backend(preference: str | None = None) -> str:
    """What is asked for, before looking at the device: override, then environment, then the preference."""
    if _override is not None:
        return _override
    if os.environ.get(ENV_VAR):
        try:
            return normalize_backend(os.environ[ENV_VAR])
        except ValueError as error:
            raise ValueError(f"environment variable {ENV_VAR}: {error}") from None
    return normalize_backend(preference)


def resolve_backend(device: torch.device | str, preference: str | None = None) -> str:
    """The backend that will run on `device`: "torch" or "triton". Called for every layer of every forward, so the
    decision itself is cached (and logged once) per device type and request."""
    requested = requested_backend(preference)
    # Triton's interpreter (TRITON_INTERPRET=1) runs the kernels on CPU tensors: slow, for tests, and only when
    # asked for explicitly (Python or environment), never because a loaded config names a Triton kernel.
    explicit = _override is not None or bool(os.environ.get(ENV_VAR))
    interpreted = explicit and requested == "triton" and os.environ.get("TRITON_INTERPRET") == "1"
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return _decide(device_type, requested, interpreted)


@functools.cache
def _decide(device_type: str, requested: str, interpreted: bool) -> str:
    usable = (device_type == "cuda" or interpreted) and triton_available()
    if requested == "triton" and not usable:
        logger.warning(f"mLSTM kernels: Triton requested but not usable on {device_type}; using the PyTorch reference.")
        return "torch"
    chosen = "triton" if requested in ("auto", "triton") and usable else "torch"
    logger.info(f"mLSTM kernels: {chosen} on {device_type} (requested: {requested})")
    return chosen


def mlstm(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial_state: MLSTMState | None = None,
    chunk_size: int = 64,
    eps: float = 1e-6,
    backend: str = "torch",
) -> tuple[torch.Tensor, MLSTMState]:
    """The mLSTM cell over a sequence (shapes as in :mod:`.mlstm_torch`), in the form that suits it: the fused
    recurrent step for one token after a state (which the Triton step updates in place), the chunkwise form
    otherwise. `backend` is "torch" or "triton" (see :func:`resolve_backend`)."""
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be 'torch' or 'triton' (see resolve_backend), got {backend!r}")
    one_step = q.shape[2] == 1 and initial_state is not None
    if backend == "triton" and q.dtype != torch.float64:
        from .mlstm_triton import mlstm_chunkwise_triton, mlstm_step_triton

        if one_step and not torch.is_grad_enabled():
            h, state = mlstm_step_triton(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], initial_state,
                                         eps)
            return h[:, :, None], state
        return mlstm_chunkwise_triton(q, k, v, i, f, initial_state, eps=eps)
    if one_step:
        h, state = mlstm_recurrent_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], initial_state, eps)
        return h[:, :, None], state
    return mlstm_chunkwise(q, k, v, i, f, initial_state, chunk_size=chunk_size, eps=eps)
