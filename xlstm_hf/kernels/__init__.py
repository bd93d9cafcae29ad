"""mLSTM cell kernels on plain tensors. They know nothing of transformers."""


from .mlstm_torch import (
    MLSTMState,
    mlstm_chunkwise,
    mlstm_parallel,
    mlstm_recurrent_sequence,
    mlstm_recurrent_step,
    zero_state,
)

__all__ = [
    "MLSTMState",
    "mlstm",
    "mlstm_chunkwise",
    "mlstm_parallel",
    "mlstm_recurrent_sequence",
    "mlstm_recurrent_step",
    "zero_state",
]


def mlstm(
    q, k, v, i, f, initial_state: MLSTMState | None = None, chunk_size: int = 64, eps: float = 1e-6
):
    """The mLSTM cell over a sequence, in the form that suits its length: the recurrent step for one token after
    a state, the chunkwise form otherwise. Shapes as in :mod:`xlstm_hf.kernels.mlstm_torch`."""
    if q.shape[2] == 1 and initial_state is not None:
        h, state = mlstm_recurrent_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], initial_state, eps)
        return h[:, :, None], state
    return mlstm_chunkwise(q, k, v, i, f, initial_state, chunk_size=chunk_size, eps=eps)
