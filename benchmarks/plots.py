"""PNG plots of `benchmarks/generation.py` results (one or more JSON files, merged; a point measured in several, the
median): time to first token and decode speed against the prompt length, prefill throughput by batch shape, and peak
memory while generating.

    python benchmarks/plots.py docs/results/generation_*.json --out docs/img

Needs matplotlib (not a dependency of the package: `pip install matplotlib`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from results import folder_to_write


def results_file(path: str) -> dict:
    """An argparse type: the {info, args, rows} that `benchmarks/generation.py --out` wrote to `path`. A file that is
    missing, not JSON or of another shape is a usage error naming it, not a traceback."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError) as error:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"{path} is not JSON: {error}") from None
    if not (isinstance(data, dict) and isinstance(data.get("rows"), list) and isinstance(data.get("info"), dict)):
        raise argparse.ArgumentTypeError(f"{path}: not results of benchmarks/generation.py (no info and rows)")
    return dict(data, path=path)


def command_line() -> argparse.ArgumentParser:
    """The command line; `main` reports through it too (files with nothing to plot)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=results_file,
                        help="JSON files written by benchmarks/generation.py --out")
    parser.add_argument("--out", default="docs/img", type=folder_to_write,
                        help="folder for the PNG files, made if needed (default: docs/img)")
    return parser


def measured(files: list[dict]) -> list[dict]:
    """The rows of all `files` that measured something (not those of a variant that failed)."""
    return [r for data in files for r in data["rows"] if isinstance(r, dict) and "suite" in r and "error" not in r]


def setting(files: list[dict]) -> str:
    """What the files measured on, for the titles: their configs (--tiny's are float32, the published ones bf16) and
    devices."""
    configs = {"tiny configs, float32" if data.get("args", {}).get("tiny") else "7B configs, bf16" for data in files}
    return "; ".join(sorted(configs)) + f" ({', '.join(sorted({str(data['info'].get('device')) for data in files}))})"


def medians(samples: Iterable[tuple[str, Any, float]]) -> dict[str, list[tuple]]:
    """(x, value) points of each variant from its (variant, x, value) samples, sorted by x; an x measured in several
    of the files, the median."""
    series = defaultdict(lambda: defaultdict(list))
    for variant, x, value in samples:
        series[variant][x].append(value)
    return {name: sorted((x, statistics.median(values)) for x, values in points.items())
            for name, points in series.items()}


def by_variant(rows: list[dict], suite: str, key: str) -> dict[str, list[tuple]]:
    """(prompt, value) points of each variant, sorted; a prompt measured in several of the files, the median."""
    return medians((r["variant"], max(r["prompt"], 1), r[key]) for r in rows
                   if r["suite"] == suite and r.get(key) is not None)  # None: not measured (a first-token-only run)


def prefill_rates(rows: list[dict]) -> dict[str, dict[tuple[int, int], float]]:
    """Prefill tokens/s of each variant by (batch, prompt); a shape measured in several of the files, the median."""
    return {variant: dict(points) for variant, points in medians(
        (r["variant"], (r["batch"], r["prompt"]), r["batch"] * r["prompt"] * 1000 / r["ttft_ms"])
        for r in rows if r["suite"] == "prefill" and r.get("ttft_ms")).items()}


def memory_curves(rows: list[dict]) -> dict[str, list[tuple]]:
    """(generated tokens, peak GiB) points of each variant; a point measured in several of the files, the median."""
    return medians((r["variant"], tokens, gib) for r in rows if r["suite"] == "memory" and r.get("points")
                   for tokens, gib in r["points"])


FIGSIZE = (6.4, 5.0)  # inches; the height leaves room for the legend under the axes


def save(fig, ax, path: str) -> None:
    """Finish a figure and write it to `path` (through a temporary file, so a failure leaves no half-written PNG).
    The legend goes under the axes, where it hides no line: decode speeds of the systems span the whole height."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path + ".tmp", dpi=120, format="png")
    plt.close(fig)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")


def main(argv=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = command_line()
    args = parser.parse_args(argv)
    rows = measured(args.results)
    where = setting(args.results)
    # One colour a system in every plot, in the order the results list them.
    colour = {v: f"C{n}" for n, v in enumerate(dict.fromkeys(r["variant"] for r in rows))}
    latency = {key: by_variant(rows, "latency", key) for key in ("ttft_ms", "decode_tok_s")}
    prefill, memory = prefill_rates(rows), memory_curves(rows)
    if not (any(latency.values()) or prefill or memory):
        parser.error(f"nothing to plot in {', '.join(data['path'] for data in args.results)}: no latency, "
                           "prefill or memory rows (files of benchmarks/generation.py --out)")
    os.makedirs(args.out, exist_ok=True)
    for key, name, label in (("ttft_ms", "ttft.png", "time to first token (ms)"),
                             ("decode_tok_s", "decode.png", "decode tokens/s (batch 1)")):
        if not latency[key]:
            continue
        fig, ax = plt.subplots(figsize=FIGSIZE)
        for variant, points in latency[key].items():
            ax.plot(*zip(*points), marker="o", label=variant, color=colour[variant])
        ax.set(xscale="log", xlabel="prompt tokens", ylabel=label, title=f"model.generate, {where}")
        if key == "ttft_ms":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        save(fig, ax, os.path.join(args.out, name))

    if prefill:
        shapes = sorted({shape for values in prefill.values() for shape in values}, key=lambda s: (s[1], s[0]))
        fig, ax = plt.subplots(figsize=FIGSIZE)
        width = 0.8 / len(prefill)
        for n, (variant, values) in enumerate(prefill.items()):
            # A shape the variant did not run (out of memory) has no bar, not a bar of 0.
            ax.bar([i + n * width for i in range(len(shapes))], [values.get(s, math.nan) / 1000 for s in shapes],
                   width, label=variant, color=colour[variant])
        ax.set_xticks([i + width * (len(prefill) - 1) / 2 for i in range(len(shapes))],
                      [f"{b} x {p // 1024}K" if p >= 1024 else f"{b} x {p}" for b, p in shapes])
        tokens = " or ".join(f"{n:,}" for n in sorted({b * p for b, p in shapes}))
        ax.set(ylabel="prefill, thousand tokens/s", title=f"prefill of {tokens} tokens a batch, {where}")
        save(fig, ax, os.path.join(args.out, "prefill.png"))

    if memory:
        fig, ax = plt.subplots(figsize=FIGSIZE)
        for variant, points in memory.items():
            ax.plot(*zip(*points), marker=".", label=variant, color=colour[variant])
        ax.set(xlabel="generated tokens", ylabel="peak GPU memory (GiB)", ylim=(0, None),
               title=f"memory while generating, {where}")
        save(fig, ax, os.path.join(args.out, "memory.png"))


if __name__ == "__main__":
    main()
