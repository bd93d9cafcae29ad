"""Configuration of the original xLSTM family (arXiv 2405.04517): stacks of mLSTM and sLSTM blocks, xLSTM[a:b].

`XLSTMStackConfig` takes the fields of the `xlstm` package's `xLSTMLMModelConfig` under the same names and with
the same nesting (`mlstm_block.mlstm.*`, `slstm_block.slstm.*`, `slstm_block.feedforward.*`), as plain dicts (a
YAML/OmegaConf config or `dataclasses.asdict` of the package's config object), so that the package's checkpoints
load unchanged. Fields the package derives (`_block_map`, `_num_blocks`, `_proj_up_dim`, the `embedding_dim` copied
into each block, ...) and fields that only configure its CUDA kernel compilation (`batch_size`, `dtype*`,
`constants`, ...) are accepted and dropped: they are recomputed or do not apply here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from transformers import PretrainedConfig

from .configuration_xlstm import resolve_alias, with_field_arguments

# The nested block fields kept, with the `xlstm` package's defaults.
MLSTM_LAYER_DEFAULTS = {
    "conv1d_kernel_size": 4,
    "qkv_proj_blocksize": 4,
    "num_heads": 4,
    "proj_factor": 2.0,
    "round_proj_up_dim_up": True,
    "round_proj_up_to_multiple_of": 64,
}
SLSTM_LAYER_DEFAULTS = {
    "num_heads": 4,
    "conv1d_kernel_size": 4,
    "group_norm_weight": True,
    "backend": "cuda",
    "function": "slstm",
    "num_gates": 4,
    "bias_init": "powerlaw_blockdependent",
    "recurrent_weight_init": "zeros",
    "gradient_recurrent_cut": False,
    "gradient_recurrent_clipval": None,
    "forward_clipval": None,
}
FEEDFORWARD_DEFAULTS = {
    "proj_factor": 1.3,
    "act_fn": "gelu",
    "dropout": 0.0,
    "bias": False,
    "ff_type": "ffn_gated",
    "round_proj_up_dim_up": True,
    "round_proj_up_to_multiple_of": 64,
}
# Accepted and dropped: derived by the package from the top level, or settings of its CUDA kernel compilation.
DERIVED_FIELDS = {
    "mlstm": {"embedding_dim", "bias", "dropout", "context_length"},
    "slstm": {"embedding_dim", "hidden_size", "dropout", "num_states", "batch_size", "input_shape",
              "internal_input_shape", "output_shape", "constants", "dtype", "dtype_b", "dtype_r", "dtype_w", "dtype_g",
              "dtype_s", "dtype_a", "enable_automatic_mixed_precision", "initial_val"},
    "feedforward": {"embedding_dim"},
}
# Options of the package whose sLSTM math we do not implement (only these values are accepted).
SLSTM_FIXED = {"function": "slstm", "num_gates": 4, "gradient_recurrent_cut": False,
               "gradient_recurrent_clipval": None, "forward_clipval": None}
SLSTM_LAYOUTS = ("cuda", "vanilla")
SLSTM_BIAS_INITS = ("powerlaw_blockdependent", "small_init", "standard", "zeros")
SLSTM_RECURRENT_INITS = ("zeros", "standard")
ACTIVATIONS = ("gelu", "relu", "relu^2", "sigmoid", "swish", "selu")


def up_projection_dim(embedding_dim: int, proj_factor: float, round_up: bool, multiple: int) -> int:
    """The `xlstm` package's up-projection width: proj_factor * embedding_dim rounded (up or down) to a multiple."""
    multiplier = proj_factor * embedding_dim / multiple
    return int((math.ceil(multiplier) if round_up else math.floor(multiplier)) * multiple)


def _normalize_section(name: str, value: Any, defaults: dict, derived: set) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict of fields, got {type(value).__name__}")
    unknown = sorted(k for k in value if k not in defaults and k not in derived and not k.startswith("_"))
    if unknown:
        raise ValueError(f"{name} has unknown fields {unknown}; known: {sorted(defaults)}")
    return {key: value.get(key, default) for key, default in defaults.items()}


