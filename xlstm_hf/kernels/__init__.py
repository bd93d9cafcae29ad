"""mLSTM cell kernels on plain tensors. They know nothing of transformers.

* :mod:`.mlstm_torch`: the pure-PyTorch reference (recurrent step and sequence, chunkwise, parallel), the spec.
* :mod:`.mlstm_triton`: Triton kernels (chunkwise forward/backward, an inference prefill with the mLSTM layer's gate
  and head-norm work fused in, fused step), imported only when used.
* :mod:`.backend`: the run-time choice between them, and :func:`mlstm`, the entry point the model calls.
"""

from .backend import mlstm, normalize_backend, resolve_backend, set_backend, triton_available
from .mlstm_torch import (
    MLSTMState,
    mlstm_chunkwise,
    mlstm_parallel,
    mlstm_recurrent_sequence,
    mlstm_recurrent_step,
    pad_gates,
    zero_state,
)

__all__ = [
    "MLSTMState",
    "mlstm",
    "mlstm_chunkwise",
    "mlstm_parallel",
    "mlstm_recurrent_sequence",
    "mlstm_recurrent_step",
    "normalize_backend",
    "pad_gates",
    "resolve_backend",
    "set_backend",
    "triton_available",
    "zero_state",
]
