"""Hub repository files and upload operations, the remote-code bundle, checkpoint conversion, and the CLI."""

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError
from transformers import AutoModelForCausalLM, AutoTokenizer, xLSTMConfig

from helpers import copy_forcing_bos, make_tokenizer, random_ids, tiny_config, tiny_model
from test_checkpoints import write_nxai_checkpoint
from xlstm_hf import XLSTMConfig, XLSTMForCausalLM
from xlstm_hf.cli import main as cli_main
from xlstm_hf.conversion import convert_checkpoint, convert_weight_mode
from xlstm_hf.hub import model_card, push_to_hub, save_for_hub
from xlstm_hf.remote_code import export_remote_code


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_save_for_hub_writes_a_complete_repository(tmp_path):
    model, tokenizer = tiny_model(), make_tokenizer()
    folder = save_for_hub(model, tmp_path / "repo", tokenizer, repo_id="me/tiny-xlstm", base_model="NX-AI/xLSTM-7b",
                          max_shard_size="100KB")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "README.md",
            "tokenizer.json", "tokenizer_config.json"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1
    xLSTMConfig.from_pretrained(folder)  # vanilla transformers' strict validation
    card = (folder / "README.md").read_text()
    metadata = ModelCard(card).data  # huggingface_hub's own YAML reading
    assert metadata.library_name == "transformers" and metadata.pipeline_tag == "text-generation"
    assert "xlstm" in metadata.tags and metadata.base_model == ["NX-AI/xLSTM-7b"]
    odd = ["license: mit", "[experimental]", "#1", "yes", "3.5"]  # a mapping, a list, null, a bool, a number
    assert ModelCard(model_card(model, tags=odd)).data.tags[-5:] == odd
    assert 'from_pretrained("me/tiny-xlstm")' in card and "kernels" in card
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(folder), random_ids(1, 5)),
                       logits(model, random_ids(1, 5)))


class FakeApi:
    """Stands in for huggingface_hub's HfApi, recording in `calls` what would go over the network."""

    calls: dict = {}

    def __init__(self, token=None):
        self.calls["token"] = token

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.calls["repo"] = (repo_id, private, exist_ok)
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"me/{repo_id}")  # as the Hub answers

    def create_branch(self, repo_id, branch, exist_ok=False):
        self.calls["branch"] = (repo_id, branch, exist_ok)
        if branch == "theirs":  # a branch of a repository one may only open pull requests to
            raise HfHubHTTPError("403 Forbidden", response=SimpleNamespace(status_code=403, headers={}, request=None))

    def create_commit(self, repo_id, operations, commit_message, **options):
        self.calls["commit_repo"] = repo_id
        self.calls["paths"] = sorted(op.path_in_repo for op in operations)
        self.calls["sizes"] = {op.path_in_repo: os.path.getsize(op.path_or_fileobj) for op in operations}
        self.calls["card"] = next(open(op.path_or_fileobj).read() for op in operations
                                  if op.path_in_repo == "README.md")
        self.calls["commit"] = dict(message=commit_message, **options)
        return "commit-info"


def test_push_to_hub_hands_every_file_to_one_commit(tmp_path, monkeypatch):
    calls = FakeApi.calls = {}
    result = push_to_hub(tiny_model(), "me/tiny", make_tokenizer(), private=True, api=FakeApi())
    assert result == "commit-info" and calls["repo"] == ("me/tiny", True, True) and "branch" not in calls
    assert calls["commit"] == dict(message="Upload xLSTM", commit_description=None, revision=None, create_pr=False)
    paths = calls["paths"]
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md", "tokenizer.json"} <= set(paths)
    assert all(size > 0 for size in calls["sizes"].values())
    # The model's own push_to_hub uploads the same repository, with transformers' keywords.
    options = dict(commit_message="m", commit_description="d", revision="dev", create_pr=True, tags=["mine"])
    assert tiny_model().push_to_hub("me/tiny", tokenizer=make_tokenizer(), api=FakeApi(), **options) == "commit-info"
    assert calls["paths"] == paths and calls["branch"] == ("me/tiny", "dev", True)
    assert calls["commit"] == dict(message="m", commit_description="d", revision="dev", create_pr=True)
    assert "mine" in ModelCard(calls["card"]).data.tags
    with pytest.raises(TypeError, match="bogus"):
        tiny_model().push_to_hub("me/tiny", api=FakeApi(), bogus=1)
    # save_pretrained(push_to_hub=True) uploads the folder as saved, our card in it (transformers uploaded its
    # template card), to the folder's name by default.
    monkeypatch.setattr("xlstm_hf.hub.HfApi", FakeApi)
    model = tiny_model()
    model.save_pretrained(tmp_path / "tiny-repo", push_to_hub=True, token="t", commit_message="c", private=False)
    assert calls["token"] == "t" and calls["repo"] == ("tiny-repo", False, True)
    assert calls["commit_repo"] == "me/tiny-repo"  # the namespace the Hub gave a bare name: "tiny-repo" is no repo
    assert calls["card"] == model_card(model) == (tmp_path / "tiny-repo" / "README.md").read_text()
    assert calls["paths"] == sorted(p.name for p in (tmp_path / "tiny-repo").iterdir())
    assert calls["commit"]["message"] == "c"


