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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="JSON files written by benchmarks/generation.py --out")
    parser.add_argument("--out", default="docs/img", help="folder for the PNG files (default: docs/img)")
    return parser.parse_args(argv)


def load(paths: list[str]) -> tuple[list[dict], set[str]]:
    rows, devices = [], set()
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        devices.add(data["info"]["device"])
        rows += [r for r in data["rows"] if "error" not in r]
    return rows, devices


def by_variant(rows: list[dict], suite: str, key: str) -> dict[str, list[tuple]]:
    """(prompt, value) points of each variant, sorted; a prompt measured in several of the files, the median."""
    series = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["suite"] == suite and r.get(key) is not None:  # None: not measured (a first-token-only run)
            series[r["variant"]][max(r["prompt"], 1)].append(r[key])
    return {name: sorted((prompt, statistics.median(values)) for prompt, values in points.items())
            for name, points in series.items()}


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

    args = parse_args(argv)
    rows, devices = load(args.results)
    os.makedirs(args.out, exist_ok=True)
    where = ", ".join(sorted(devices))
    # One colour a system in every plot, in the order the results list them.
    colour = {v: f"C{n}" for n, v in enumerate(dict.fromkeys(r["variant"] for r in rows))}
    for key, name, label in (("ttft_ms", "ttft.png", "time to first token (ms)"),
                             ("decode_tok_s", "decode.png", "decode tokens/s (batch 1)")):
        series = by_variant(rows, "latency", key)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=FIGSIZE)
        for variant, points in series.items():
            ax.plot(*zip(*points), marker="o", label=variant, color=colour[variant])
        ax.set(xscale="log", xlabel="prompt tokens", ylabel=label, title=f"model.generate, 7B configs, bf16 ({where})")
        if key == "ttft_ms":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        save(fig, ax, os.path.join(args.out, name))

    prefill = [r for r in rows if r["suite"] == "prefill"]
    if prefill:
        shapes = sorted({(r["batch"], r["prompt"]) for r in prefill}, key=lambda s: s[1])
        variants = list(dict.fromkeys(r["variant"] for r in prefill))
        fig, ax = plt.subplots(figsize=FIGSIZE)
        width = 0.8 / len(variants)
        for n, variant in enumerate(variants):
            values = {(r["batch"], r["prompt"]): r["batch"] * r["prompt"] * 1000 / r["ttft_ms"]
                      for r in prefill if r["variant"] == variant}
            # A shape the variant did not run (out of memory) has no bar, not a bar of 0.
            ax.bar([i + n * width for i in range(len(shapes))], [values.get(s, math.nan) / 1000 for s in shapes],
                   width, label=variant, color=colour[variant])
        ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(shapes))],
                      [f"{b} x {p // 1024}K" if p >= 1024 else f"{b} x {p}" for b, p in shapes])
        ax.set(ylabel="prefill, thousand tokens/s", title=f"65,536 tokens a batch ({where})")
        save(fig, ax, os.path.join(args.out, "prefill.png"))

    memory = [r for r in rows if r["suite"] == "memory" and r.get("points")]
    if memory:
        fig, ax = plt.subplots(figsize=FIGSIZE)
        for r in memory:
            ax.plot(*zip(*r["points"]), marker=".", label=r["variant"], color=colour[r["variant"]])
        ax.set(xlabel="generated tokens", ylabel="peak GPU memory (GiB)", ylim=(0, None),
               title=f"memory while generating ({where})")
        save(fig, ax, os.path.join(args.out, "memory.png"))


if __name__ == "__main__":
    main()
