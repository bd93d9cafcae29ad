"""The lm-eval model `xlstm`: transformers' HFLM on our implementation.

`--model hf` would load transformers' built-in xLSTM (which ignores padding masks); `--model xlstm` loads
xlstm_hf's, takes the kernel choice, and gives lm-eval a context length: a recurrent model has no position limit,
and lm-eval otherwise falls back to 2048 tokens and truncates longer prompts silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from transformers import AutoConfig

import xlstm_hf

from ..arguments import bos_kwargs, device, positive_int
from ..training import write_atomically

# The context lm-eval may fill: memory does not grow with it, so any prompt of a benchmark fits.
RECURRENT_MAX_LENGTH = 1 << 20
MODEL_TYPES = (xlstm_hf.XLSTMConfig.model_type, xlstm_hf.XLSTMStackConfig.model_type)


class CheckpointNotLoaded(OSError):
    """`pretrained` could not be loaded; `reason` is transformers' message (the runners name their `--model`)."""

    def __init__(self, pretrained: str, reason: Exception):
        super().__init__(f"pretrained={pretrained}: {reason}")
        self.reason = reason


@register_model("xlstm")
class XLSTMLM(HFLM):
    """lm-eval model for xLSTM checkpoints. Model args: `pretrained` (folder or Hub id), `kernels` (torch, triton,
    auto), `max_length` (default 2**20), and HFLM's own (`dtype`, `device`, `batch_size`, `peft`, `add_bos_token`,
    ...). `add_bos_token` defaults to the checkpoint's `force_bos_token_insert` (NX-AI/xLSTM-7b: true)."""

    def __init__(self, pretrained: str, kernels: str | None = None, max_length: int | None = None,
                 backend: str = "causal", **kwargs):
        if backend != "causal":
            raise ValueError(f"backend={backend!r}: xLSTM is a causal language model (backend=causal)")
        if kernels is not None:
            xlstm_hf.set_kernel_backend(kernels)
        self._longest_request = None
        config = checkpoint_config(pretrained, kwargs)
        model_type = getattr(config, "model_type", None)
        if config is not None and model_type not in MODEL_TYPES:  # before its weights load
            raise CheckpointNotLoaded(pretrained, ValueError(
                f"a {model_type!r} checkpoint, not an xLSTM one (model_type {' or '.join(map(repr, MODEL_TYPES))})"))
        if kwargs.get("add_bos_token") is None:
            kwargs.update(bos_kwargs(config))
        try:
            super().__init__(pretrained=pretrained, backend=backend, max_length=max_length or RECURRENT_MAX_LENGTH,
                             **kwargs)
        except OSError as error:  # transformers' message may not name the model (e.g. "couldn't connect")
            raise CheckpointNotLoaded(pretrained, error) from error
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # `peft=`
        if not isinstance(base, (xlstm_hf.XLSTMForCausalLM, xlstm_hf.XLSTMStackForCausalLM)):
            raise CheckpointNotLoaded(pretrained, ValueError(
                f"loaded as {type(base).__name__}, not as xlstm_hf's XLSTMForCausalLM or XLSTMStackForCausalLM"))

    def generate_until(self, requests, disable_tqdm: bool = False):
        self._size_batches_by(requests, lambda r: next((r.args[1][name] for name in GENERATION_LENGTH_NAMES
                                                       if r.args[1].get(name) is not None), self.max_gen_toks))
        return super().generate_until(requests, disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        """HFLM's, with each text's tokens encoded without special tokens: lm-eval conditions the first window on
        `prefix_token_id` (the BOS token) already, so a BOS added to the text would be scored as its first token."""
        self._size_batches_by(requests, lambda r: 1)
        add_bos_token, self.add_bos_token = self.add_bos_token, False
        try:
            return super().loglikelihood_rolling(requests, disable_tqdm)
        finally:
            self.add_bos_token = add_bos_token

    def _size_batches_by(self, requests, extra_tokens) -> None:
        """With `batch_size=auto`, keep the longest request's tokens (its text, plus `extra_tokens(request)`) for
        `_detect_batch_size`."""
        if self.batch_size == "auto":
            self._longest_request = max((len(self.tok_encode(r.args[0])) + extra_tokens(r) for r in requests),
                                        default=1)

    def _detect_batch_size(self, requests=None, pos: int = 0) -> int:
        """HFLM's batch-size search, which without requests tries rows of `max_length` tokens: 2**20 here, where no
        batch fits. Those rows are as long as the longest request instead (kept by `generate_until` and
        `loglikelihood_rolling`)."""
        if requests or self._longest_request is None:
            return super()._detect_batch_size(requests, pos)
        max_length = self._max_length
        self._max_length = min(max_length, self._longest_request)
        try:
            return super()._detect_batch_size()
        finally:
            self._max_length = max_length


# lm-eval's names for the number of tokens to generate (`normalize_gen_kwargs` maps the others onto max_gen_toks).
GENERATION_LENGTH_NAMES = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


def checkpoint_config(pretrained, kwargs: dict):
    """The config of HFLM's `pretrained` (a model, or a folder or Hub id at `revision`/`subfolder`); None when it does
    not load (HFLM's own load then reports it)."""
    if not isinstance(pretrained, str):
        return getattr(pretrained, "config", None)
    try:
        return AutoConfig.from_pretrained(pretrained, revision=kwargs.get("revision") or "main",
                                          subfolder=kwargs.get("subfolder") or "")
    except (OSError, ValueError):
        return None


def run_lm_eval_cli(argv: list[str]) -> None:
    """lm-eval's command line with the `xlstm` model registered (and chosen for `run`, lm-eval's default command,
    unless `--model` is given)."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(argv)
    if argv and not names_a_model(argv) and argv[:1] not in (["ls"], ["validate"]):  # no arguments: lm-eval's help
        at = 1 if argv[:1] == ["run"] else 0
        argv[at:at] = ["--model", "xlstm"]
    sys.argv = ["lm-eval", *argv]
    cli_evaluate()


def names_a_model(argv: list[str]) -> bool:
    """Whether lm-eval's arguments name a model: `--model`/`-M`, or a `--config`/`-C` file with a `model` (the
    command line's `--model` would override the file's; a file that cannot be read is lm-eval's to report)."""
    import yaml

    options = argparse.ArgumentParser(prog="lm-eval", add_help=False, allow_abbrev=False)
    options.add_argument("--model", "-M")
    options.add_argument("--config", "-C")
    given, _ = options.parse_known_args(argv)
    if given.model is not None or given.config is None:
        return given.model is not None
    try:
        config = yaml.safe_load(Path(given.config).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return True
    return not isinstance(config, dict) or config.get("model") is not None


def add_run_arguments(parser: argparse.ArgumentParser, batch_size: str) -> None:
    """The options every runner passes on to lm-eval (`--batch-size` defaults differ per benchmark)."""
    parser.add_argument("--batch-size", type=batch_size_type, default=batch_size,
                        help=f"lm-eval batch size: N, auto or auto:N (default: {batch_size})")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", type=device, help="a device of this machine (default: cuda)")
    parser.add_argument("--kernels", default="auto", choices=["auto", "torch", "triton"])
    parser.add_argument("--limit", type=positive_int, help="documents per task (a smoke test, not a score)")


def batch_size_type(text: str) -> str:
    """lm-eval's batch size, checked before any work: a positive integer, `auto`, or `auto:N`."""
    number = text.split(":", 1)[1] if text.startswith("auto:") else text
    if text != "auto" and not (number.isdigit() and int(number) > 0):
        raise argparse.ArgumentTypeError(f"expected a positive integer, auto or auto:N, got {text!r}")
    return text


def evaluate(model: str, tasks: list[str], dtype: str = "bfloat16", kernels: str = "auto", **kwargs) -> dict | None:
    """lm-eval's `simple_evaluate` with the `xlstm` model; returns `results["results"]`, or None in the processes
    other than the first under `accelerate launch` (lm-eval gathers the results in the first)."""
    from lm_eval import simple_evaluate

    # A dict, not lm-eval's "k=v,k=v" string, which a comma in the path would split.
    output = simple_evaluate(model="xlstm", model_args=dict(pretrained=model, dtype=dtype, kernels=kernels),
                             tasks=tasks, **kwargs)
    return None if output is None else output["results"]


def default_device(parser: argparse.ArgumentParser) -> str:
    """cuda, the runners' default `--device`, where this machine has it; else a usage error (lm-eval's would be a
    traceback after the model loaded)."""
    try:
        return device("cuda")
    except argparse.ArgumentTypeError as error:
        parser.error(f"--device defaults to cuda: {error} (pass --device cpu)")


def evaluate_into(parser: argparse.ArgumentParser, folder: str | Path, model: str,
                  evaluation: Callable[[], dict | None]) -> dict | None:
    """`evaluation()`'s lm-eval results, saved as `folder`/lm_eval_results.json before a report is made of them (the
    runners check `folder` as they parse `--output-dir`: `arguments.folder_to_save_into`). A checkpoint that does
    not load is a usage error naming `--model`. None (and nothing written) in the processes that get no results
    (`evaluate`)."""
    try:
        results = evaluation()
    except CheckpointNotLoaded as error:
        parser.error(f"--model {model}: {error.reason}")
    if results is None:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_atomically(Path(folder) / "lm_eval_results.json", json.dumps(results, indent=1, default=str) + "\n")
    return results


def write_report(folder: str | Path, stem: str, title: str, markdown: str, data: dict) -> tuple[Path, Path]:
    """`stem`.md and `stem`.json in `folder`, each written to a temporary file and renamed into place."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"{stem}.md", folder / f"{stem}.json"
    for path, text in zip(paths, (f"# {title}\n\n{markdown}", json.dumps(data, indent=1, default=str) + "\n")):
        write_atomically(path, text)
    return paths