def test_a_push_leaves_out_what_the_hub_refuses_and_what_the_save_did_not_write(tmp_path, monkeypatch):
    # A clone's .git and `hf download --local-dir`'s .cache made the Hub refuse the whole commit; files the save did
    # not write (a Trainer's checkpoint-500/, say) went up with it.
    calls = FakeApi.calls = {}
    monkeypatch.setattr("xlstm_hf.hub.HfApi", FakeApi)
    folder = tmp_path / "repo"
    for stray in (".git/HEAD", ".cache/huggingface/download/x.metadata", "checkpoint-500/optimizer.pt"):
        (folder / stray).parent.mkdir(parents=True, exist_ok=True)
        (folder / stray).write_text("x")
    model = tiny_model()
    model.save_pretrained(folder, push_to_hub=True, repo_id="me/tiny")
    assert calls["paths"] == sorted(p.name for p in folder.iterdir() if p.is_file())
    # A pull request's ref is no branch to create; without write access, a pull request against a branch still goes.
    for revision in ("refs/pr/1", "theirs"):
        calls.clear()
        assert push_to_hub(model, "me/tiny", revision=revision, create_pr=True, api=FakeApi()) == "commit-info"
        assert ("branch" in calls) == (revision == "theirs") and calls["commit"]["revision"] == revision
    with pytest.raises(HfHubHTTPError, match="403"):
        push_to_hub(model, "me/tiny", revision="theirs", api=FakeApi())


@pytest.mark.parametrize("overrides, limit", [({}, None), ({"weight_mode": "fused"}, "weight_mode"),
                                              ({"hidden_size": 96, "num_heads": 4}, "multiples of 64"),
                                              ({"add_out_norm": False}, "add_out_norm")])
def test_the_model_card_says_when_plain_transformers_cannot_run_it(overrides, limit):
    card = model_card(tiny_model(**overrides))
    if limit is None:
        assert "loads in plain transformers" in card and "optional" in card
    else:
        assert "cannot run it" in card and limit in card and "loads in plain transformers" not in card


REMOTE_LOAD = textwrap.dedent("""
    import sys
    sys.modules["xlstm_hf"] = None  # xlstm_hf cannot be imported in this process
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model)
    ids = torch.load(sys.argv[2])
    with torch.no_grad():
        torch.save(model(ids).logits, sys.argv[3])
    # The fused inference kernels resolve in the flat bundle too, and a prefill and a step on them (the CPU runs
    # them in Triton's interpreter) give the reference's logits.
    package = type(model).__module__.rsplit(".", 1)[0]
    __import__(package + ".xlstm_kernels", fromlist=["set_backend"]).set_backend("triton")
    sys.modules[type(model).__module__].fused_kernels()
    with torch.no_grad():
        prefill = model(ids[:, :-1])
        torch.save(model(ids[:, -1:], cache=prefill.cache).logits, sys.argv[4])
""")


def test_remote_code_bundle_runs_without_xlstm_hf(tmp_path):
    model = tiny_model(hidden_size=96, num_heads=4)  # widths that are not multiples of 64
    folder = export_remote_code(tmp_path / "bundle", model)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_xlstm.XLSTMForCausalLM"
    ids = random_ids(2, 11)
    torch.save(ids, tmp_path / "ids.pt")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run([sys.executable, "-c", REMOTE_LOAD, str(folder), str(tmp_path / "ids.pt"),
                          str(tmp_path / "out.pt"), str(tmp_path / "step.pt")], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), logits(model, ids))
    with torch.no_grad():
        step = model(ids[:, -1:], cache=model(ids[:, :-1]).cache).logits
    assert (torch.load(tmp_path / "step.pt") - step).abs().max() < 1e-4


