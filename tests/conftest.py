import os

import torch

# Without a GPU the Triton kernels run in Triton's interpreter. It must be chosen before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
