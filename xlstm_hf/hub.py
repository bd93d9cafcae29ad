"""A complete Hugging Face Hub repository for an xLSTM: sharded safetensors, a config.json that vanilla
transformers loads, generation_config.json, the tokenizer, and a generated model card. Uploading needs the network;
everything before the upload works offline."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

from .modeling_xlstm import XLSTMForCausalLM
from .training import save_atomically

FORBIDDEN_FOLDERS = {".git", ".cache"}  # the Hub refuses files under these (a clone's, `hf download --local-dir`'s)


def vanilla_limits(config) -> list[str]:
    """Why vanilla transformers' built-in xLSTM (5.24) cannot run a checkpoint of this config as we do: [] if it can."""
    limits = []
    if config.weight_mode != "single":
        limits.append(f'weight_mode "{config.weight_mode}" (its fused initialisation fails)')
    if config.qk_dim % 64 or config.v_dim % 64:  # it sizes its cache with the widths rounded up to 64
        limits.append(f"q/k and v widths {config.qk_dim} and {config.v_dim}, not multiples of 64")
    if not config.add_out_norm:
        limits.append("add_out_norm=False (it applies the final norm whatever the flag says)")
    if config.use_bias:
        limits.append("use_bias=True (its final norm has no bias: it drops that weight)")
    if config.mode == "train":
        limits.append(f'mode "train" (it then takes only lengths divisible by chunk_size={config.chunk_size})')
    return limits


CARD_MARK = "<!-- written by xlstm_hf.hub.model_card: "


def card_arguments(text: str) -> dict | None:
    """The arguments (repo_id, base_model, tags) that `model_card` wrote the card `text` with, from the mark it ends
    with; None for another card."""
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    if not (last.startswith(CARD_MARK) and last.endswith(" -->")):
        return None
    try:
        arguments = json.loads(last[len(CARD_MARK):-len(" -->")])
    except ValueError:
        return None
    named = {"repo_id", "base_model", "tags"}
    return arguments if isinstance(arguments, dict) and set(arguments) in (named, named | {"remote_code"}) else None


def model_card(model: XLSTMForCausalLM, repo_id: str | None = None, base_model: str | None = None,
               tags: list[str] | None = None, remote_code: bool = False) -> str:
    """README.md with YAML metadata (library, pipeline, tags, base model), the architecture and a usage snippet
    (`remote_code`: for a folder that brings its code, `remote_code.export_remote_code`). It ends with a mark (an HTML
    comment, not shown on the Hub) that names the arguments, so that a conversion tells this card from one a person
    wrote or edited, and writes the converted model's card with the same arguments."""
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    name = repo_id or "path/to/this/folder"
    # Tags and the base model as JSON strings, which YAML reads as strings whatever they hold ("license: mit",
    # "[x]", "yes" and "3.5" were read as a mapping, a list, a bool and a number).
    metadata = ["---", "library_name: transformers", "pipeline_tag: text-generation", "license: other", "tags:",
                *(f"- {json.dumps(tag)}" for tag in dict.fromkeys(["xlstm", "mlstm", "recurrent", "xlstm_hf",
                                                                   *(tags or [])]))]
    if base_model:
        metadata += ["base_model:", f"- {json.dumps(base_model)}"]
    metadata.append("---")
    limits = vanilla_limits(config)
    xlstm_hf_link = "[xlstm_hf](https://pypi.org/project/xlstm_hf/)"
    if remote_code:
        loading = ("The checkpoint brings its own code: plain transformers (>= 5.24) runs it with "
                   f"`trust_remote_code=True`, without {xlstm_hf_link}, which also runs it and brings")
    elif limits:
        loading = (f"The checkpoint needs {xlstm_hf_link} (plain transformers' built-in xLSTM cannot run it: "
                   f"{'; '.join(limits)}), which brings")
    else:
        loading = ("The checkpoint loads in plain transformers (>= 5.24, its built-in xLSTM) and, faster, with "
                   f"{xlstm_hf_link}:")
    import_note = "registers the implementation it needs" if limits else "optional: registers the fast implementation"
    imports = "" if remote_code else f"import xlstm_hf  # {import_note}\n"
    trust = ", trust_remote_code=True" if remote_code else ""
    body = f"""
# {name.split("/")[-1]}

An xLSTM language model ([xLSTM 7B architecture](https://arxiv.org/abs/2503.13427)): {params / 1e6:,.1f}M parameters,
{config.num_hidden_layers} mLSTM blocks of width {config.hidden_size}, {config.num_heads} heads (q/k head dim
{config.qk_head_dim}, v head dim {config.v_head_dim}), vocabulary {config.vocab_size}, weight mode
`{config.weight_mode}`{", fine-tuned from " + base_model if base_model else ""}.

{loading} Triton kernels for the mLSTM cell on CUDA (a PyTorch reference elsewhere), exact padded batches, constant
memory in context.

```python
{imports}from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForCausalLM.from_pretrained("{name}"{trust})
inputs = tokenizer("The xLSTM is", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0]))
```
"""
    arguments = {"repo_id": repo_id, "base_model": base_model, "tags": tags, **({"remote_code": True} if remote_code
                                                                                 else {})}
    mark = CARD_MARK + json.dumps(arguments) + " -->\n"
    return "\n".join(metadata) + "\n" + body + "\n" + mark


