"""Checkpoint conversion: the xlstm package's xLSTMLarge state dicts, single <-> fused weight modes, dtype casts,
and the original NX-AI/xLSTM-7b layout into a clean checkpoint of ours."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from .configuration_xlstm import FIELD_NAMES, XLSTMConfig
from .modeling_xlstm import XLSTMForCausalLM
from .training import ADAPTER_FILE, WEIGHT_FILE, save_atomically

logger = logging.get_logger(__name__)

# (fused parameter, its single-mode parts in order) per block; split sizes come from the config.
_FUSED = {
    "mlstm_layer.qkv_opreact": ("mlstm_layer.q", "mlstm_layer.k", "mlstm_layer.v", "mlstm_layer.ogate_preact"),
    "mlstm_layer.ifgate_preact": ("mlstm_layer.igate_preact", "mlstm_layer.fgate_preact"),
    "ffn.proj_up_gate_z": ("ffn.proj_up_gate", "ffn.proj_up"),
}


def from_xlstm_large_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the xlstm package's `xLSTMLarge` onto ours (only the embedding differs)."""
    return {("backbone.embeddings.weight" if key == "embedding.weight" else key): value
            for key, value in state_dict.items()}


def _split_sizes(config: XLSTMConfig, fused: str) -> list[int]:
    return {
        "mlstm_layer.qkv_opreact": [config.qk_dim, config.qk_dim, config.v_dim, config.v_dim],
        "mlstm_layer.ifgate_preact": [config.num_heads, config.num_heads],
        "ffn.proj_up_gate_z": [config.ffn_dim, config.ffn_dim],
    }[fused]


def convert_weight_mode(state_dict: dict[str, torch.Tensor], config: XLSTMConfig, weight_mode: str):
    """A state dict of `config.weight_mode` rewritten for `weight_mode` ("single" or "fused"); exact (concatenation
    or split along the output dim)."""
    if weight_mode not in ("single", "fused"):
        raise ValueError(f"weight_mode must be 'single' or 'fused', got {weight_mode!r}")
    if weight_mode == config.weight_mode:
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        prefix, _, rest = key.partition(".blocks.")
        index, _, name = rest.partition(".")
        module, _, kind = name.rpartition(".")
        if not rest:
            out[key] = value
        elif weight_mode == "fused" and any(module in parts for parts in _FUSED.values()):
            fused = next(f for f, parts in _FUSED.items() if module in parts)
            if module == _FUSED[fused][0]:
                names = [f"{prefix}.blocks.{index}.{p}.{kind}" for p in _FUSED[fused]]
                if missing := [name for name in names if name not in state_dict]:
                    raise ValueError(f"the checkpoint lacks {missing[0]}, a part of the fused {fused}")
                parts = [state_dict[name] for name in names]
                out[f"{prefix}.blocks.{index}.{fused}.{kind}"] = torch.cat(parts, dim=0)
        elif weight_mode == "single" and module in _FUSED:
            for part, piece in zip(_FUSED[module], value.split(_split_sizes(config, module), dim=0)):
                out[f"{prefix}.blocks.{index}.{part}.{kind}"] = piece.clone()
        else:
            out[key] = value
    return out


def convert_checkpoint(
    source: str | Path,
    destination: str | Path,
    weight_mode: str | None = None,
    dtype: torch.dtype | None = torch.bfloat16,
    max_shard_size: str = "5GB",
    xlstm_large_config: dict | None = None,
) -> Path:
    """Load a checkpoint (ours, transformers', NX-AI's original layout, or with `xlstm_large_config` an xLSTMLarge
    state-dict file), optionally change weight mode and dtype, and save a clean sharded checkpoint atomically. The
    other files of a source folder (tokenizer, model card, ...) come along, except a model card generated for the
    source's layout (a new one is); converting a folder into itself keeps them. LoRA adapters saved beside the model
    are left out of the load (the base model is converted) and come along only if the weight mode stays: their
    target modules are the source layout's."""
    source = Path(source)
    companions, generation_config, card = [], None, None
    if xlstm_large_config is not None:
        unknown = sorted(set(xlstm_large_config) - set(FIELD_NAMES))
        if unknown:  # XLSTMConfig keeps any keyword: a misspelt field would silently be the default
            raise ValueError(f"the xLSTMLarge config has fields XLSTMConfig does not know: {', '.join(unknown)}")
        config = XLSTMConfig(**xlstm_large_config)
        state_dict = from_xlstm_large_state_dict(_load_state_dict(source))
    else:
        model = load_base_model(source, dtype)
        config, state_dict, generation_config = model.config, model.state_dict(), model.generation_config
        companions, card = companion_files(source, model), generated_card_arguments(source / "README.md", model)
    target_mode = weight_mode or config.weight_mode
    if target_mode != config.weight_mode and (adapters := [p for p in companions if ADAPTER_FILE.fullmatch(p.name)]):
        into_source = Path(destination).resolve() == source.resolve()  # then the save replaces them: deleted
        names = ", ".join(p.name for p in adapters)
        logger.warning(f"{'Deleted' if into_source else 'Left out'} {names}: the adapters target the "
                       f"{config.weight_mode} weight mode's modules, which the {target_mode} mode does not have.")
        companions = [p for p in companions if p not in adapters]
    state_dict = convert_weight_mode(state_dict, config, target_mode)
    new_config = XLSTMConfig.from_dict({**config.to_dict(), "weight_mode": target_mode})
    with torch.device("meta"):
        model = XLSTMForCausalLM(new_config)
    missing = set(model.state_dict()) - set(state_dict)
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} weights, e.g. {sorted(missing)[:3]}")
    state_dict = {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
                  for k, v in tqdm(state_dict.items(), desc="converting", unit="tensor")}
    model.load_state_dict(state_dict, strict=True, assign=True)
    if dtype is not None:
        model.config.dtype = dtype
    head, embeddings = state_dict["lm_head.weight"], state_dict["backbone.embeddings.weight"]
    if model.config.tie_word_embeddings and torch.equal(head, embeddings):
        model.tie_weights()  # as from_pretrained does: a head with values of its own stays (transformers' xLSTM)
    if generation_config is not None:
        model.generation_config = generation_config

    def write(path: Path) -> None:
        copy_files(companions, path)
        if card is not None:  # the source's generated card, made anew for this layout with the same repo and tags
            from .hub import model_card  # the hub module builds on the modeling one

            (path / "README.md").write_text(model_card(model, **card), encoding="utf-8")
        model.save_pretrained(path, max_shard_size=max_shard_size)

    return save_atomically(destination, write)


