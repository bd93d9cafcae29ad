"""lm-eval with the `xlstm` model on local tasks (loglikelihood, multiple choice, generate_until), offline:
identical results at batch size 1 and 8 (where padding errors would show), and the command-line pass-through."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval")
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from helpers import make_tokenizer, tiny_model  # noqa: E402
from xlstm_hf.eval import RECURRENT_MAX_LENGTH, XLSTMLM  # noqa: E402

WORDS = "the way of word is what they said to him and you can see it".split()


def write_tasks(folder):
    docs = [dict(question=" ".join(WORDS[(i + j) % len(WORDS)] for j in range(3 + i % 9)),
                 choices=[WORDS[(i + k) % len(WORDS)] for k in range(4)], answer=i % 4) for i in range(24)]
    (folder / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'docs.jsonl'}\n"
              "test_split: test\ndoc_to_text: '{{question}}'\n")
    (folder / "mc.yaml").write_text(
        "task: xlstm_local_mc\n" + common + "output_type: multiple_choice\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    (folder / "ll.yaml").write_text(
        "task: xlstm_local_ll\n" + common + "output_type: loglikelihood\ndoc_to_target: ' {{choices[0]}}'\n"
        "metric_list:\n  - metric: perplexity\n  - metric: acc\n")
    (folder / "gen.yaml").write_text(
        "task: xlstm_local_gen\n" + common + "output_type: generate_until\ndoc_to_target: '{{choices[0]}}'\n"
        "generation_kwargs:\n  until: ['<eos>']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    model, tokenizer = tiny_model(), make_tokenizer()
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    (folder / "tasks").mkdir()
    return folder / "model", write_tasks(folder / "tasks")


def evaluate(model_path, tasks_dir, batch_size):
    return simple_evaluate(model="xlstm", model_args=f"pretrained={model_path},kernels=torch",
                           tasks=["xlstm_local_mc", "xlstm_local_ll", "xlstm_local_gen"], batch_size=batch_size,
                           task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True,
                           device="cpu")


def test_batch_size_one_and_eight_agree(setup):
    model_path, tasks_dir = setup
    one, eight = evaluate(model_path, tasks_dir, 1), evaluate(model_path, tasks_dir, 8)
    for task in ("xlstm_local_mc", "xlstm_local_ll", "xlstm_local_gen"):
        samples = {s["doc_id"]: s for s in one["samples"][task]}
        assert len(samples) == 24
        for other in eight["samples"][task]:
            mine = samples[other["doc_id"]]["resps"]
            if task == "xlstm_local_gen":
                assert mine == other["resps"]  # greedy continuations of left-padded batches: identical text
            else:
                for (a, _), (b, _) in zip([r[0] for r in mine], [r[0] for r in other["resps"]]):
                    assert abs(float(a) - float(b)) < 1e-4
        scores = [k for k, v in one["results"][task].items() if isinstance(v, float) and "stderr" not in k]
        assert scores and all(one["results"][task][k] == pytest.approx(eight["results"][task][k], abs=1e-4)
                              for k in scores)


def test_the_model_is_ours_with_a_long_context(setup):
    lm = XLSTMLM(pretrained=str(setup[0]), device="cpu")
    assert lm.max_length == RECURRENT_MAX_LENGTH


def test_cli_pass_through(setup, tmp_path):
    model_path, tasks_dir = setup
    run = subprocess.run([sys.executable, "-m", "xlstm_hf", "eval", "--tasks", "xlstm_local_mc", "--include_path",
                          str(tasks_dir), "--model_args", f"pretrained={model_path}", "--device", "cpu",
                          "--output_path", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "xlstm_local_mc" in run.stdout and list((tmp_path / "out").rglob("results*.json"))
