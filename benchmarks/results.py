"""What every benchmark records beside its numbers: the machine and the versions, written as JSON atomically."""

from __future__ import annotations

import json
import os
import tempfile

import torch


def environment() -> dict:
    """Device and library versions of this run."""
    import transformers

    info = dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", torch=torch.__version__,
                transformers=transformers.__version__)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def write(path: str | None, info: dict, args, rows: list[dict]) -> None:
    """Write {info, args, rows} to `path` (nothing when None), via a temporary file and a rename."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as handle:
        json.dump(dict(info=info, args=vars(args), rows=rows), handle, indent=1)
    os.replace(handle.name, path)
