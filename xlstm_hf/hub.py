"""A complete Hugging Face Hub repository for an xLSTM: sharded safetensors, a config.json that vanilla
transformers loads, generation_config.json, the tokenizer, and a generated model card. Uploading needs the network;
everything before the upload works offline."""

from __future__ import annotations

import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from .modeling_xlstm import XLSTMForCausalLM
from .training import save_atomically


def model_card(model: XLSTMForCausalLM, repo_id: str | None = None, base_model: str | None = None) -> str:
    """README.md with YAML metadata (library, pipeline, tags, base model), the architecture and a usage snippet."""
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    name = repo_id or "path/to/this/folder"
    metadata = ["---", "library_name: transformers", "pipeline_tag: text-generation", "license: other",
                "tags:", "- xlstm", "- mlstm", "- recurrent", "- xlstm_hf"]
    if base_model:
        metadata += ["base_model:", f"- {base_model}"]
    metadata.append("---")
    body = f"""
# {name.split("/")[-1]}

An xLSTM language model ([xLSTM 7B architecture](https://arxiv.org/abs/2503.13427)): {params / 1e6:,.1f}M parameters,
{config.num_hidden_layers} mLSTM blocks of width {config.hidden_size}, {config.num_heads} heads (q/k head dim
{config.qk_head_dim}, v head dim {config.v_head_dim}), vocabulary {config.vocab_size}, weight mode
`{config.weight_mode}`{", fine-tuned from " + base_model if base_model else ""}.

The checkpoint loads in plain transformers (>= 5.24, its built-in xLSTM) and, faster, with
[xlstm_hf](https://pypi.org/project/xlstm_hf/): Triton kernels for the mLSTM cell on CUDA (a PyTorch reference
elsewhere), exact padded batches, constant memory in context.

```python
import xlstm_hf  # optional: registers the fast implementation
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForCausalLM.from_pretrained("{name}")
inputs = tokenizer("The xLSTM is", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0]))
```
"""
    return "\n".join(metadata) + "\n" + body


def save_for_hub(model: XLSTMForCausalLM, folder: str | Path, tokenizer=None, repo_id: str | None = None,
                 base_model: str | None = None, max_shard_size: str = "5GB") -> Path:
    """Write the whole repository into `folder`, atomically."""
    def write(path: Path) -> None:
        model.save_pretrained(path, max_shard_size=max_shard_size)
        model.generation_config.save_pretrained(path)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        (Path(path) / "README.md").write_text(model_card(model, repo_id, base_model), encoding="utf-8")

    return save_atomically(folder, write)


def push_to_hub(model: XLSTMForCausalLM, repo_id: str, tokenizer=None, base_model: str | None = None,
                private: bool = False, token: str | None = None, commit_message: str = "Upload xLSTM",
                max_shard_size: str = "5GB", api: HfApi | None = None):
    """Create the repository if needed and upload every file of `save_for_hub` in one commit."""
    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_for_hub(model, Path(tmp) / "repo", tokenizer, repo_id, base_model, max_shard_size)
        operations = [CommitOperationAdd(path_in_repo=str(file.relative_to(folder)), path_or_fileobj=str(file))
                      for file in sorted(folder.rglob("*")) if file.is_file()]
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message)
