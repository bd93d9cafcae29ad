"""lm-eval with the `xlstm` model on local tasks (loglikelihood, multiple choice, generate_until), offline:
identical results at batch size 1 and 8 (where padding errors would show), and the command-line pass-through."""

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("lm_eval")
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from helpers import copy_forcing_bos, make_tokenizer, tiny_model  # noqa: E402
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


def test_bos_token_as_the_checkpoint_asks(setup, tmp_path):
    """NX-AI's config has force_bos_token_insert: true and its tokenizer adds no BOS; lm-eval follows the tokenizer,
    so every request would be scored without the token the model was trained to see first."""
    import torch
    from lm_eval.api.instance import Instance

    model_path, _ = setup
    forced = copy_forcing_bos(model_path, tmp_path / "forced")
    tokenizer, model = make_tokenizer(), tiny_model()
    context, continuation = "the way of", " word is"
    plain = tokenizer(context + continuation)["input_ids"]
    assert plain[0] != tokenizer.bos_token_id  # the tokenizer alone adds none

    lm = XLSTMLM(pretrained=str(forced), device="cpu", kernels="torch")
    assert lm.tok_encode(context + continuation) == [tokenizer.bos_token_id] + plain
    assert lm.tok_batch_encode([context])[0][0].tolist() == [tokenizer.bos_token_id] + tokenizer(context)["input_ids"]
    request = Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=0)
    (score, _), = lm.loglikelihood([request])
    ids = torch.tensor([[tokenizer.bos_token_id] + plain])
    with torch.no_grad():
        logprobs = model(ids).logits.double().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
    assert score == pytest.approx(logprobs[-len(tokenizer(continuation)["input_ids"]):].sum().item(), abs=1e-4)
    # lm-eval conditions a rolling loglikelihood on the BOS token itself: the text's tokens follow it once.
    rolling = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(context + continuation,), idx=0)
    assert lm.loglikelihood_rolling([rolling]) == [pytest.approx(logprobs.sum().item(), abs=1e-4)]
    assert lm.add_bos_token

    assert XLSTMLM(pretrained=str(forced), device="cpu", add_bos_token=False).tok_encode(context) == \
        tokenizer(context)["input_ids"]
    assert XLSTMLM(pretrained=str(model_path), device="cpu").tok_encode(context) == tokenizer(context)["input_ids"]