def test_a_bundle_card_shows_how_to_load_it_without_xlstm_hf(model_folder, tmp_path):
    # The card said the checkpoint needed xlstm_hf, and its snippet imported it.
    model = AutoModelForCausalLM.from_pretrained(model_folder)
    folder = export_remote_code(tmp_path / "bundle", model, model_folder=model_folder)
    snippet = (folder / "README.md").read_text().split("```python\n")[1].split("```")[0]
    code = 'import sys\nsys.modules["xlstm_hf"] = None\n' + snippet.replace("path/to/this/folder", str(folder))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert run.returncode == 0 and run.stdout.strip(), run.stderr[-3000:]


def test_weight_mode_conversion_both_ways():
    single = tiny_model()
    fused_config = XLSTMConfig.from_dict({**single.config.to_dict(), "weight_mode": "fused"})
    fused = XLSTMForCausalLM(fused_config).eval()
    fused.load_state_dict(convert_weight_mode(single.state_dict(), single.config, "fused"))
    ids = random_ids(2, 13)
    assert (logits(fused, ids) - logits(single, ids)).abs().max() < 1e-5
    back = convert_weight_mode(fused.state_dict(), fused_config, "single")
    assert back.keys() == single.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in single.state_dict().items())


def test_convert_an_xlstm_large_state_dict(tmp_path):
    from safetensors.torch import save_file

    source = tiny_model()
    state = {("embedding.weight" if k == "backbone.embeddings.weight" else k): v.contiguous()
             for k, v in source.state_dict().items()}  # the xlstm package's xLSTMLarge keys
    save_file(state, tmp_path / "xlstm_large.safetensors")
    large_config = dict(embedding_dim=source.config.hidden_size, num_blocks=source.config.num_hidden_layers,
                        num_heads=source.config.num_heads, vocab_size=source.config.vocab_size,
                        chunk_size=source.config.chunk_size, chunkwise_kernel="chunkwise--triton_xl_chunk")
    out = convert_checkpoint(tmp_path / "xlstm_large.safetensors", tmp_path / "out", dtype=torch.float32,
                             xlstm_large_config=large_config)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(out), random_ids(1, 9)),
                       logits(source, random_ids(1, 9)))


def test_convert_the_original_nxai_layout_to_clean_bf16(tmp_path):
    source = tiny_model(hidden_size=64, num_heads=2, num_hidden_layers=3, chunk_size=64)
    write_nxai_checkpoint(tmp_path / "nxai", source)
    out = convert_checkpoint(tmp_path / "nxai", tmp_path / "clean", weight_mode="fused", dtype=torch.bfloat16)
    converted = AutoModelForCausalLM.from_pretrained(out)
    assert converted.dtype == torch.bfloat16 and converted.config.weight_mode == "fused"
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    ids = random_ids(2, 15, vocab=source.config.vocab_size)
    reference = source.to(torch.bfloat16)
    assert (logits(converted, ids) - logits(reference, ids)).abs().max() < 0.1


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "xlstm_hf", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def model_folder(tmp_path):
    model, tokenizer = tiny_model(), make_tokenizer()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_cli_help_on_every_command(capsys):
    assert cli("--help").returncode == 0  # the entry point itself; the commands' help in this process (faster)
    for command in ("generate", "convert", "export", "bench", "eval"):
        with pytest.raises(SystemExit) as exit_info:
            cli_main([command, "--help"])
        assert exit_info.value.code == 0 and "usage: xlstm-hf " + command in capsys.readouterr().out


def test_cli_generate_and_bench(model_folder):
    run = cli("generate", "the way of", "--model", model_folder, "--max-new-tokens", 5)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("the way of") and "tokens/s" in run.stderr
    run = cli("bench", "--model", model_folder, "--prompt-length", 64, "--new-tokens", 4)
    assert run.returncode == 0 and "decode:" in run.stdout, run.stderr