def save_for_hub(model: XLSTMForCausalLM, folder: str | Path, tokenizer=None, repo_id: str | None = None,
                 base_model: str | None = None, max_shard_size: str = "5GB", tags: list[str] | None = None) -> Path:
    """Write the whole repository into `folder`, atomically."""
    def write(path: Path) -> None:
        model.save_pretrained(path, max_shard_size=max_shard_size)
        model.generation_config.save_pretrained(path)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        (Path(path) / "README.md").write_text(model_card(model, repo_id, base_model, tags), encoding="utf-8")

    return save_atomically(folder, write)


def push_to_hub(model: XLSTMForCausalLM, repo_id: str, tokenizer=None, base_model: str | None = None, *,
                private: bool | None = None, token: str | bool | None = None, commit_message: str | None = None,
                commit_description: str | None = None, revision: str | None = None, create_pr: bool = False,
                max_shard_size: str = "5GB", tags: list[str] | None = None, api: HfApi | None = None):
    """Create the repository if needed and upload every file of `save_for_hub` in one commit (to the branch
    `revision`, created if missing, or as a pull request with `create_pr`). The keywords are transformers'
    `push_to_hub`'s; `api` stands in for `HfApi(token=token)`."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_for_hub(model, Path(tmp) / "repo", tokenizer, repo_id, base_model, max_shard_size, tags)
        return commit_folder(api or HfApi(token=token), folder, repo_id, private=private,
                             commit_message=commit_message, commit_description=commit_description, revision=revision,
                             create_pr=create_pr)


def commit_folder(api: HfApi, folder: Path, repo_id: str, *, private: bool | None = None,
                  commit_message: str | None = None, commit_description: str | None = None,
                  revision: str | None = None, create_pr: bool = False, unchanged: dict[str, float] | None = None):
    """Create the repository if needed and upload the files of `folder` in one commit (to the branch `revision`,
    created if missing, or as a pull request with `create_pr`): all of them but those under `.git` or `.cache`, which
    the Hub refuses, and those `unchanged` lists (relative path: modification time) with the time they still have."""
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(Path(folder) / path))
                  for path, time in sorted(file_times(folder).items())
                  if not FORBIDDEN_FOLDERS & set(path.split("/")) and (unchanged or {}).get(path) != time]
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id  # a bare name gets its namespace
    if revision is not None and not revision.startswith("refs/pr/"):  # a pull request's ref is no branch to make
        try:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        except HfHubHTTPError as error:  # no write access: a pull request against that branch still may be opened
            if not (create_pr and error.response is not None and error.response.status_code == 403):
                raise
    return api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message or "Upload xLSTM",
                             commit_description=commit_description, revision=revision, create_pr=create_pr)


def file_times(folder: str | Path) -> dict[str, float]:
    """The modification time of every file under `folder` (relative path: time; empty where there is no folder), so
    that `push_saved_folder` uploads only what a save then writes, as transformers does."""
    folder = Path(folder)
    return {file.relative_to(folder).as_posix(): file.stat().st_mtime for file in folder.rglob("*") if file.is_file()}


def push_saved_folder(folder: str | Path, repo_id: str | None = None, token: str | bool | None = None, **options):
    """`save_pretrained(folder, push_to_hub=True)`: the files the save wrote (`unchanged`: `file_times` from before
    it), our model card among them, in one commit to `repo_id` (default: the folder's name, as transformers does).
    `options` as `commit_folder`'s."""
    folder = Path(folder)
    return commit_folder(HfApi(token=token), folder, repo_id or folder.resolve().name, **options)
