"""Bad input gets a clear error that names the problem, never a crash deep inside or a silent wrong answer."""

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


def test_empty_sequence():
    with pytest.raises(ValueError, match="non-empty"):
        tiny_model()(torch.zeros(2, 0, dtype=torch.long))


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