def test_cli_on_an_xlstm_stack_checkpoint(tmp_path):
    from test_xlstm_stack import tiny_stack

    stack = tmp_path / "stack"
    tiny_stack().save_pretrained(stack)
    make_tokenizer().save_pretrained(stack)
    run = cli("generate", "the way of", "--model", stack, "--max-new-tokens", 3)  # read model.kernel_backend
    backend = "triton kernels on cuda" if torch.cuda.is_available() else "torch kernels on cpu"
    assert run.returncode == 0 and run.stdout.startswith("the way of") and backend in run.stderr, run.stderr
    # convert and the remote-code bundle are the xLSTM 7B family's: a stack model became a random 7B-style one.
    for args in (("convert", stack, tmp_path / "converted"), ("export", "--remote-code", tmp_path / "bundle",
                                                              "--model", stack)):
        run = cli(*args)
        assert run.returncode == 2 and "model_type 'xlstm_stack'" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "converted").exists() and not (tmp_path / "bundle").exists()
    before = sorted(p.name for p in stack.iterdir())
    run = cli("export", "--remote-code", stack)  # the code into the folder itself
    assert run.returncode == 2 and "model_type 'xlstm_stack'" in run.stderr
    assert sorted(p.name for p in stack.iterdir()) == before


def test_cli_export_into_a_folder_without_a_readable_config_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    run = cli("export", "--remote-code", tmp_path / "empty")  # it said "wrote a remote-code bundle": code only
    assert run.returncode == 2 and "no config.json" in run.stderr and not list((tmp_path / "empty").iterdir())
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{model_type: xlstm")
    run = cli("export", "--remote-code", tmp_path / "broken")
    assert run.returncode == 2 and "config.json is not a JSON config" in run.stderr
    assert [p.name for p in (tmp_path / "broken").iterdir()] == ["config.json"]


def test_cli_damaged_checkpoints_are_one_line_errors(model_folder, tmp_path):
    config = json.loads((model_folder / "config.json").read_text())
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (mismatched / name).write_bytes((model_folder / name).read_bytes())
    (mismatched / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 7}))
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (truncated / name).write_bytes((model_folder / name).read_bytes())
    (truncated / "model.safetensors").write_bytes((model_folder / "model.safetensors").read_bytes()[:1000])
    for folder in (mismatched, truncated):
        for args in (("generate", "the", "--model", folder, "--max-new-tokens", 1),
                     ("convert", folder, tmp_path / "out")):
            run = cli(*args)
            assert run.returncode == 2 and "Traceback" not in run.stderr and str(folder) in run.stderr, run.stderr
    assert not (tmp_path / "out").exists()


def test_cli_generate_puts_a_bos_token_first_where_the_checkpoint_asks(model_folder, tmp_path, monkeypatch, capsys):
    prompts, generate = [], XLSTMForCausalLM.generate

    def spy(self, input_ids, **kwargs):
        prompts.append(input_ids[0].tolist())
        return generate(self, input_ids, **kwargs)

    monkeypatch.setattr(XLSTMForCausalLM, "generate", spy)
    for folder in (model_folder, copy_forcing_bos(model_folder, tmp_path / "forced")):
        cli_main(["generate", "the way of", "--model", str(folder), "--max-new-tokens", "2", "--device", "cpu"])
        assert capsys.readouterr().out.startswith("the way of")
    tokenizer = make_tokenizer()
    plain = tokenizer("the way of")["input_ids"]
    assert plain[0] != tokenizer.bos_token_id and prompts == [plain, [tokenizer.bos_token_id] + plain]


def test_cli_generate_prints_the_completion_as_the_whole_sequence_decodes(model_folder, capsys):
    # A word-level tokenizer puts the space between the prompt and its first new word only in the whole sequence's
    # text: the prompt and the new tokens' text, printed side by side, ran together ("the way ofsee").
    cli_main(["generate", "the way of", "--model", str(model_folder), "--max-new-tokens", "4", "--device", "cpu"])
    tokenizer, model = AutoTokenizer.from_pretrained(model_folder), AutoModelForCausalLM.from_pretrained(model_folder)
    ids = tokenizer("the way of", return_tensors="pt")["input_ids"]
    whole = tokenizer.decode(model.generate(ids, max_new_tokens=4, do_sample=False)[0], skip_special_tokens=True)
    assert whole.startswith("the way of ") and capsys.readouterr().out == whole + "\n"


