"""The lm-eval model `xlstm`: transformers' HFLM on our implementation.

`--model hf` would load transformers' built-in xLSTM (which ignores padding masks); `--model xlstm` loads
xlstm_hf's, takes the kernel choice, and gives lm-eval a context length: a recurrent model has no position limit,
and lm-eval otherwise falls back to 2048 tokens and truncates longer prompts silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

import xlstm_hf

from ..arguments import positive_int
from ..training import write_atomically

# The context lm-eval may fill: memory does not grow with it, so any prompt of a benchmark fits.
RECURRENT_MAX_LENGTH = 1 << 20


@register_model("xlstm")
class XLSTMLM(HFLM):
    """lm-eval model for xLSTM checkpoints. Model args: `pretrained` (folder or Hub id), `kernels` (torch, triton,
    auto), `max_length` (default 2**20), and HFLM's own (`dtype`, `device`, `batch_size`, ...)."""

    def __init__(self, pretrained: str, kernels: str | None = None, max_length: int | None = None, **kwargs):
        if kernels is not None:
            xlstm_hf.set_kernel_backend(kernels)
        try:
            super().__init__(pretrained=pretrained, backend="causal", max_length=max_length or RECURRENT_MAX_LENGTH,
                             **kwargs)
        except OSError as error:  # transformers' message may not name the model (e.g. "couldn't connect")
            raise OSError(f"pretrained={pretrained}: {error}") from error
        if not isinstance(self.model, xlstm_hf.XLSTMForCausalLM):
            raise TypeError(f"{pretrained} loaded as {type(self.model).__name__}, not an xLSTM checkpoint")


def run_lm_eval_cli(argv: list[str]) -> None:
    """lm-eval's command line with the `xlstm` model registered (and chosen, unless `--model` is given)."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(argv)
    if "--model" not in argv:
        argv = ["--model", "xlstm", *argv]
    sys.argv = ["lm-eval", *argv]
    cli_evaluate()


def add_run_arguments(parser: argparse.ArgumentParser, batch_size: str) -> None:
    """The options every runner passes on to lm-eval (`--batch-size` defaults differ per benchmark)."""
    parser.add_argument("--batch-size", default=batch_size, help=f"lm-eval batch size (default: {batch_size})")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--kernels", default="auto", choices=["auto", "torch", "triton"])
    parser.add_argument("--limit", type=positive_int, help="documents per task (a smoke test, not a score)")


def evaluate(model: str, tasks: list[str], dtype: str = "bfloat16", kernels: str = "auto", **kwargs) -> dict:
    """lm-eval's `simple_evaluate` with the `xlstm` model; returns `results["results"]`."""
    from lm_eval import simple_evaluate

    output = simple_evaluate(model="xlstm", model_args=f"pretrained={model},dtype={dtype},kernels={kernels}",
                             tasks=tasks, **kwargs)
    return output["results"]


def write_report(folder: str | Path, stem: str, title: str, markdown: str, data: dict) -> tuple[Path, Path]:
    """`stem`.md and `stem`.json in `folder`, each written to a temporary file and renamed into place."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"{stem}.md", folder / f"{stem}.json"
    for path, text in zip(paths, (f"# {title}\n\n{markdown}", json.dumps(data, indent=1, default=str) + "\n")):
        write_atomically(path, text)
    return paths
