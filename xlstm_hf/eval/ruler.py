"""RULER with the `xlstm` model: lm-eval's `ruler` tasks over 4K to 128K tokens, beside the paper's xLSTM 7B averages.

    python -m xlstm_hf.eval.ruler --help
    python -m xlstm_hf.eval.ruler --model NX-AI/xLSTM-7b --output-dir ruler-out --essays essays.txt \\
        --squad dev-v2.0.json --hotpot hotpot_dev_distractor_v1.json

Prompts are synthesised with the model's own tokenizer at each length (passed to lm-eval as metadata). Six tasks
are synthetic and run offline; seven read data that lm-eval downloads (Paul Graham essays from the Hub for five
needle tasks, which also need NLTK's punkt_tab data; SQuAD and HotpotQA for the two QA tasks): give local copies of
those files, or they are skipped and the report says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from ..arguments import at_least, folder_to_save_into

LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072)
PAPER_AVERAGE = {4096: 54.4, 8192: 42.9, 16384: 30.4, 32768: 18.5, 65536: 12.6, 131072: 11.4}  # xLSTM 7B, %
OFFLINE_TASKS = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt", "ruler_cwe", "ruler_fwe")
ESSAY_TASKS = ("niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue", "niah_multiquery")
QA_TASKS = {"ruler_qa_squad": "squad", "ruler_qa_hotpot": "hotpot"}


def select_tasks(essays: str | None = None, squad: str | None = None, hotpot: str | None = None):
    """The tasks that can run with these local files, and {skipped task: why}."""
    tasks, skipped = list(OFFLINE_TASKS), {}
    for task in ESSAY_TASKS:
        if essays:
            tasks.append(task)
        else:
            skipped[task] = ("needs the Paul Graham essays (Hub dataset baber/paul_graham_essays): pass --essays "
                             "(and NLTK's punkt_tab data, which lm-eval's synthesis also loads)")
    for task, name in QA_TASKS.items():
        if {"squad": squad, "hotpot": hotpot}[name]:
            tasks.append(task)
        else:
            skipped[task] = f"needs the {name} dev JSON (downloaded by lm-eval): pass --{name}"
    return tasks, skipped


# Where lm-eval's RULER tasks fetch their data: the essays through `datasets.load_dataset`, the QA sets through
# `requests.get` of these URLs' files.
ESSAYS_DATASET = "baber/paul_graham_essays"
QA_FILES = {"squad": "dev-v2.0.json", "hotpot": "hotpot_dev_distractor_v1.json"}


@contextlib.contextmanager
def local_files(essays: str | None = None, squad: str | None = None, hotpot: str | None = None):
    """Serve lm-eval's RULER downloads from local copies: essays as one text file (or .jsonl with "text"), the QA
    sets as the JSON files lm-eval would fetch. Served where the download happens (`datasets.load_dataset`,
    `requests.get`): lm-eval's task loader executes its task modules anew, so their own functions cannot be patched.
    lm-eval caches what its RULER functions read; the caches are cleared on entry and exit, so that each use reads
    its own files."""
    import datasets
    import requests

    original_load, original_get = datasets.load_dataset, requests.get
    local = {"squad": squad, "hotpot": hotpot}

    def load_dataset(path, *args, **kwargs):
        if path != ESSAYS_DATASET:
            return original_load(path, *args, **kwargs)
        if not essays:
            raise RuntimeError(f"no local copy of the {ESSAYS_DATASET} essays (--essays)")
        from ..training import read_texts

        return {"text": read_texts([essays])}

    def get(url, *args, **kwargs):
        name = next((name for name, file in QA_FILES.items() if str(url).endswith(file)), None)
        if name is None:
            return original_get(url, *args, **kwargs)
        if not local[name]:
            raise RuntimeError(f"no local copy of {url} (--{name})")
        data = json.loads(Path(local[name]).read_text(encoding="utf-8"))
        return SimpleNamespace(raise_for_status=lambda: None, json=lambda: data)

    clear_ruler_caches()
    datasets.load_dataset, requests.get = load_dataset, get
    try:
        yield
    finally:
        datasets.load_dataset, requests.get = original_load, original_get
        clear_ruler_caches()


def clear_ruler_caches() -> None:
    """Empty the caches (`functools.cache`) of lm-eval's RULER task modules, which hold the data they read."""
    for name, module in list(sys.modules.items()):
        if name.startswith("lm_eval.tasks.ruler."):
            for value in list(vars(module).values()):
                if callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()


