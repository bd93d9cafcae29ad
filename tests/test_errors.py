"""Bad input gets a clear error that names the problem, never a crash deep inside or a silent wrong answer."""

import json

import pytest
import torch

from helpers import random_ids, tiny_model
from xlstm_hf import XLSTMCache


def test_token_ids_outside_the_vocabulary():
    model = tiny_model()
    ids = random_ids(1, 4)
    ids[0, 2] = model.config.vocab_size
    with pytest.raises(ValueError, match="vocabulary"):
        model(ids)
    ids[0, 2] = -1
    with pytest.raises(ValueError, match="vocabulary"):
        model(ids)


def test_empty_sequence_or_batch():
    model = tiny_model()
    with pytest.raises(ValueError, match="non-empty"):
        model(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids must be a non-empty"):  # torch's aminmax error before
        model(torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="inputs_embeds must be a non-empty"):
        model(inputs_embeds=torch.zeros(0, 4, model.config.hidden_size))


def test_both_or_neither_of_ids_and_embeds():
    model = tiny_model()
    ids = random_ids(1, 3)
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(ids, inputs_embeds=model.get_input_embeddings()(ids))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()


def test_inputs_embeds_of_the_wrong_width():
    with pytest.raises(ValueError, match="hidden_size"):
        tiny_model()(inputs_embeds=torch.randn(1, 3, 7))


def test_attention_mask_of_the_wrong_shape():
    with pytest.raises(ValueError, match="attention_mask"):
        tiny_model()(random_ids(2, 5), attention_mask=torch.ones(2, 4))


@pytest.mark.parametrize("change, message", [
    (dict(batch_size=3), "batch size"),
    (dict(num_hidden_layers=3), "num_hidden_layers"),
    (dict(num_heads=4), "qk_head_dim"),
])
def test_a_cache_that_does_not_fit(change, message):
    model = tiny_model()
    batch_size = change.pop("batch_size", 2)
    config = model.config.__class__.from_dict({**model.config.to_dict(), **change})
    cache = XLSTMCache(config, batch_size)
    with pytest.raises(ValueError, match=message):
        model(random_ids(2, 4), cache=cache)


def test_a_cache_of_the_wrong_type():
    with pytest.raises(TypeError, match="XLSTMCache"):
        tiny_model()(random_ids(1, 3), cache=((torch.zeros(1),) * 3,))


# The command line: a bad argument is reported in one line that names it, with exit code 2 and no traceback.


def cli_error(capsys, *argv) -> str:
    """What `xlstm-hf ARGV` prints to stderr; fails unless it exits with 2 and without a traceback."""
    from xlstm_hf.cli import main

    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exited:  # argparse's errors
        code = exited.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, named", [
    (["generate", "x", "--device", "foo"], "--device"),
    (["generate", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["generate", "x", "--temperature", "-1"], "--temperature"),  # used to run greedy, silently
    (["generate", "x", "--top-p", "0"], "--top-p"),
    (["generate", "x", "--top-p", "1.5"], "--top-p"),
    (["bench", "--prompt-length", "-3"], "--prompt-length"),
    (["bench", "--batch", "0"], "--batch"),
    (["bench", "--new-tokens", "0"], "--new-tokens"),
    (["convert", "a", "b", "--max-shard-size", "0GB"], "--max-shard-size"),
])
def test_cli_out_of_range_arguments(capsys, argv, named):
    assert f"argument {named}:" in cli_error(capsys, *argv)


@pytest.mark.parametrize("argv, message", [
    (["generate", "x", "--top-p", "0.9"], "--top-p samples"),  # was greedy, silently
    (["generate", "caf\udce9"], "not valid UTF-8"),  # a shell's Latin-1 bytes: a traceback in the tokenizer
])
def test_cli_arguments_that_do_not_go_together(capsys, argv, message):
    assert message in cli_error(capsys, *argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_device_this_machine_lacks(capsys):
    assert "argument --device: cuda" in cli_error(capsys, "generate", "x", "--device", "cuda")


def test_cli_model_that_cannot_be_loaded(capsys, tmp_path):
    tiny_model().config.save_pretrained(tmp_path / "no_weights")  # a config.json, and no weights beside it
    err = cli_error(capsys, "generate", "x", "--model", tmp_path / "no_weights")
    assert f"--model {tmp_path / 'no_weights'}:" in err
    err = cli_error(capsys, "export", "--remote-code", tmp_path / "bundle", "--model", tmp_path / "missing")
    assert f"--model {tmp_path / 'missing'}" in err and not (tmp_path / "bundle").exists()


def test_cli_convert_a_state_dict_that_does_not_load_or_fit(capsys, tmp_path):
    from safetensors.torch import save_file

    model = tiny_model()
    save_file({("embedding.weight" if k == "backbone.embeddings.weight" else k): v.contiguous()
               for k, v in model.state_dict().items()}, tmp_path / "large.safetensors")
    config = dict(embedding_dim=128, num_blocks=2, num_heads=2, vocab_size=model.config.vocab_size, chunk_size=16)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "other_vocab.json").write_text(json.dumps({**config, "vocab_size": 99}))
    (tmp_path / "code.py").write_text("print('not a state dict')\n")
    (tmp_path / "misspelt.json").write_text(json.dumps({**config, "num_head": 4}))
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    err = cli_error(capsys, "convert", tmp_path / "code.py", tmp_path / "out", "--xlstm-large-config",
                    tmp_path / "config.json")
    assert f"{tmp_path / 'code.py'}: not a state-dict file" in err
    err = cli_error(capsys, "convert", tmp_path / "large.safetensors", tmp_path / "out", "--xlstm-large-config",
                    tmp_path / "other_vocab.json")
    assert "--xlstm-large-config" in err and "size mismatch" in err
    err = cli_error(capsys, "convert", tmp_path / "large.safetensors", tmp_path / "out", "--xlstm-large-config",
                    tmp_path / "code.py")
    assert f"--xlstm-large-config {tmp_path / 'code.py'}:" in err
    err = cli_error(capsys, "convert", tmp_path / "list.pt", tmp_path / "out", "--xlstm-large-config",
                    tmp_path / "config.json")
    assert "holds a list, not a state dict" in err
    err = cli_error(capsys, "convert", tmp_path / "large.safetensors", tmp_path / "out", "--xlstm-large-config",
                    tmp_path / "misspelt.json")  # a misspelt field was the default, num_heads=8, silently
    assert "does not know: num_head" in err
    assert not list(tmp_path.glob("*out*"))
