"""The model shipped with xlstm_hf (`xlstm_hf.default_model_path()`): complete, small, reproducible from its card,
and trained: held-out perplexity far below the uniform baseline, greedy completion of a standard-library idiom,
`xlstm-hf generate` without `--model`, and lm-eval on a local task built from the held-out files."""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import xlstm_hf
from xlstm_hf.stdlib_corpus import HELD_OUT_PERCENT, LOSS_PLOT, TRAINING_LOG, is_held_out, stdlib_files

MODEL = xlstm_hf.default_model_path()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def held_out():
    return stdlib_files("held_out")


def test_shipped_folder_is_complete_small_and_documented(model):
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md", LOSS_PLOT,
            TRAINING_LOG} <= {p.name for p in MODEL.iterdir()}
    weights = MODEL / "model.safetensors"
    assert weights.stat().st_size <= 31e6  # 24 MB, and the tied head once more for vanilla transformers
    with safe_open(weights, "pt") as handle:
        assert {handle.get_slice(name).get_dtype() for name in handle.keys()} == {"BF16"}
    params = sum(p.numel() for p in model.parameters())
    assert 10e6 <= params <= 12.5e6 and model.config.tie_word_embeddings
    log = json.loads((MODEL / TRAINING_LOG).read_text())
    card = (MODEL / "README.md").read_text()
    assert log["command"] in card and "--corpus stdlib" in log["command"] and f"({LOSS_PLOT})" in card
    assert f"{math.exp(log['held_out_loss']):.2f}" in card and f"{params:,}" in card


def test_held_out_split_is_a_fixed_hash_of_the_path(held_out):
    # The split must never move: a file held out once is held out on every Python.
    assert [is_held_out(p) for p in ("fnmatch.py", "pprint.py", "statistics.py", "asyncio/threads.py")] == [True] * 4
    assert not any(is_held_out(p) for p in ("os.py", "typing.py", "json/decoder.py", "collections/__init__.py"))
    train = stdlib_files("train")
    assert not held_out.keys() & train.keys() and not any("test" in p.split("/")[:-1] for p in train)
    assert HELD_OUT_PERCENT / 3 < 100 * len(held_out) / (len(held_out) + len(train)) < HELD_OUT_PERCENT * 2


def unigram_perplexity(tokenizer, ids: torch.Tensor) -> float:
    """Perplexity of `ids` (from the second position on, as the model's loss) under the training split's token
    frequencies (add-one smoothed): the baseline a model that ignores context reaches."""
    counts = torch.zeros(len(tokenizer), dtype=torch.float64)
    for encoded in tokenizer(list(stdlib_files("train").values()))["input_ids"]:
        counts += torch.bincount(torch.tensor(encoded, dtype=torch.long), minlength=len(tokenizer)).double()
    log_p = (counts + 1).log() - (counts.sum() + len(tokenizer)).log()
    return math.exp(-log_p[ids[:, 1:]].mean().item())


def test_held_out_perplexity_is_far_below_uniform_and_unigram(model, tokenizer, held_out):
    # The first 1024 tokens of the first four held-out files long enough: what the model never saw.
    encoded = [tokenizer(text)["input_ids"] for text in held_out.values()]
    ids = torch.tensor([e[:1024] for e in encoded if len(e) >= 1024][:4])
    assert len(ids) == 4 and tokenizer.decode(encoded[0]) == next(iter(held_out.values()))  # byte-level: exact
    with torch.no_grad():
        perplexity = math.exp(model(ids, labels=ids).loss.item())
    # Uniform guessing scores 8192, token frequencies alone about 1200; the trained model (52 when shipped, on
    # Python 3.11's copies of the held-out files) must use the context.
    assert perplexity < len(tokenizer) / 100 and perplexity < unigram_perplexity(tokenizer, ids) / 10, perplexity


def greedy(model, tokenizer, prompt: str, tokens: int = 12) -> str:
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])


def test_greedy_completion_of_the_main_guard(model, tokenizer):
    completion = greedy(model, tokenizer, 'if __name__ == "__main__":')
    assert completion.startswith("\n    ") and "main()" in completion, completion


@pytest.mark.parametrize("prompt", ["import os\nimport", "import sys\nimport", "try:\n    import"])
def test_greedy_import_names_a_standard_library_module(model, tokenizer, prompt):
    completion = greedy(model, tokenizer, prompt, tokens=4)
    assert completion.split()[0].split(".")[0] in sys.stdlib_module_names, completion


def test_cli_generate_defaults_to_the_shipped_model():
    run = subprocess.run([sys.executable, "-m", "xlstm_hf", "generate", "def fibonacci(n):", "--max-new-tokens", "16"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("def fibonacci(n):") and len(run.stdout.strip()) > len("def fibonacci(n):")
    assert "tokens/s" in run.stderr


def next_line_docs(held_out: dict[str, str], n: int = 40) -> list[dict]:
    """Multiple choice: after six lines of a held-out file, its real next line or one of three lines of similar
    length from other held-out files (chance: 25%)."""
    lines = {path: text.splitlines() for path, text in held_out.items()}
    candidates = [(path, i) for path, file_lines in lines.items() for i in range(6, len(file_lines))
                  if 16 <= len(file_lines[i].strip()) <= 60 and not file_lines[i].strip().startswith("#")]
    rng, docs = random.Random(0), []
    for path, i in candidates[:: len(candidates) // n][:n]:
        line = lines[path][i]
        others = [c for c in candidates if c[0] != path and 0.8 <= len(lines[c[0]][c[1]]) / len(line) <= 1.25]
        choices = [line] + [lines[p][j] for p, j in rng.sample(others, 3)]
        rng.shuffle(choices)
        docs.append(dict(context="\n".join(lines[path][i - 6: i]), choices=["\n" + c for c in choices],
                         answer=choices.index(line)))
    return docs


def test_lm_eval_picks_the_real_next_line_of_held_out_code(held_out, tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from xlstm_hf.eval.lm_eval_model import evaluate

    docs = next_line_docs(held_out)
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    (tmp_path / "next_line.yaml").write_text(
        "task: stdlib_next_line\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    results = evaluate(str(MODEL), ["stdlib_next_line"], dtype="float32", kernels="torch", batch_size=8,
                       device="cpu", task_manager=TaskManager(include_path=str(tmp_path)))["stdlib_next_line"]
    assert len(docs) == 40 and results["acc_norm,none"] >= 0.5, results  # chance: 0.25


def test_train_example_names_a_bad_corpus_argument(tmp_path):
    run = subprocess.run([sys.executable, "examples/train.py", "--corpus", "stdlib", "--eval-file", "x.txt",
                          "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert run.returncode == 2 and "--eval-file" in run.stderr and not (tmp_path / "out").exists()
