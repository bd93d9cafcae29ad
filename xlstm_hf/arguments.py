"""argparse types and data-file reading shared by the command line, the evaluation runners and the examples: a bad
value becomes argparse's one-line usage error that names the option, never a traceback."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum`."""

    def integer(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return integer


positive_int = at_least(1)


def positive_float(text: str) -> float:
    """An argparse type: a positive, finite number."""
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number of at least 0."""
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def read_data(parser: argparse.ArgumentParser, option: str, paths: list[str], field: str) -> list[str]:
    """The texts of `option`'s files; a file that is missing, not JSON lines, or without `field` is a usage error."""
    from .training import read_texts  # torch comes with it: not for the parsers that only take numbers

    texts = []
    for path in paths:
        try:
            texts += read_texts([path], field)
        except json.JSONDecodeError as error:
            parser.error(f"{option} {path}: a line is not JSON ({error.msg}): {error.doc[:80]!r}")
        except TypeError:  # a JSON line that is a number, not an object
            parser.error(f"{option} {path}: a line is not a JSON object")
        except KeyError as error:
            parser.error(f"--text-field {field}: {error.args[0]}")
        except (OSError, ValueError) as error:
            parser.error(f"{option} {path}: {error}")
    return texts