def _normalize_block(name: str, value: Any, sections: dict[str, dict]) -> dict | None:
    if value is None:
        return None
    if dataclasses.is_dataclass(value):  # the package's config object itself
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict (or the xlstm package's block config), got {type(value).__name__}")
    unknown = sorted(k for k in value if k not in sections and not k.startswith("_"))
    if unknown:
        raise ValueError(f"{name} has unknown fields {unknown}; known: {sorted(sections)}")
    block = {}
    for section, defaults in sections.items():
        given = value.get(section, {})
        if given is None and section == "feedforward":  # an sLSTM block without its MLP
            block[section] = None
            continue
        block[section] = _normalize_section(f"{name}.{section}", given or {}, defaults, DERIVED_FIELDS[section])
    return block


class XLSTMStackConfig(PretrainedConfig):
    r"""
    Configuration of an xLSTM[a:b] stack ([`XLSTMStackModel`], [`XLSTMStackForCausalLM`]): `num_blocks` residual
    blocks, sLSTM at the indices `slstm_at`, mLSTM elsewhere. Field names and nesting are the `xlstm` package's
    `xLSTMLMModelConfig`; the defaults are the package's, except that an empty config gives a one-block mLSTM model.

    Args:
        vocab_size (`int`, defaults to 50304): Vocabulary size.
        embedding_dim (`int`, defaults to 128): Model width. Alias: `hidden_size`.
        num_blocks (`int`, defaults to 1): Number of blocks. Alias: `num_hidden_layers`.
        slstm_at (`list[int]` or `"all"`, defaults to `[]`): Block indices (from 0) that are sLSTM blocks; `"all"`
            for an sLSTM-only stack (also the default when `mlstm_block` is None and `slstm_block` is given).
        mlstm_block (`dict`, *optional*): `{"mlstm": {...}}`, the mLSTM layer: `num_heads` (4) cell heads,
            `proj_factor` (2.0) up-projection, rounded `round_proj_up_dim_up` (True) to a multiple of
            `round_proj_up_to_multiple_of` (64), `conv1d_kernel_size` (4) of the causal depthwise convolution,
            `qkv_proj_blocksize` (4) of the block-diagonal q/k/v projections.
        slstm_block (`dict`, *optional*): `{"slstm": {...}, "feedforward": {...} or None}`. sLSTM layer: `num_heads`
            (4), `conv1d_kernel_size` (4; 0 = no convolution), `group_norm_weight` (True), `backend` (`"cuda"` or
            `"vanilla"`: names the layout of the recurrent kernel and bias in the checkpoint, which the package's
            two backends store differently; it does not choose our kernels), `bias_init`
            (`"powerlaw_blockdependent"`, `"small_init"`, `"standard"`, `"zeros"`), `recurrent_weight_init`
            (`"zeros"`, `"standard"`). Feed-forward (gated MLP after the sLSTM layer): `proj_factor` (1.3),
            `act_fn` (`"gelu"`; also relu, relu^2, sigmoid, swish, selu), `dropout`, `bias` (False), rounding as above.
        context_length (`int`, defaults to -1): Training context length; informational (no limit is enforced).
        add_post_blocks_norm (`bool`, defaults to `True`): LayerNorm after the last block.
        bias (`bool`, defaults to `False`): Biases in the mLSTM layer's projections.
        dropout (`float`, defaults to 0.0): Dropout after each mLSTM / sLSTM layer (and on the embeddings when
            `add_embedding_dropout`).
        tie_weights (`bool`, defaults to `False`): Share the embedding and LM-head weights. Alias:
            `tie_word_embeddings`.
        weight_decay_on_embedding (`bool`, defaults to `False`): Kept for compatibility (an optimiser setting).
        add_embedding_dropout (`bool`, defaults to `False`): Dropout on the token embeddings.
        chunk_size (`int`, defaults to 64): Chunk length of the chunkwise mLSTM form (exact for any value).
        use_cache, pad_token_id, bos_token_id, eos_token_id: As in every transformers config.

    Example (the paper's xLSTM[7:1] shape at a small width):

    ```python
    >>> from xlstm_hf import XLSTMStackConfig, XLSTMStackForCausalLM
    >>> config = XLSTMStackConfig(vocab_size=256, embedding_dim=64, num_blocks=8, slstm_at=[3],
    ...                           mlstm_block={"mlstm": {"num_heads": 4}},
    ...                           slstm_block={"slstm": {"num_heads": 4}, "feedforward": {"proj_factor": 1.3}})
    >>> model = XLSTMStackForCausalLM(config)
    ```
    """

    model_type = "xlstm_stack"
    attribute_map = {
        "hidden_size": "embedding_dim",
        "num_hidden_layers": "num_blocks",
        "tie_word_embeddings": "tie_weights",
    }

    vocab_size: int = 50304
    embedding_dim: int | None = None  # 128 unless given here or as hidden_size
    num_blocks: int | None = None  # 1 unless given here or as num_hidden_layers
    slstm_at: list[int] | str | None = None
    mlstm_block: dict | None = None
    slstm_block: dict | None = None
    context_length: int = -1
    add_post_blocks_norm: bool = True
    bias: bool = False
    dropout: float = 0.0
    tie_weights: bool = False
    weight_decay_on_embedding: bool = False
    add_embedding_dropout: bool = False
    chunk_size: int = 64
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        kwargs.pop("_block_map", None)  # derived from slstm_at
        self.embedding_dim = resolve_alias(self, "embedding_dim", "hidden_size", 128, kwargs)
        self.num_blocks = resolve_alias(self, "num_blocks", "num_hidden_layers", 1, kwargs)
        super().__post_init__(**kwargs)
        if self.mlstm_block is None and self.slstm_block is None:
            self.mlstm_block = {}
        self._validate()

    @classmethod
    def from_xlstm_package(cls, package_config: Any, **kwargs) -> "XLSTMStackConfig":
        """The config of an `xlstm` package `xLSTMLMModelConfig` object (or its `dataclasses.asdict`)."""
        if dataclasses.is_dataclass(package_config):
            package_config = dataclasses.asdict(package_config)
        return cls(**{**package_config, **kwargs})

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "XLSTMStackConfig":
        """transformers' `from_dict`, with the keyword arguments that name our fields (`from_pretrained(path,
        slstm_at=[1])`) applied before the config is built, so that they pass its checks: transformers would set them
        as attributes afterwards. A block given so replaces the saved one; its fields not given take the defaults, as
        in the constructor."""
        return super().from_dict(with_field_arguments(config_dict, kwargs, FIELD_NAMES), **kwargs)

    def validate(self) -> None:
        """transformers' checks, which `save_pretrained` runs, and ours: a field set as an attribute after the config
        was built is checked (and a block dict completed) before it is saved."""
        super().validate()
        self._validate()

    def _validate(self) -> None:
        """Check every field, naming the bad one; complete the block dicts with their defaults and `slstm_at` as a
        sorted list."""
        self.mlstm_block = _normalize_block("mlstm_block", self.mlstm_block, {"mlstm": MLSTM_LAYER_DEFAULTS})
        self.slstm_block = _normalize_block(
            "slstm_block", self.slstm_block, {"slstm": SLSTM_LAYER_DEFAULTS, "feedforward": FEEDFORWARD_DEFAULTS}
        )
        for name in ("vocab_size", "embedding_dim", "num_blocks", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        _probability("dropout", self.dropout)
        for name in ("add_post_blocks_norm", "bias", "tie_weights", "weight_decay_on_embedding",
                     "add_embedding_dropout"):
            _flag(name, getattr(self, name))
        if self.slstm_at is None:
            self.slstm_at = "all" if self.mlstm_block is None else []
        if self.slstm_at == "all":
            self.slstm_at = list(range(self.num_blocks))
        if not isinstance(self.slstm_at, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < self.num_blocks for i in self.slstm_at
        ):
            raise ValueError(f"slstm_at must be 'all' or a list of block indices in [0, {self.num_blocks}), "
                             f"got {self.slstm_at!r}")
        self.slstm_at = sorted(set(self.slstm_at))
        if self.slstm_at and self.slstm_block is None:
            raise ValueError(f"slstm_at={self.slstm_at} places sLSTM blocks but slstm_block is None")
        if len(self.slstm_at) < self.num_blocks and self.mlstm_block is None:
            raise ValueError(f"slstm_at={self.slstm_at} leaves mLSTM blocks but mlstm_block is None")
        if self.mlstm_block is not None:
            self._validate_mlstm(self.mlstm_block["mlstm"])
        if self.slstm_block is not None:
            self._validate_slstm(self.slstm_block["slstm"], self.slstm_block["feedforward"])

    def _validate_mlstm(self, mlstm: dict) -> None:
        for key in ("num_heads", "qkv_proj_blocksize", "conv1d_kernel_size", "round_proj_up_to_multiple_of"):
            _positive_int(f"mlstm_block.mlstm.{key}", mlstm[key])
        _positive_number("mlstm_block.mlstm.proj_factor", mlstm["proj_factor"])
        _flag("mlstm_block.mlstm.round_proj_up_dim_up", mlstm["round_proj_up_dim_up"])
        inner = self.mlstm_inner_dim
        if inner < 1:
            raise ValueError(f"mlstm_block.mlstm.proj_factor={mlstm['proj_factor']} gives an empty inner width")
        for key in ("num_heads", "qkv_proj_blocksize"):
            if inner % mlstm[key]:
                raise ValueError(f"mlstm_block.mlstm.{key}={mlstm[key]} does not divide the inner width {inner}")

    def _validate_slstm(self, slstm: dict, feedforward: dict | None) -> None:
        _positive_int("slstm_block.slstm.num_heads", slstm["num_heads"])
        if self.embedding_dim % slstm["num_heads"]:
            raise ValueError(f"slstm_block.slstm.num_heads={slstm['num_heads']} does not divide "
                             f"embedding_dim={self.embedding_dim}")
        _flag("slstm_block.slstm.group_norm_weight", slstm["group_norm_weight"])
        kernel = slstm["conv1d_kernel_size"]
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 0:
            raise ValueError(f"slstm_block.slstm.conv1d_kernel_size must be an integer >= 0, got {kernel!r}")
        for key, allowed in (("backend", SLSTM_LAYOUTS), ("bias_init", SLSTM_BIAS_INITS),
                             ("recurrent_weight_init", SLSTM_RECURRENT_INITS)):
            if slstm[key] not in allowed:
                raise ValueError(f"slstm_block.slstm.{key} must be one of {allowed}, got {slstm[key]!r}")
        for key, supported in SLSTM_FIXED.items():
            if slstm[key] != supported:
                raise ValueError(f"slstm_block.slstm.{key}={slstm[key]!r} is not supported (only {supported!r})")
        if feedforward is not None:
            if feedforward["act_fn"] not in ACTIVATIONS:
                raise ValueError(f"slstm_block.feedforward.act_fn must be one of {ACTIVATIONS}, "
                                 f"got {feedforward['act_fn']!r}")
            if feedforward["ff_type"] != "ffn_gated":
                raise ValueError(f"slstm_block.feedforward.ff_type must be 'ffn_gated', got {feedforward['ff_type']!r}")
            _positive_int("slstm_block.feedforward.round_proj_up_to_multiple_of",
                          feedforward["round_proj_up_to_multiple_of"])
            _positive_number("slstm_block.feedforward.proj_factor", feedforward["proj_factor"])
            _probability("slstm_block.feedforward.dropout", feedforward["dropout"])
            for key in ("bias", "round_proj_up_dim_up"):
                _flag(f"slstm_block.feedforward.{key}", feedforward[key])
            if self.ffn_dim < 1:
                raise ValueError(
                    f"slstm_block.feedforward.proj_factor={feedforward['proj_factor']} gives an empty width"
                )

    @property
    def block_types(self) -> list[str]:
        """"mlstm" or "slstm" for each block, in order."""
        return ["slstm" if index in self.slstm_at else "mlstm" for index in range(self.num_blocks)]

    @property
    def mlstm_inner_dim(self) -> int:
        """Width of the mLSTM layer after its up-projection (the cell's q, k, v width)."""
        mlstm = self.mlstm_block["mlstm"]
        return up_projection_dim(self.embedding_dim, mlstm["proj_factor"], mlstm["round_proj_up_dim_up"],
                                 mlstm["round_proj_up_to_multiple_of"])

    @property
    def mlstm_head_dim(self) -> int:
        return self.mlstm_inner_dim // self.mlstm_block["mlstm"]["num_heads"]

    @property
    def slstm_head_dim(self) -> int:
        return self.embedding_dim // self.slstm_block["slstm"]["num_heads"]

    @property
    def ffn_dim(self) -> int:
        """Inner width of the sLSTM block's gated MLP."""
        ff = self.slstm_block["feedforward"]
        return up_projection_dim(self.embedding_dim, ff["proj_factor"], ff["round_proj_up_dim_up"],
                                 ff["round_proj_up_to_multiple_of"])


FIELD_NAMES = {**{field: field for field in XLSTMStackConfig.__annotations__}, **XLSTMStackConfig.attribute_map}


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _positive_number(name: str, value: Any) -> None:
    if not _is_number(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _probability(name: str, value: Any) -> None:
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):  # a string "False" would read as true
        raise ValueError(f"{name} must be true or false, got {value!r}")


__all__ = ["XLSTMStackConfig"]