def ruler_report(results: dict, lengths=LENGTHS, skipped: dict | None = None) -> dict:
    """Per task and length accuracy (%) from lm-eval's `results["results"]`, the average per length, the paper's."""
    per_task = {}
    for task, metrics in results.items():
        # lm-eval reports -1 for a length none of whose samples ran (e.g. with --limit); nan is dropped too.
        scores = {int(k.split(",")[0]): float(v) * 100 for k, v in metrics.items()
                  if k.split(",")[0].isdigit() and isinstance(v, (int, float)) and float(v) >= 0}
        if scores and task != "ruler":
            per_task[task] = scores
    average = {n: sum(s[n] for s in per_task.values() if n in s) / sum(n in s for s in per_task.values())
               for n in lengths if any(n in s for s in per_task.values())}
    paper_average = {n: PAPER_AVERAGE[n] for n in average if n in PAPER_AVERAGE}  # the paper ran six lengths
    not_run = [n for n in lengths if n not in average]
    return dict(tasks=per_task, average=average, paper_average=paper_average, skipped=skipped or {},
                lengths_not_run=not_run, complete=not skipped and not not_run)


def markdown(report: dict) -> str:
    lengths = list(report["average"])
    head = "| task | " + " | ".join(f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in lengths) + " |"
    lines = [head, "|---|" + "---|" * len(lengths)]
    for task, scores in sorted(report["tasks"].items()):
        lines.append(f"| {task} | " + " | ".join(f"{scores[n]:.1f}" if n in scores else "" for n in lengths) + " |")
    lines.append("| **average** | " + " | ".join(f"**{report['average'][n]:.1f}**" for n in lengths) + " |")
    paper = report["paper_average"]
    lines.append("| paper (xLSTM 7B) | " + " | ".join(f"{paper[n]:.1f}" if n in paper else "-" for n in lengths) + " |")
    if report["skipped"]:
        lines.append("\nSkipped (the average covers only the tasks above, so it is not the paper's 13-task mean):")
        lines += [f"- {task}: {why}" for task, why in report["skipped"].items()]
    if report.get("lengths_not_run"):
        lines.append("\nNot run (no sample of these lengths: lm-eval's --limit N takes each task's first N samples, "
                     "which are all of the first length): " + ", ".join(map(str, report["lengths_not_run"])))
    return "\n".join(lines) + "\n"


def write_report(report: dict, output_dir: str | Path) -> tuple[Path, Path]:
    """ruler.md and ruler.json in `output_dir`."""
    from .lm_eval_model import write_report

    return write_report(output_dir, "ruler", "RULER", markdown(report), report)


def run(model: str, tasks: list[str], lengths=LENGTHS, batch_size: str = "1", dtype: str = "bfloat16",
        device: str = "cuda", kernels: str = "auto", limit: int | None = None) -> dict | None:
    """lm-eval on `tasks`, prompts synthesised at `lengths` with the model's tokenizer."""
    from .lm_eval_model import evaluate

    return evaluate(model, tasks, dtype, kernels, batch_size=batch_size, device=device, limit=limit,
                    metadata={"max_seq_lengths": list(lengths), "tokenizer": model})


def existing_file(text: str) -> str:
    """An argparse type: the path of a file that exists (checked before the model loads)."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


# Below ~1K tokens lm-eval's variable-tracking generator (ruler_vt) cannot fit its example and loops forever.
MIN_LENGTH = 1024


def main(argv=None) -> None:
    from .lm_eval_model import add_run_arguments, default_device, evaluate_into

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id (its tokenizer sizes prompts)")
    parser.add_argument("--output-dir", type=folder_to_save_into, required=True)
    parser.add_argument("--lengths", type=at_least(MIN_LENGTH), nargs="+", default=list(LENGTHS),
                        help=f"prompt lengths in tokens, at least {MIN_LENGTH}: below, lm-eval's ruler_vt synthesis "
                        "never ends (default: the paper's, 4K to 128K)")
    parser.add_argument("--essays", type=existing_file,
                        help="local Paul Graham essays (text, or .jsonl with a 'text' field)")
    parser.add_argument("--squad", type=existing_file, help=f"local SQuAD v2 dev JSON ({QA_FILES['squad']})")
    parser.add_argument("--hotpot", type=existing_file,
                        help=f"local HotpotQA dev (distractor) JSON ({QA_FILES['hotpot']})")
    add_run_arguments(parser, batch_size="1")
    args = parser.parse_args(argv)
    tasks, skipped = select_tasks(args.essays, args.squad, args.hotpot)
    with local_files(args.essays, args.squad, args.hotpot):
        args.device = args.device or default_device(parser)
        results = evaluate_into(parser, args.output_dir, args.model, lambda: run(
            args.model, tasks, args.lengths, args.batch_size, args.dtype, args.device, args.kernels, args.limit))
    if results is None:  # not the first process under accelerate launch: that one reports
        return
    md, _ = write_report(ruler_report(results, args.lengths, skipped), args.output_dir)
    print(md.read_text())


if __name__ == "__main__":
    main()
