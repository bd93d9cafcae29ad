import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter. It must be chosen before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def triton_backend():
    """The Triton kernels chosen explicitly for the test (on the CPU, Triton's interpreter runs them)."""
    import xlstm_hf

    xlstm_hf.set_kernel_backend("triton")
    yield
    xlstm_hf.set_kernel_backend(None)