def test_cli_pass_through(setup, tmp_path):
    model_path, tasks_dir = setup
    run = subprocess.run([sys.executable, "-m", "xlstm_hf", "eval", "--tasks", "xlstm_local_mc", "--include_path",
                          str(tasks_dir), "--model_args", f"pretrained={model_path}", "--device", "cpu",
                          "--output_path", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "xlstm_local_mc" in run.stdout and list((tmp_path / "out").rglob("results*.json"))


def test_leaderboard_normalisation_on_known_inputs(tmp_path):
    from xlstm_hf.eval.leaderboard import bbh_choices, leaderboard_scores, normalise, write_report

    bbh = bbh_choices()
    assert len(bbh) == 24 and bbh["leaderboard_bbh_geometric_shapes"] == 11 and bbh["leaderboard_bbh_navigate"] == 2
    assert normalise(0.6, 4) == pytest.approx(46.6667, abs=1e-3)  # the Leaderboard's own GPQA example
    assert normalise(0.2, 4) == 0.0
    results = {
        "leaderboard_gpqa": {"acc_norm,none": 0.6, "acc_norm_stderr,none": 0.01},
        "leaderboard_mmlu_pro": {"acc,none": 0.242, "acc_stderr,none": 0.004},
        "leaderboard_musr_murder_mysteries": {"acc_norm,none": 0.7},
        "leaderboard_musr_object_placements": {"acc_norm,none": 0.4},
        "leaderboard_musr_team_allocation": {"acc_norm,none": 0.6},
        "leaderboard_musr": {"acc_norm,none": 0.379, "acc_norm_stderr,none": 0.017},
        "leaderboard_ifeval": {"inst_level_strict_acc,none": 0.3, "prompt_level_strict_acc,none": 0.2,
                               "prompt_level_strict_acc_stderr,none": 0.017},
        "leaderboard_math_hard": {"exact_match,none": 0.036, "exact_match_stderr,none": 0.005},
        "leaderboard_bbh_navigate": {"acc_norm,none": 0.75},  # 2 choices: 50
        "leaderboard_bbh_geometric_shapes": {"acc_norm,none": 1 / 11},  # at chance: 0
        "leaderboard_bbh": {"acc_norm,none": 0.30, "acc_norm_stderr,none": 0.006},
    }
    scores = leaderboard_scores(results, bbh)
    rows = scores["benchmarks"]
    assert rows["GPQA"]["score"] == pytest.approx(46.6667, abs=1e-3)
    assert rows["MMLU-Pro"]["score"] == pytest.approx((0.242 - 0.1) / 0.9 * 100)
    # MuSR: the Leaderboard's example subtasks 0.7 / 0.4 / 0.6 give 40, 25 and 40, averaged.
    assert rows["MuSR"]["score"] == pytest.approx((40 + 25 + 40) / 3, abs=1e-2)
    assert rows["IFEval"]["score"] == pytest.approx(25.0)
    assert rows["MATH"]["score"] == pytest.approx(3.6)
    assert rows["BBH"]["score"] == pytest.approx(25.0)
    assert scores["average"] == pytest.approx(sum(r["score"] for r in rows.values()) / 6) and scores["complete"]
    assert rows["MMLU-Pro"]["beyond_stderr"] is False and rows["BBH"]["beyond_stderr"] is True  # 0.30 vs 0.381
    md, js = write_report(scores, tmp_path / "report")
    assert "| BBH | 25.00 | 0.300 | 0.006 | 0.381 | **yes** |" in md.read_text()
    assert json.loads(js.read_text())["benchmarks"]["GPQA"]["score"] == pytest.approx(46.6667, abs=1e-3)
    from xlstm_hf.eval.leaderboard import main

    (tmp_path / "results.json").write_text(json.dumps({"results": results}))
    main(["--from-results", str(tmp_path / "results.json"), "--output-dir", str(tmp_path / "cli")])
    assert (tmp_path / "cli" / "leaderboard.md").read_text() == md.read_text()


def test_ruler_task_selection_and_report(tmp_path):
    from xlstm_hf.eval.ruler import OFFLINE_TASKS, ruler_report, select_tasks, write_report

    tasks, skipped = select_tasks()
    assert tasks == list(OFFLINE_TASKS) and len(skipped) == 7
    assert "--essays" in skipped["niah_single_2"] and "--squad" in skipped["ruler_qa_squad"]
    tasks, skipped = select_tasks(essays="e.txt", squad="s.json", hotpot="h.json")
    assert len(tasks) == 13 and not skipped
    results = {"niah_single_1": {"4096,none": 0.9, "4096_stderr,none": "N/A", "8192,none": 0.5},
               "ruler_vt": {"4096,none": 0.3, "8192,none": 0.1}, "ruler": {"4096,none": 0.6}}
    report = ruler_report(results, lengths=(4096, 8192), skipped=select_tasks()[1])
    assert report["average"] == pytest.approx({4096: 60.0, 8192: 30.0})
    assert report["paper_average"] == {4096: 54.4, 8192: 42.9} and not report["complete"]
    md, js = write_report(report, tmp_path)
    text = md.read_text()
    assert "| **average** | **60.0** | **30.0** |" in text and "| paper (xLSTM 7B) | 54.4 | 42.9 |" in text
    assert "niah_single_2: needs the Paul Graham essays" in text and json.loads(js.read_text())["tasks"]


def test_ruler_prompts_synthesised_offline_with_the_models_tokenizer(setup, tmp_path):
    from lm_eval.tasks.ruler import niah_utils

    from xlstm_hf.eval.ruler import local_files

    tokenizer_path = str(setup[0])
    synthetic = niah_utils.niah_single_1(max_seq_lengths=[256], pretrained=tokenizer_path)["test"]
    tokenizer = make_tokenizer()
    assert all(len(tokenizer(s["input"])["input_ids"]) <= 256 for s in synthetic.select(range(20)))
    assert all(str(s["outputs"][0]) in s["input"] for s in synthetic.select(range(20)))  # the needle is there
    # The essay tasks read the local copy (their synthesis also needs NLTK's punkt_tab data, a download).
    (tmp_path / "essays.txt").write_text(" ".join(WORDS * 200))
    with local_files(essays=str(tmp_path / "essays.txt")):
        assert niah_utils.get_haystack(type_haystack="essay")[:4] == ["the", "way", "of", "word"]
    assert niah_utils.get_haystack(type_haystack="repeat").startswith("The grass is green")


def test_ruler_tasks_built_by_lm_eval_read_the_local_files_each_time(setup, tmp_path, monkeypatch):
    """lm-eval's task loader executes its RULER modules anew: patching their functions served nothing (the QA tasks
    went to the network), and a second call's essays were the first call's."""
    import re

    import requests
    from lm_eval.tasks.ruler import prepare_niah

    from xlstm_hf.eval.ruler import local_files

    def no_network(url, *args, **kwargs):
        raise requests.ConnectionError(f"fetched {url}")

    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.setattr(prepare_niah, "sent_tokenize", lambda text: re.split(r"(?<=\.) ", text))  # NLTK's: a download
    paragraphs = [{"context": f"{WORDS[i % len(WORDS)]} is paragraph {i}.", "qas": [
        {"question": f"which is {i}?", "is_impossible": False, "answers": [{"text": str(i)}]}]} for i in range(600)]
    squad = {"data": [{"paragraphs": [paragraph]} for paragraph in paragraphs]}
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    for marker, other in (("ALPHA", "BRAVO"), ("BRAVO", "ALPHA")):
        (tmp_path / f"{marker}.txt").write_text(" ".join(f"{marker} the way of word is what they said." for _ in
                                                         range(400)))
        with local_files(essays=str(tmp_path / f"{marker}.txt"), squad=str(tmp_path / "squad.json")):
            tasks = TaskManager(metadata={"max_seq_lengths": [256], "tokenizer": str(setup[0])}).load(
                ["niah_single_2", "ruler_qa_squad"])["tasks"]
        essay_prompt = tasks["niah_single_2"].dataset["test"][0]["input"]
        assert marker in essay_prompt and other not in essay_prompt
        assert "is paragraph" in tasks["ruler_qa_squad"].dataset["test"][0]["input"]


def test_ruler_lengths_the_paper_did_not_run(tmp_path, monkeypatch):
    from xlstm_hf.eval import ruler

    # lm-eval's -1: a length none of whose samples ran (with --limit), which is not a score of -100 %.
    results = {"niah_single_1": {"1024,none": 0.5, "4096,none": 0.25}, "ruler_vt": {"1024,none": 0.7, "4096,none": -1}}
    monkeypatch.setattr(ruler, "run", lambda *args, **kwargs: results)  # lm-eval's results, without the hours
    ruler.main(["--model", "m", "--output-dir", str(tmp_path), "--lengths", "1024", "4096", "--device", "cpu"])
    text = (tmp_path / "ruler.md").read_text()
    assert "| **average** | **60.0** | **25.0** |" in text and "| paper (xLSTM 7B) | - | 54.4 |" in text
    assert json.loads((tmp_path / "lm_eval_results.json").read_text()) == results  # kept, as the leaderboard's
    # A length none of whose samples ran (lm-eval's --limit takes the first length's) is named, not silently dropped.
    results = {"niah_single_1": {"1024,none": 0.5, "4096,none": -1}}
    ruler.main(["--model", "m", "--output-dir", str(tmp_path), "--lengths", "1024", "4096", "--device", "cpu"])
    assert "Not run (no sample of these lengths" in (tmp_path / "ruler.md").read_text()
    assert json.loads((tmp_path / "ruler.json").read_text())["lengths_not_run"] == [4096]


def test_leaderboard_results_file_that_is_missing_broken_or_empty(tmp_path, capsys):
    from xlstm_hf.eval.leaderboard import main

    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "empty.json").write_text(json.dumps({"results": {}}))
    for name in ("missing.json", "broken.json", "empty.json"):
        with pytest.raises(SystemExit) as exited:
            main(["--from-results", str(tmp_path / name), "--output-dir", str(tmp_path / "report")])
        assert exited.value.code == 2 and f"--from-results {tmp_path / name}:" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()  # no report of nothing, with an average of nan


def test_cli_pass_through_names_a_model_that_cannot_be_loaded(setup, tmp_path):
    run = subprocess.run([sys.executable, "-m", "xlstm_hf", "eval", "--tasks", "xlstm_local_mc", "--include_path",
                          str(setup[1]), "--model_args", f"pretrained={tmp_path / 'missing'}", "--device", "cpu"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"pretrained={tmp_path / 'missing'}:" in run.stderr


def test_auto_batch_size_probes_rows_as_long_as_the_requests(setup, monkeypatch):
    """lm-eval's batch-size search for generate_until (and rolling loglikelihood) tries rows of max_length tokens:
    2**20 for a recurrent model, where no batch fits. Ours tries the longest request (prompt + generated tokens)."""
    model_path, tasks_dir = setup
    rows = []
    call = XLSTMLM._model_call

    def spy(self, inputs, *args, **kwargs):
        rows.append(inputs.shape[1])
        if inputs.shape[1] > 10_000:  # stands in for the out-of-memory error such a row would give
            raise RuntimeError("CUDA out of memory (simulated)")
        return call(self, inputs, *args, **kwargs)

    monkeypatch.setattr(XLSTMLM, "_model_call", spy)
    out = simple_evaluate(model="xlstm", model_args=f"pretrained={model_path},kernels=torch,max_batch_size=4",
                          tasks=["xlstm_local_gen"], batch_size="auto", limit=4, device="cpu",
                          task_manager=TaskManager(include_path=str(tasks_dir)))
    assert out["results"]["xlstm_local_gen"] and rows
    assert max(rows) <= 64, rows  # questions of at most 11 words, 6 generated tokens


def test_lm_eval_subcommands_reach_lm_eval_with_our_model(monkeypatch, tmp_path):
    from lm_eval._cli.harness import HarnessCLI

    from xlstm_hf.eval import run_lm_eval_cli

    seen = []
    monkeypatch.setattr(HarnessCLI, "execute", lambda self, args: seen.append(args))
    cases = ((["--tasks", "t"], "run", "xlstm"), (["run", "--tasks", "t"], "run", "xlstm"),
             (["run", "--model", "hf", "--tasks", "t"], "run", "hf"), (["ls", "tasks"], "ls", None))
    for argv, command, model in cases:
        run_lm_eval_cli(argv)
        assert seen[-1].command == command and getattr(seen[-1], "model", None) == model, argv
    # A --config file that names its model keeps it (an injected --model would override it: command-line values win
    # in lm-eval); one that names none gets ours, not lm-eval's default hf (transformers' own xLSTM).
    from lm_eval.config.evaluate_config import EvaluatorConfig

    (tmp_path / "hf.yaml").write_text("model: hf\ntasks: [t]\n")
    (tmp_path / "none.yaml").write_text("tasks: [t]\nbatch_size: 8\n")
    for argv, model in ((["--config", "hf.yaml"], "hf"), (["-C", "hf.yaml"], "hf"), (["--config=none.yaml"], "xlstm"),
                        (["run", "-C", "none.yaml"], "xlstm"), (["-M", "hf", "-C", "none.yaml"], "hf")):
        run_lm_eval_cli([arg.replace("=", f"={tmp_path}/") if arg.startswith("--config=") else
                         str(tmp_path / arg) if arg.endswith(".yaml") else arg for arg in argv])
        assert EvaluatorConfig.from_cli(seen[-1]).model == model, argv
    monkeypatch.setattr(sys, "argv", [])
    run_lm_eval_cli(["run", "--config", str(tmp_path / "missing.yaml")])  # lm-eval's to report
    assert "xlstm" not in sys.argv


def test_generation_length_under_any_of_lm_evals_names_sizes_auto_batches(setup, monkeypatch):
    from types import SimpleNamespace

    from lm_eval.models.huggingface import HFLM

    monkeypatch.setattr(HFLM, "generate_until", lambda self, requests, disable_tqdm=False: [])
    lm = XLSTMLM(pretrained=str(setup[0]), device="cpu", kernels="torch", batch_size="auto")
    prompt = " ".join(WORDS[:10])
    for name in ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens"):
        lm.generate_until([SimpleNamespace(args=(prompt, {name: 600}))])
        assert lm._longest_request == len(lm.tok_encode(prompt)) + 600, name  # max_new_tokens: the default 256


def test_runner_evaluates_a_checkpoint_whose_path_has_a_comma(setup, tmp_path):
    import shutil

    from xlstm_hf.eval.lm_eval_model import evaluate

    model_path, tasks_dir = setup
    shutil.copytree(model_path, tmp_path / "a,b")  # lm-eval's "k=v,k=v" model_args split it at the comma
    results = evaluate(str(tmp_path / "a,b"), ["xlstm_local_ll"], dtype="float32", kernels="torch", device="cpu",
                       limit=2, task_manager=TaskManager(include_path=str(tasks_dir)))
    assert results["xlstm_local_ll"]


def test_a_peft_adapter_through_lm_eval(setup, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model_path, _ = setup
    adapter = get_peft_model(tiny_model(), LoraConfig(r=4, target_modules=["q", "v"]))
    adapter.save_pretrained(tmp_path / "lora")
    lm = XLSTMLM(pretrained=str(model_path), peft=str(tmp_path / "lora"), device="cpu", kernels="torch")
    assert isinstance(lm.model, PeftModel) and lm.max_length == RECURRENT_MAX_LENGTH
    assert lm.loglikelihood([Instance("loglikelihood", {}, ("the way", " of"), 0)])[0][0] == pytest.approx(
        expected_loglikelihood(adapter, make_tokenizer(), "the way", " of"), abs=1e-4)


def expected_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """The continuation's log-probability after the context, from the model's own logits (float64)."""
    context_ids, ids = tokenizer(context)["input_ids"], tokenizer(context + continuation)["input_ids"]
    ids = torch.tensor([ids])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits.double().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
    return logprobs[len(context_ids) - 1:].sum().item()


def test_a_checkpoint_of_another_model_is_refused_before_its_weights_load(setup, tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    from xlstm_hf.eval.lm_eval_model import CheckpointNotLoaded

    gpt2 = make_gpt2(tmp_path / "gpt2")
    with monkeypatch.context() as patched:
        patched.setattr(HFLM, "__init__", lambda *args, **kwargs: pytest.fail("loaded"))
        with pytest.raises(CheckpointNotLoaded, match="'gpt2' checkpoint, not an xLSTM one"):
            XLSTMLM(pretrained=str(gpt2), device="cpu")
    run = subprocess.run([sys.executable, "-m", "xlstm_hf", "eval", "--tasks", "xlstm_local_mc", "--include_path",
                          str(setup[1]), "--model_args", f"pretrained={gpt2}", "--device", "cpu"],
                         capture_output=True, text=True, timeout=600)  # was a TypeError traceback
    assert run.returncode == 2 and "Traceback" not in run.stderr and "'gpt2' checkpoint" in run.stderr, run.stderr
    with pytest.raises(ValueError, match="backend='seq2seq'"):
        XLSTMLM(pretrained=str(setup[0]), device="cpu", backend="seq2seq")
    lm = XLSTMLM(pretrained=str(setup[0]), device="cpu", backend="causal")  # HFLM's own argument, also --model hf's
    assert lm.loglikelihood([Instance("loglikelihood", {}, ("the way", " of"), 0)])[0][0] == pytest.approx(
        expected_loglikelihood(tiny_model(), make_tokenizer(), "the way", " of"), abs=1e-4)


def test_an_xlstm_stack_checkpoint_is_evaluated(tmp_path):
    from test_xlstm_stack import tiny_stack

    model = tiny_stack()
    model.save_pretrained(tmp_path / "stack")
    make_tokenizer().save_pretrained(tmp_path / "stack")
    lm = XLSTMLM(pretrained=str(tmp_path / "stack"), device="cpu", dtype="float32")
    assert lm.max_length == RECURRENT_MAX_LENGTH
    assert lm.loglikelihood([Instance("loglikelihood", {}, ("the way", " of word"), 0)])[0][0] == pytest.approx(
        expected_loglikelihood(model, make_tokenizer(), "the way", " of word"), abs=1e-4)


def make_gpt2(folder):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=101)).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("runner", ["leaderboard", "ruler"])
def test_runners_check_their_arguments_before_evaluating(runner, tmp_path, monkeypatch, capsys):
    """A finished evaluation used to meet an --output-dir that could not be a folder only at the end, its results
    lost; a --model that does not load was a traceback naming lm-eval's pretrained=."""
    import importlib

    module = importlib.import_module(f"xlstm_hf.eval.{runner}")
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(module, "run", lambda *args, **kwargs: pytest.fail("evaluated"))
    with pytest.raises(SystemExit) as exited:
        module.main(["--model", "m", "--output-dir", str(tmp_path / "a_file"), "--device", "cpu"])
    assert exited.value.code == 2 and f"--output-dir: {tmp_path / 'a_file'} is a file" in capsys.readouterr().err
    # Tracebacks from inside lm-eval, after the model had loaded; a RULER length whose synthesis never ends.
    bad = [("--batch-size", "foo"), ("--batch-size", "auto:0"), ("--dtype", "foo")]
    bad += [("--lengths", "512"), ("--essays", str(tmp_path / "no.txt")), ("--squad", str(tmp_path))] \
        if runner == "ruler" else []
    bad += [("--device", "cuda")] if not torch.cuda.is_available() else []  # the default: a traceback in lm-eval
    for option, value in bad:
        with pytest.raises(SystemExit) as exited:
            module.main(["--model", "m", "--output-dir", str(tmp_path / "out"), option, value])
        assert exited.value.code == 2 and f"argument {option}" in capsys.readouterr().err
    if not torch.cuda.is_available():  # the default device, cuda, was an AssertionError inside transformers
        with pytest.raises(SystemExit) as exited:
            module.main(["--model", "m", "--output-dir", str(tmp_path / "out")])
        assert exited.value.code == 2 and "--device defaults to cuda" in capsys.readouterr().err
    monkeypatch.undo()
    with pytest.raises(SystemExit) as exited:  # the real evaluation: lm-eval loads the model first
        module.main(["--model", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "out"), "--device", "cpu"])
    assert exited.value.code == 2 and f"--model {tmp_path / 'missing'}:" in capsys.readouterr().err


def test_leaderboard_names_what_its_tasks_import_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import importlib.util

    from xlstm_hf.eval import leaderboard

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "langdetect" else
                        find_spec(name, *args))
    monkeypatch.setattr(leaderboard, "run", lambda *args, **kwargs: pytest.fail("evaluated"))
    with pytest.raises(SystemExit) as exited:
        leaderboard.main(["--model", "m", "--output-dir", str(tmp_path / "out"), "--device", "cpu"])
    assert exited.value.code == 2 and "need langdetect" in capsys.readouterr().err
    monkeypatch.undo()
    assert all(find_spec(module) for module in leaderboard.TASK_IMPORTS)  # what `pip install xlstm_hf[eval]` gives


@pytest.mark.parametrize("runner", ["leaderboard", "ruler"])
def test_runners_in_a_process_that_gets_no_results(runner, setup, tmp_path, monkeypatch, capsys):
    """Under `accelerate launch`, lm-eval's simple_evaluate returns None in every process but the first: those
    processes end quietly, writing nothing, where they failed indexing None (a failed launch)."""
    import importlib

    import lm_eval

    module = importlib.import_module(f"xlstm_hf.eval.{runner}")
    seen = []
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kwargs: seen.append(kwargs["tasks"]))
    module.main(["--model", str(setup[0]), "--output-dir", str(tmp_path / "out"), "--device", "cpu"])
    assert seen and not (tmp_path / "out").exists()
    assert "|" not in capsys.readouterr().out  # no report (a markdown table)
