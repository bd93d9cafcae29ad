"""What every benchmark records beside its numbers: the machine and the versions, written as JSON atomically; and
what several of them share: the 7B's GEMM shapes, and how a sweep tells a variant that computes something else."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


@contextlib.contextmanager
def made_in(dtype: torch.dtype, device: str) -> Iterator[None]:
    """Modules built inside get their weights directly in `dtype` on `device`: no float32 copy first, which would
    cost a 7B 28 GB and set the process's peak memory above what the benchmark measures."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(default)


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


def seven_b_gemms() -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of the 7B's GEMMs, from its config: the packed projection of q, k, v, o and both
    gates, the output projection, the FFN's packed up projections (gate and up) and its down projection."""
    from xlstm_hf import XLSTMConfig

    c = XLSTMConfig()
    return {"projections": (2 * c.qk_dim + 2 * c.v_dim + 2 * c.num_heads, c.hidden_size),
            "out_proj": (c.hidden_size, c.v_dim), "up": (2 * c.ffn_dim, c.hidden_size),
            "down": (c.hidden_size, c.ffn_dim)}


def relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|: how a sweep tells a tiling that computes something else."""
    return ((ours.float() - reference.float()).abs().max() / reference.float().abs().max()).item()


def _writable(text: str, path: Path) -> str:
    """`text` if `path` can be made: the nearest of its folders that exists is a folder this process can write."""
    ancestor = next(folder for folder in path.parents if folder.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot make {text}: {ancestor} is not a folder that can be written")
    return text


def file_to_write(text: str) -> str:
    """An argparse type for `--out`: a file that `write` can make at the end of the run, not an existing folder, below
    a folder that exists or can be made. Checked before the run, so that its results are not lost at the write."""
    path = Path(text).resolve()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    return _writable(text, path)


def folder_to_write(text: str) -> str:
    """An argparse type for an output folder: one that exists and can be written, or that can be made."""
    path = Path(text).resolve()
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"cannot write into {text}")
        return text
    return _writable(text, path)


def write(path: str | None, info: dict, args, rows: list[dict]) -> None:
    """Write {info, args, rows} to `path` (nothing when None), via a temporary file and a rename."""
    if not path:
        return
    from xlstm_hf.training import write_atomically

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, json.dumps(json_safe(dict(info=info, args=vars(args), rows=rows)), indent=1,
                                      allow_nan=False))


def json_safe(value):
    """`value` with NaN and infinities as None (null): strict JSON readers refuse Python's NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def run_isolated(script: str, argv: list[str], variant: str) -> list[dict]:
    """Run `script argv --only variant` in a fresh process and collect the result rows it prints (JSON lines with a
    "suite" key), passing its output on as it comes. One model per process: torch.compile's and our CUDA graphs,
    memory pools and peak statistics never meet another model's (a Llama compiled after xLSTM's graphs were captured
    in the same process decoded at a third of its own speed)."""
    child = subprocess.Popen([sys.executable, script, *argv, "--only", variant], stdout=subprocess.PIPE, text=True)
    rows = []
    for line in child.stdout:
        print(line, end="", flush=True)
        if line.startswith('{"suite"'):
            rows.append(json.loads(line))
    if child.wait():  # also after some rows: the suites it had not reached are missing, and the table says why
        rows.append(dict(suite="all", variant=variant, error=f"exit status {child.returncode}"))
    return rows


def run_child(run: Callable[[], None], **row) -> None:
    """The `--only` side of `run_isolated`: `run()` prints this process's result rows; should it raise, the error is
    printed as the result instead (`row` names the variant), so that a peer that fails leaves the others running."""
    try:
        run()
    except Exception as error:  # noqa: BLE001  (a peer that fails is a result)
        print(json.dumps(dict(row, error=f"{type(error).__name__}: {error}"[:300])), flush=True)
