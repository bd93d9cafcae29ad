"""Open LLM Leaderboard v2 with the `xlstm` model: lm-eval's `leaderboard` group, then the Leaderboard's
normalised scores beside NX-AI/xLSTM-7b's model-card raw scores.

    python -m xlstm_hf.eval.leaderboard --help
    python -m xlstm_hf.eval.leaderboard --model NX-AI/xLSTM-7b --output-dir leaderboard-out      # GPU, network
    python -m xlstm_hf.eval.leaderboard --from-results results.json --output-dir report          # normalise only

Normalisation (the Leaderboard's): per task max(0, (raw - 1/choices) / (1 - 1/choices)) * 100; BBH and MuSR per
subtask, then averaged; IFEval the mean of instance- and prompt-level strict accuracy; MATH exact match.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

from ..arguments import folder_to_save_into

# The model card's raw lm-eval scores for NX-AI/xLSTM-7b.
MODEL_CARD_RAW = {"BBH": 0.381, "MMLU-Pro": 0.242, "MATH": 0.036, "MuSR": 0.379, "GPQA": 0.280, "IFEval": 0.244}
MUSR_CHOICES = {"leaderboard_musr_murder_mysteries": 2, "leaderboard_musr_object_placements": 5,
                "leaderboard_musr_team_allocation": 3}
GPQA_CHOICES, MMLU_PRO_CHOICES = 4, 10
# What lm-eval's IFEval and MATH tasks import (its extras ifeval and math), checked before the model loads.
TASK_IMPORTS = ("langdetect", "immutabledict", "nltk", "sympy", "math_verify")


def bbh_choices() -> dict[str, int]:
    """Options per BBH subtask, read off lm-eval's own task files (its `doc_to_choice` lists)."""
    import lm_eval
    import yaml

    folder = Path(lm_eval.__file__).parent / "tasks" / "leaderboard" / "bbh_mc"
    choices = {}
    for file in sorted(folder.glob("[!_]*.yaml")):
        task = yaml.safe_load(file.read_text())
        choices[task["task"]] = len(task["doc_to_choice"])
    return choices


def normalise(raw: float, choices: int) -> float:
    """The Leaderboard's rescaling of an accuracy against random guessing among `choices`, in percent."""
    baseline = 1.0 / choices
    return max(0.0, (raw - baseline) / (1.0 - baseline)) * 100.0


def _metric(results: dict, task: str, name: str) -> tuple[float, float]:
    """(value, standard error) of `name` for `task` in lm-eval's results (keys like 'acc_norm,none')."""
    entry = results[task]
    key = next((k for k in entry if k.split(",")[0] == name), None)
    if key is None:
        raise KeyError(f"lm-eval results for {task} have no {name!r} (have: {sorted(entry)})")
    stderr = entry.get(key.replace(name, f"{name}_stderr", 1))
    return float(entry[key]), float(stderr) if isinstance(stderr, (int, float)) else math.nan


def leaderboard_scores(results: dict, bbh: dict[str, int] | None = None) -> dict:
    """Normalised score, raw score and standard error per benchmark, and the normalised average, from lm-eval's
    `results["results"]` of the `leaderboard` group."""
    rows = {}
    for name, group, choices in (("BBH", "leaderboard_bbh", bbh if bbh is not None else bbh_choices()),
                                 ("MuSR", "leaderboard_musr", MUSR_CHOICES)):
        subtasks = [t for t in choices if t in results]  # normalised one by one, then averaged
        if subtasks:
            rows[name] = dict(score=sum(normalise(_metric(results, t, "acc_norm")[0], choices[t]) for t in subtasks)
                              / len(subtasks), subtasks=len(subtasks))
            if group in results:
                rows[name]["raw"], rows[name]["stderr"] = _metric(results, group, "acc_norm")
    if "leaderboard_gpqa" in results:
        raw, stderr = _metric(results, "leaderboard_gpqa", "acc_norm")
        rows["GPQA"] = dict(score=normalise(raw, GPQA_CHOICES), raw=raw, stderr=stderr)
    if "leaderboard_mmlu_pro" in results:
        raw, stderr = _metric(results, "leaderboard_mmlu_pro", "acc")
        rows["MMLU-Pro"] = dict(score=normalise(raw, MMLU_PRO_CHOICES), raw=raw, stderr=stderr)
    if "leaderboard_ifeval" in results:
        inst, _ = _metric(results, "leaderboard_ifeval", "inst_level_strict_acc")
        prompt, stderr = _metric(results, "leaderboard_ifeval", "prompt_level_strict_acc")
        rows["IFEval"] = dict(score=(inst + prompt) / 2 * 100, raw=prompt, stderr=stderr)
    if "leaderboard_math_hard" in results:
        raw, stderr = _metric(results, "leaderboard_math_hard", "exact_match")
        rows["MATH"] = dict(score=raw * 100, raw=raw, stderr=stderr)
    for name, row in rows.items():
        if name in MODEL_CARD_RAW and "raw" in row:
            row["model_card_raw"] = MODEL_CARD_RAW[name]
            row["beyond_stderr"] = abs(row["raw"] - MODEL_CARD_RAW[name]) > row["stderr"]
    complete = len(rows) == len(MODEL_CARD_RAW)
    average = sum(r["score"] for r in rows.values()) / len(rows) if rows else math.nan
    return dict(benchmarks=rows, average=average, complete=complete)