def test_cli_bench_continues_the_state_of_a_checkpoint_saved_without_use_cache(tmp_path, monkeypatch, capsys):
    # A Trainer saves "use_cache": false; every decode step then ran as a one-token forward with no history. The
    # checkpoint has no tokenizer either, which bench never uses (it refused it).
    model = tiny_model()
    model.config.use_cache = False
    model.save_pretrained(tmp_path / "trained")
    seen, forward = [], XLSTMForCausalLM.forward

    def spy(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        seen.append(None if out.cache is None else out.cache.get_seq_length())
        return out

    monkeypatch.setattr(XLSTMForCausalLM, "forward", spy)
    cli_main(["bench", "--model", str(tmp_path / "trained"), "--prompt-length", "8", "--new-tokens", "3",
              "--device", "cpu"])
    assert "decode:" in capsys.readouterr().out
    assert seen[1:] == [8, 9, 10, 11]  # after the warm-up: the prompt, then one more token a step
    # generate needs a tokenizer: named as missing (transformers' error asked to install sentencepiece)
    assert cli_main(["generate", "x", "--model", str(tmp_path / "trained"), "--device", "cpu"]) == 2
    assert "no tokenizer there" in capsys.readouterr().err


def test_cli_convert_and_export(model_folder, tmp_path):
    assert cli("convert", model_folder, tmp_path / "fused", "--weight-mode", "fused").returncode == 0
    fused = AutoModelForCausalLM.from_pretrained(tmp_path / "fused")
    assert fused.config.weight_mode == "fused"
    # The source's generated card said plain transformers loads it; the fused checkpoint's says it cannot.
    card = (tmp_path / "fused" / "README.md").read_text()
    assert card == model_card(fused) != (model_folder / "README.md").read_text()
    run = cli("export", "--remote-code", tmp_path / "bundle", "--model", model_folder)
    assert run.returncode == 0 and (tmp_path / "bundle" / "modeling_xlstm.py").is_file()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "bundle")  # the bundle's card says to load it from there
    assert tokenizer.get_vocab() == make_tokenizer().get_vocab()


def test_converting_a_folder_keeps_its_other_files(model_folder, tmp_path):
    (model_folder / "README.md").write_text("my own card")
    (model_folder / ".git").mkdir()
    before = logits(AutoModelForCausalLM.from_pretrained(model_folder), random_ids(1, 9))
    # Into a new folder: the tokenizer and the card come along.
    convert_checkpoint(model_folder, tmp_path / "fused", weight_mode="fused", dtype=None)
    assert (tmp_path / "fused" / "tokenizer.json").is_file() and (tmp_path / "fused" / "README.md").read_text() == (
        "my own card")
    # Into itself: nothing but the weights and config changes, and no other entry is lost.
    convert_checkpoint(model_folder, model_folder, weight_mode="fused", dtype=None)
    after = AutoModelForCausalLM.from_pretrained(model_folder)
    assert after.config.weight_mode == "fused" and (model_folder / ".git").is_dir()
    assert (model_folder / "README.md").read_text() == "my own card" and (model_folder / "tokenizer.json").is_file()
    assert (logits(after, random_ids(1, 9)) - before).abs().max() < 1e-5


def test_converting_a_folder_leaves_out_its_weight_variants(model_folder, tmp_path):
    base = logits(AutoModelForCausalLM.from_pretrained(model_folder), random_ids(1, 9))
    tiny_model(seed=1).save_pretrained(model_folder, variant="fp16", max_shard_size="100KB")  # other weights
    assert (model_folder / "model.safetensors.index.fp16.json").is_file()
    convert_checkpoint(model_folder, tmp_path / "converted", dtype=None)
    names = sorted(p.name for p in (tmp_path / "converted").iterdir())
    assert not [name for name in names if "fp16" in name], names  # they would load as the converted model's
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "converted"), random_ids(1, 9)), base)