def checkpoint_model_type(config_file: Path) -> str | None:
    """The `model_type` in a checkpoint's config.json; a missing or unreadable file raises an error naming it."""
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {config_file.parent}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_file} is not a JSON config: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} is not a JSON object")
    return config.get("model_type")


def load_base_model(folder: Path, dtype: torch.dtype | None) -> XLSTMForCausalLM:
    """The model saved in `folder`, without the LoRA adapters that may be saved beside it (from_pretrained would apply
    them, and the state dict would then name the adapted layers' parts instead of the weights). Weights the files
    lack are an error: from_pretrained would only log them, and initialise them at random; so is a checkpoint of
    another model type (it would become a random xLSTM 7B-style model)."""
    model_type = checkpoint_model_type(folder / "config.json")
    if model_type != XLSTMConfig.model_type:
        raise ValueError(f"{folder} holds model_type {model_type!r}: this takes xLSTM 7B checkpoints "
                         f"(model_type {XLSTMConfig.model_type!r}: ours, transformers', NX-AI's)")
    adapters = {entry.name for entry in folder.iterdir() if ADAPTER_FILE.fullmatch(entry.name)}
    with tempfile.TemporaryDirectory() if adapters else contextlib.nullcontext(folder) as view:
        if adapters:  # the folder seen without its adapters, through links
            for entry in folder.iterdir():
                if entry.name not in adapters:
                    (Path(view) / entry.name).symlink_to(entry.resolve())
        model, info = XLSTMForCausalLM.from_pretrained(view, dtype=dtype or "auto", output_loading_info=True)
    missing = sorted(set(info["missing_keys"]) - ({"lm_head.weight"} if model.config.tie_word_embeddings else set()))
    if missing:
        raise ValueError(f"the checkpoint in {folder} lacks {len(missing)} weights, e.g. {missing[:3]}")
    return model


def companion_files(folder: Path, model: XLSTMForCausalLM) -> list[Path]:
    """The files of checkpoint `folder` besides its weights (tokenizer, config, generation config, a model card),
    without a model card `save_pretrained` generated for `model`: that one describes `model`'s layout (weight mode,
    whether plain transformers loads it), so a converted checkpoint gets its own."""
    return [p for p in folder.iterdir() if p.is_file() and not WEIGHT_FILE.fullmatch(p.name)
            and generated_card_arguments(p, model) is None]


def copy_files(files: list[Path], folder: Path) -> None:
    """Copy `files` into `folder`, before a model is saved there: its save replaces what it writes (config.json) and
    keeps a model card that is there."""
    for file in files:
        shutil.copy2(file, folder / file.name)


def generated_card_arguments(path: Path, model: XLSTMForCausalLM) -> dict | None:
    """If `path` is a model card that `hub.model_card` generated for `model` (by `save_pretrained`, `save_for_hub` or
    `push_to_hub`) and nobody edited, the arguments it was generated with; else None."""
    from .hub import card_arguments, model_card  # the hub module builds on the modeling one

    if path.name != "README.md" or not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    arguments = card_arguments(text)
    return arguments if arguments is not None and text == model_card(model, **arguments) else None


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"state dict not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise ValueError(f"{path} holds a {type(state_dict).__name__}, not a state dict (names onto tensors)")
    return state_dict
