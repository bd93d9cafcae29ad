"""argparse types, data-file and model reading shared by the command line, the evaluation runners and the examples: a
bad value becomes argparse's one-line usage error that names the option, never a traceback."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class UsageError(ValueError):
    """A bad command-line value found only after parsing (a model that cannot be loaded, too little data): reported
    as argparse reports its errors, by `reports_usage_errors`."""


def reports_usage_errors(main: Callable) -> Callable:
    """Decorate a script's `main(argv=None)`: a `UsageError` ends it as argparse's errors do, one line and exit 2."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> Any:
        try:
            return main(argv)
        except UsageError as error:
            print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return run


def load_pretrained(loader: Any, option: str, name: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(name, **kwargs)` for an Auto class (model or tokenizer); a `name` that cannot be loaded
    (neither a folder here nor a Hub id that could be fetched) is a `UsageError` naming `option`."""
    from safetensors import SafetensorError

    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # RuntimeError: weights of another shape
        raise UsageError(f"{option} {name}: {error}") from None


def bos_kwargs(config: Any) -> dict[str, bool]:
    """`add_bos_token=True` for the tokenizer of a checkpoint whose config asks for a BOS token before every input
    (`force_bos_token_insert`, set by NX-AI/xLSTM-7b, whose GPT-NeoX tokenizer adds none); otherwise nothing, so the
    tokenizer's own setting stands."""
    return {"add_bos_token": True} if getattr(config, "force_bos_token_insert", False) else {}


def tokenizer_source(args: argparse.Namespace) -> tuple[str, str]:
    """The option that names the tokenizer and its value: `--tokenizer` if one was given, else `--model` (a script
    with both options)."""
    return ("--tokenizer", args.tokenizer) if args.tokenizer else ("--model", args.model)


def load_tokenizer(args: argparse.Namespace, **kwargs: Any) -> Any:
    """The tokenizer that `tokenizer_source` names, `kwargs` going to `from_pretrained` (e.g. `bos_kwargs`). One
    without an EOS token is a `UsageError`: training ends every text with it."""
    from transformers import AutoTokenizer

    option, name = tokenizer_source(args)
    tokenizer = load_pretrained(AutoTokenizer, option, name, **kwargs)
    if tokenizer.eos_token_id is None:
        raise UsageError(f"{option} {name}: the tokenizer has no EOS token, which training puts after every text")
    return tokenizer


def check_vocabulary(args: argparse.Namespace, tokenizer: Any, largest_id: int, vocab_size: int) -> None:
    """A `UsageError` naming the tokenizer's option (`tokenizer_source`) when the data holds a token id, or the
    tokenizer pads with one, that the model has no embedding for: found before training, not at its first step."""
    option, name = tokenizer_source(args)
    if largest_id >= vocab_size:
        raise UsageError(f"{option} {name}: the data's tokens go up to id {largest_id}, and the model's vocabulary "
                         f"has {vocab_size} (a tokenizer of another model?)")
    pad = tokenizer.pad_token_id
    if pad is not None and pad >= vocab_size:
        raise UsageError(f"{option} {name}: its pad token has id {pad}, beyond the model's vocabulary of "
                         f"{vocab_size} (a pad token added to the tokenizer? pad with one of the model's tokens)")


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum`."""

    def integer(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return integer


positive_int = at_least(1)


def folder_to_save_into(text: str) -> str:
    """An argparse type: a folder that a save at the end of the work can write (it is made then, next to where it
    goes, and renamed into place): not a file, and below a folder that can be written. Checked before the work, so
    that hours of it are not lost at the save."""
    path = Path(text).resolve()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    ancestor = next((folder for folder in path.parents if folder.exists()), path)
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot make folders in {ancestor}")
    return text


def number_in(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = True
              ) -> Callable[[str], float]:
    """An argparse type: a finite number between `low` and `high`, each end open (excluded) or closed."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def number(text: str) -> float:
        value = float(text)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {value}")
        return value

    return number


positive_float = number_in(0, low_open=True)
non_negative_float = number_in(0)


def read_data(parser: argparse.ArgumentParser, option: str, paths: list[str], field: str) -> list[str]:
    """The texts of `option`'s files; a file that is missing, not JSON lines, or without `field` is a usage error."""
    from .training import read_texts  # torch comes with it: not for the parsers that only take numbers

    texts = []
    for path in paths:
        try:
            texts += read_texts([path], field)
        except json.JSONDecodeError as error:
            parser.error(f"{option} {path}: a line is not JSON ({error.msg}): {error.doc[:80]!r}")
        except TypeError as error:  # a JSON line that is not an object
            parser.error(f"{option} {error}")
        except KeyError as error:
            parser.error(f"--text-field {field}: {error.args[0]}")
        except (OSError, ValueError) as error:
            parser.error(f"{option} {path}: {error}")
    return texts


def device(name: str) -> str:
    """An argparse type: a torch device that this machine has (cpu, cuda, cuda:1, ...)."""
    import torch

    try:
        parsed = torch.device(name)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if parsed.type != "cpu":
        accelerator = torch.accelerator.current_accelerator()
        if accelerator is None or accelerator.type != parsed.type:
            raise argparse.ArgumentTypeError(f"{name}: this machine has no {parsed.type} device")
        if (parsed.index or 0) >= torch.accelerator.device_count():
            raise argparse.ArgumentTypeError(f"{name}: this machine has {torch.accelerator.device_count()} "
                                             f"{parsed.type} devices")
    return name
