"""Configuration of the xLSTM 7B architecture (arXiv 2503.13427).

`XLSTMConfig` reads three dialects of the same architecture:

* transformers' own `xLSTMConfig` (`hidden_size`, `num_hidden_layers`, ...),
* the original NX-AI/xLSTM-7b `config.json` (`embedding_dim`, `num_blocks`, `head_dim`, `add_post_blocks_norm`,
  `forward_backend_name`, `step_backend_name`, `cell_norm_eps`, ...),
* the `xlstm` package's `xLSTMLargeConfig` names (`embedding_dim`, `num_blocks`, `chunkwise_kernel`, ...),

and it always writes transformers' dialect, with values that vanilla transformers' strict validation accepts (the
kernel choice is a run-time decision, never a saved field). It defaults to the 7B.
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig
from transformers.utils import logging

from .kernels.backend import normalize_backend

logger = logging.get_logger(__name__)

# The only kernel names vanilla transformers accepts when the `xlstm` package is absent.
NATIVE_KERNELS = {
    "chunkwise_kernel": ("chunkwise--native_autograd", "parallel--native_autograd"),
    "sequence_kernel": ("native_sequence__native",),
    "step_kernel": ("native",),
}
DTYPE_NAMES = ("float32", "bfloat16", "float16")
MODES = ("train", "train_with_padding", "inference")
WEIGHT_MODES = ("single", "fused")

# Legacy (NX-AI/xLSTM-7b) names that are plain renames of transformers' fields.
LEGACY_RENAMES = {"add_post_blocks_norm": "add_out_norm", "cell_norm_eps": "eps"}
# NX-AI/xLSTM-7b's kernel choices: read as a run-time preference, like the kernel fields, and not saved.
LEGACY_KERNEL_FIELDS = ("forward_backend_name", "step_backend_name")
TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id")


def resolve_alias(config: PretrainedConfig, name: str, alias: str, default: int, kwargs: dict,
                  alias_builds: bool = False) -> int:
    """The value of field `name` (None when not given) reconciled with `alias` from the config's `kwargs` (popped):
    either one, or `default` if neither was given. Both given and unequal is an error, unless `alias_builds` (the
    alias is what the model is built from: it wins, with a warning)."""
    value, alias_value = getattr(config, name), kwargs.pop(alias, None)
    if value is not None and alias_value is not None and value != alias_value:
        if not alias_builds:
            raise ValueError(f"{name}={value} and its alias {alias}={alias_value} disagree")
        logger.warning(f"{name}={value} and its alias {alias}={alias_value} disagree: taking {alias}={alias_value}, "
                       "as transformers' xLSTM does")
        return alias_value
    return next((x for x in (value, alias_value) if x is not None), default)


def with_field_arguments(config_dict: dict, kwargs: dict, field_names: dict[str, str]) -> dict:
    """A copy of `config_dict` into which the keyword arguments that name a field (`field_names` maps each name a field
    is read under to the field) are moved from `kwargs`, replacing the field under its other names."""
    config_dict = dict(config_dict)
    for key in [key for key in kwargs if key in field_names]:
        for name in [name for name, field in field_names.items() if field == field_names[key]]:
            config_dict.pop(name, None)  # the field under every name, so that the argument wins
        config_dict[key] = kwargs.pop(key)
    return config_dict


def round_up_to_multiple(x: float, multiple: int) -> int:
    """Round x up to a multiple, with the exact arithmetic of transformers and the xlstm package (their FFN widths)."""
    return int(((x + multiple - 1) // multiple) * multiple)


class XLSTMConfig(PretrainedConfig):
    r"""
    Configuration of an xLSTM 7B-style model ([`XLSTMModel`], [`XLSTMForCausalLM`]). Defaults give NX-AI/xLSTM-7b.

    Args:
        vocab_size (`int`, defaults to 50304): Vocabulary size.
        hidden_size (`int`, defaults to 4096): Model width. Alias: `embedding_dim`.
        num_hidden_layers (`int`, defaults to 32): Number of mLSTM blocks. Alias: `num_blocks`.
        num_heads (`int`, defaults to 8): Heads of the mLSTM cell; must divide the query/key and value widths.
        use_bias (`bool`, defaults to `False`): Biases in the projections and norms (the gates always have one).
        norm_reduction_force_float32 (`bool`, defaults to `True`): Norm statistics in float32.
        tie_word_embeddings (`bool`, defaults to `False`): Share the embedding and LM-head weights.
        add_out_norm (`bool`, defaults to `True`): RMSNorm after the last block. Legacy: `add_post_blocks_norm`.
        norm_eps (`float`, defaults to 1e-6): Epsilon of the RMS and head norms.
        qk_dim_factor (`float`, defaults to 0.5): Query/key width = int(hidden_size * qk_dim_factor).
        v_dim_factor (`float`, defaults to 1.0): Value width = int(hidden_size * v_dim_factor).
        chunkwise_kernel, sequence_kernel, step_kernel (`str`): Kept for compatibility with transformers; always
            saved with the native names vanilla transformers accepts. Kernel choice happens at run time.
        mode (`str`, defaults to `"inference"`): Kept for compatibility (`train`, `train_with_padding`, `inference`).
        chunk_size (`int`, defaults to 64): Chunk length of the chunkwise mLSTM form.
        return_last_states (`bool`, defaults to `True`): Kept for compatibility.
        autocast_kernel_dtype (`str`, defaults to `"bfloat16"`): Kept for compatibility.
        eps (`float`, defaults to 1e-6): Epsilon of the mLSTM cell's denominator. Legacy: `cell_norm_eps`.
        inference_state_dtype (`str`, defaults to `"float32"`): dtype of the recurrent state during inference.
        ffn_proj_factor (`float`, defaults to 2.667): FFN width = round_up(hidden_size * ffn_proj_factor, ...).
        ffn_round_up_to_multiple_of (`int`, defaults to 64): Multiple the FFN width is rounded up to.
        gate_soft_cap (`float`, defaults to 15.0): Soft cap `c * tanh(x / c)` on the input/forget pre-activations.
        output_logit_soft_cap (`float`, defaults to 30.0): Soft cap on the output logits.
        weight_mode (`str`, defaults to `"single"`): `"single"` (separate q, k, v, gate projections) or `"fused"`
            (`qkv_opreact`, `ifgate_preact`, `proj_up_gate_z`).
        max_inference_chunksize (`int`, defaults to 16384): Longest segment processed at once in inference.
        use_cache, pad_token_id, bos_token_id, eos_token_id: As in every transformers config.

    Example:

    ```python
    >>> import xlstm_hf
    >>> from xlstm_hf import XLSTMConfig, XLSTMForCausalLM
    >>> config = XLSTMConfig(hidden_size=128, num_hidden_layers=2, num_heads=2, vocab_size=256)
    >>> model = XLSTMForCausalLM(config)
    ```
    """

    model_type = "xlstm"
    # The legacy names read and write the same value (they are never saved: vanilla transformers derives them).
    attribute_map = {"embedding_dim": "hidden_size", "num_blocks": "num_hidden_layers"}

    vocab_size: int = 50304
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_heads: int = 8
    use_bias: bool = False
    norm_reduction_force_float32: bool = True
    tie_word_embeddings: bool = False
    add_out_norm: bool = True
    norm_eps: float = 1e-6
    qk_dim_factor: float = 0.5
    v_dim_factor: float = 1.0
    chunkwise_kernel: str = "chunkwise--native_autograd"
    sequence_kernel: str = "native_sequence__native"
    step_kernel: str = "native"
    mode: str = "inference"
    chunk_size: int = 64
    return_last_states: bool = True
    autocast_kernel_dtype: str = "bfloat16"
    eps: float = 1e-6
    inference_state_dtype: str = "float32"
    ffn_proj_factor: float = 2.667
    ffn_round_up_to_multiple_of: int = 64
    gate_soft_cap: float = 15.0
    output_logit_soft_cap: float = 30.0
    weight_mode: str = "single"
    use_cache: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 2
    max_inference_chunksize: int = 16384

    def __post_init__(self, **kwargs):
        for legacy, field in LEGACY_RENAMES.items():
            if legacy in kwargs:
                setattr(self, field, kwargs.pop(legacy))
        head_dim = kwargs.pop("head_dim", None)
        self.hidden_size = resolve_alias(self, "hidden_size", "embedding_dim", 4096, kwargs)
        # transformers' xLSTM builds its blocks from num_blocks and keeps num_hidden_layers=32 beside it.
        self.num_hidden_layers = resolve_alias(self, "num_hidden_layers", "num_blocks", 32, kwargs, alias_builds=True)
        legacy_kernels = {name: kwargs.pop(name) for name in LEGACY_KERNEL_FIELDS if name in kwargs}
        self._requested_kernel = None
        self._normalise_kernel_names({name: value for name, value in legacy_kernels.items() if value})
        super().__post_init__(**kwargs)
        self._validate()
        if head_dim is not None and head_dim != self.v_head_dim:
            raise ValueError(
                f"head_dim={head_dim} does not match hidden_size * v_dim_factor / num_heads = {self.v_head_dim}"
            )

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> XLSTMConfig:
        """transformers' `from_dict`, with the keyword arguments that name our fields (`from_pretrained(path,
        num_heads=4)`) applied before the config is built: transformers would set them as attributes afterwards,
        past the checks and normalisation of `__post_init__` (aliases, kernel names, float fields)."""
        return super().from_dict(with_field_arguments(config_dict, kwargs, FIELD_NAMES), **kwargs)

    def validate(self) -> None:
        """transformers' checks, which `save_pretrained` runs, and ours: a field set as an attribute after the config
        was built is checked before it is saved, and a kernel name is saved as the native one vanilla accepts."""
        super().validate()
        self._normalise_kernel_names()
        self._validate()

    def _normalise_kernel_names(self, legacy: dict[str, str] | None = None) -> None:
        # Triton/CUDA kernel names from the xlstm package or NX-AI's config would make the saved config.json fail
        # vanilla transformers' strict validation; they only ever express a run-time preference, kept unsaved. A
        # name no backend answers to fails here, naming its field, not at the first forward.
        requests = {}
        for field, allowed in NATIVE_KERNELS.items():
            value = getattr(self, field)
            if value not in allowed:
                logger.info(f"{field}={value!r} is chosen at run time; saving {allowed[0]!r} for compatibility.")
                requests[field] = value
                setattr(self, field, allowed[0])
        requests.update(legacy or {})
        for field, value in requests.items():
            try:
                normalize_backend(value)
            except ValueError as error:
                raise ValueError(f"{field}: {error}") from None
        if requests:  # a name set later (as an attribute) replaces the one read at construction
            self._requested_kernel = next(iter(requests.values()))

    @property
    def kernel_preference(self) -> str | None:
        """The kernel name a loaded config asked for, if any (legacy names included); mapped onto our backends
        at run time by `xlstm_hf.kernels.normalize_backend`."""
        return getattr(self, "_requested_kernel", None)

    def _remove_keys_not_serialized(self, d: dict) -> None:
        super()._remove_keys_not_serialized(d)
        d.pop("_requested_kernel", None)

    def _validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "chunk_size",
                     "ffn_round_up_to_multiple_of", "max_inference_chunksize"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("qk_dim_factor", "v_dim_factor", "ffn_proj_factor", "gate_soft_cap", "output_logit_soft_cap",
                     "norm_eps", "eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if value < 0 or (value == 0 and name not in ("norm_eps", "eps")):
                raise ValueError(f"{name} must be {'>= 0' if name.endswith('eps') else '> 0'}, got {value!r}")
            setattr(self, name, float(value))  # strict validation of the saved config wants floats
        for name, allowed in (("weight_mode", WEIGHT_MODES), ("mode", MODES),
                              ("inference_state_dtype", DTYPE_NAMES), ("autocast_kernel_dtype", DTYPE_NAMES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("use_bias", "norm_reduction_force_float32", "tie_word_embeddings", "add_out_norm",
                     "return_last_states", "use_cache"):
            if not isinstance(getattr(self, name), bool):  # a string such as "no" would be taken as true
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in TOKEN_ID_FIELDS:
            value = getattr(self, name)
            ids = value if name == "eos_token_id" and isinstance(value, list) else [value]
            if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                kinds = "an integer, a list of integers or None" if name == "eos_token_id" else "an integer or None"
                raise ValueError(f"{name} must be {kinds}, got {value!r}")
        if self.ffn_dim < 1:
            raise ValueError(f"ffn_proj_factor={self.ffn_proj_factor} gives an empty FFN width at "
                             f"hidden_size={self.hidden_size}")
        for name, width in (("qk_dim_factor", self.qk_dim), ("v_dim_factor", self.v_dim)):
            if width < 1:
                raise ValueError(f"{name}={getattr(self, name)} gives an empty width at hidden_size={self.hidden_size}")
            if width % self.num_heads:
                raise ValueError(
                    f"num_heads={self.num_heads} does not divide the width int(hidden_size * {name}) = {width}"
                )

    @property
    def qk_dim(self) -> int:
        """Total query/key width; the same formula as the module weights of transformers and the xlstm package."""
        return int(self.hidden_size * self.qk_dim_factor)

    @property
    def v_dim(self) -> int:
        """Total value width."""
        return int(self.hidden_size * self.v_dim_factor)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_dim // self.num_heads

    @property
    def v_head_dim(self) -> int:
        return self.v_dim // self.num_heads

    @property
    def ffn_dim(self) -> int:
        """Inner width of the gated FFN (10944 for the 7B)."""
        return round_up_to_multiple(self.hidden_size * self.ffn_proj_factor, self.ffn_round_up_to_multiple_of)


# Every name XLSTMConfig reads a field of its own under (fields, aliases, legacy names), onto the field it sets.
FIELD_NAMES = {
    **{field: field for field in (*XLSTMConfig.__annotations__, *LEGACY_KERNEL_FIELDS, "head_dim")},
    **XLSTMConfig.attribute_map,
    **LEGACY_RENAMES,
}

__all__ = ["XLSTMConfig"]