def markdown(scores: dict) -> str:
    lines = ["| benchmark | normalised | raw | stderr | model card raw | differs beyond stderr |",
             "|---|---|---|---|---|---|"]
    for name, row in scores["benchmarks"].items():
        raw = f"{row['raw']:.3f}" if "raw" in row else ""
        stderr = f"{row['stderr']:.3f}" if "stderr" in row else ""
        card = f"{row['model_card_raw']:.3f}" if "model_card_raw" in row else ""
        flag = {True: "**yes**", False: "no"}.get(row.get("beyond_stderr"), "")
        lines.append(f"| {name} | {row['score']:.2f} | {raw} | {stderr} | {card} | {flag} |")
    note = "" if scores["complete"] else " (incomplete: not every benchmark ran)"
    lines.append(f"\nAverage of the normalised scores: **{scores['average']:.2f}**{note}")
    return "\n".join(lines) + "\n"


def write_report(scores: dict, output_dir: str | Path) -> tuple[Path, Path]:
    """leaderboard.md and leaderboard.json in `output_dir`."""
    from .lm_eval_model import write_report

    return write_report(output_dir, "leaderboard", "Open LLM Leaderboard v2", markdown(scores), scores)


def run(model: str, batch_size: str = "auto", dtype: str = "bfloat16", device: str = "cuda", kernels: str = "auto",
        limit: int | None = None) -> dict | None:
    """lm-eval's `leaderboard` group with the Leaderboard's settings for a base model (no chat template)."""
    from .lm_eval_model import evaluate

    return evaluate(model, ["leaderboard"], dtype, kernels, batch_size=batch_size, device=device, limit=limit,
                    apply_chat_template=False, fewshot_as_multiturn=False, log_samples=False)


def main(argv=None) -> None:
    from .lm_eval_model import add_run_arguments, default_device, evaluate_into

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint folder or Hub id to evaluate")
    source.add_argument("--from-results", help="an lm-eval results JSON to normalise (no evaluation)")
    parser.add_argument("--output-dir", type=folder_to_save_into, required=True)
    add_run_arguments(parser, batch_size="auto")
    args = parser.parse_args(argv)
    if args.from_results:
        try:
            results = json.loads(Path(args.from_results).read_text())
        except (OSError, ValueError) as error:
            parser.error(f"--from-results {args.from_results}: {error}")
        results = results.get("results", results) if isinstance(results, dict) else {}
    else:
        missing = [module for module in TASK_IMPORTS if importlib.util.find_spec(module) is None]
        if missing:  # lm-eval would find out after the model has loaded
            parser.error(f"the leaderboard's IFEval and MATH tasks need {', '.join(missing)}: "
                         "pip install 'xlstm_hf[eval]' (lm_eval[ifeval,math])")
        args.device = args.device or default_device(parser)
        results = evaluate_into(parser, args.output_dir, args.model, lambda: run(
            args.model, args.batch_size, args.dtype, args.device, args.kernels, args.limit))
        if results is None:  # not the first process under accelerate launch: that one reports
            return
    source = f"--from-results {args.from_results}" if args.from_results else f"the results of --model {args.model}"
    try:
        scores = leaderboard_scores(results)
    except (KeyError, TypeError, ValueError) as error:  # e.g. a task without the metric its score needs
        parser.error(f"{source}: {error}")
    if not scores["benchmarks"]:  # a report would show nothing but an average of nan
        parser.error(f"{source}: no leaderboard task there (tasks: {sorted(results) or 'none'})")
    md, _ = write_report(scores, args.output_dir)
    print(md.read_text())


if __name__ == "__main__":
    main()