def test_converting_a_repository_saved_for_the_hub_makes_its_card_anew(tmp_path):
    model = tiny_model()
    arguments = dict(repo_id="me/tiny-xlstm", base_model="NX-AI/xLSTM-7b", tags=["code"])
    save_for_hub(model, tmp_path / "repo", make_tokenizer(), **arguments)
    convert_checkpoint(tmp_path / "repo", tmp_path / "fused", weight_mode="fused", dtype=None)
    fused = AutoModelForCausalLM.from_pretrained(tmp_path / "fused")
    card = (tmp_path / "fused" / "README.md").read_text()
    # It kept the single-mode card, which said plain transformers loads the checkpoint.
    assert card == model_card(fused, **arguments) != (tmp_path / "repo" / "README.md").read_text()
    assert "cannot run it" in card and ModelCard(card).data.base_model == ["NX-AI/xLSTM-7b"]
    # A card someone edited is theirs: it comes along as it is.
    edited = (tmp_path / "repo" / "README.md").read_text().replace("An xLSTM language model", "My model")
    (tmp_path / "repo" / "README.md").write_text(edited)
    convert_checkpoint(tmp_path / "repo", tmp_path / "fused2", weight_mode="fused", dtype=None)
    assert (tmp_path / "fused2" / "README.md").read_text() == edited


def test_converting_a_folder_with_adapters_beside_the_model(model_folder, tmp_path, caplog):
    from peft import LoraConfig, get_peft_model

    ids = random_ids(1, 9)
    base = AutoModelForCausalLM.from_pretrained(model_folder)
    base_logits = logits(base, ids)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q", "v"], init_lora_weights=False)).save_pretrained(
        model_folder)  # the adapters beside their base model, as save_atomically keeps them
    adapted = AutoModelForCausalLM.from_pretrained(model_folder)  # transformers applies the adapters
    assert (logits(adapted, ids) - base_logits).abs().max() > 1e-3
    # Same weight mode: the base converted, the adapters along, so the folder loads as the source does.
    convert_checkpoint(model_folder, tmp_path / "same", dtype=None)
    assert (tmp_path / "same" / "adapter_config.json").is_file()
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "same"), ids), logits(adapted, ids))
    # A remote-code bundle of the folder is the same: its base weights, the adapters beside them.
    assert cli("export", "--remote-code", tmp_path / "bundle", "--model", model_folder).returncode == 0
    assert (tmp_path / "bundle" / "model.safetensors").is_file()
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "bundle"), ids), logits(adapted, ids))
    # Another weight mode: the adapters cannot apply to the new modules; left out, and the log says so.
    with caplog.at_level("WARNING"):
        convert_checkpoint(model_folder, tmp_path / "fused", weight_mode="fused", dtype=None)
    assert "adapter_config.json" in caplog.text and not (tmp_path / "fused" / "adapter_config.json").exists()
    fused = AutoModelForCausalLM.from_pretrained(tmp_path / "fused")
    assert fused.config.weight_mode == "fused" and (logits(fused, ids) - base_logits).abs().max() < 1e-5
    # Into the folder itself: the save replaces them, and the log says they were deleted.
    caplog.clear()
    with caplog.at_level("WARNING"):
        convert_checkpoint(model_folder, model_folder, weight_mode="fused", dtype=None)
    assert "Deleted adapter" in caplog.text and not (model_folder / "adapter_config.json").exists()
    assert (logits(AutoModelForCausalLM.from_pretrained(model_folder), ids) - base_logits).abs().max() < 1e-5


def test_exporting_code_into_a_model_folder_keeps_everything_else(model_folder):
    (model_folder / ".git").mkdir()
    (model_folder / ".git" / "HEAD").write_text("ref")
    weights = (model_folder / "model.safetensors").read_bytes()
    export_remote_code(model_folder)
    assert (model_folder / ".git" / "HEAD").read_text() == "ref" and (model_folder / "tokenizer.json").is_file()
    assert (model_folder / "model.safetensors").read_bytes() == weights
    assert (model_folder / "modeling_xlstm.py").is_file() and "auto_map" in json.loads(
        (model_folder / "config.json").read_text())


def test_cli_errors_are_clear_and_leave_nothing_behind(tmp_path):
    run = cli("convert", tmp_path / "nowhere", tmp_path / "out")
    assert run.returncode == 2 and "nowhere" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    run = cli("generate", "hi", "--model", tmp_path)
    assert run.returncode == 2 and "config.json" in run.stderr
    (tmp_path / "no_weights").mkdir()
    tiny_config().save_pretrained(tmp_path / "no_weights")
    (tmp_path / "bad_config").mkdir()
    (tmp_path / "bad_config" / "config.json").write_text("{not json")
    for source in ("no_weights", "bad_config"):
        run = cli("convert", tmp_path / source, tmp_path / "out")
        assert run.returncode == 2 and source in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
        assert not (tmp_path / "out").exists()
