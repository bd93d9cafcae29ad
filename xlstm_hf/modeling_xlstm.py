"""xLSTM 7B (arXiv 2503.13427) for transformers: the same module tree and state-dict keys as transformers' own
`xLSTMForCausalLM`, on the mLSTM kernels of `xlstm_hf.kernels`.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin, StoppingCriteriaList
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

from .cache_xlstm import XLSTMCache
from .configuration_xlstm import XLSTMConfig
from .decode_graph import DecodeGraph, SinceRegistration
from .deferred_stop import deferred_stop_checks
from .kernels import MLSTMState, mlstm, pad_gates, resolve_backend
from .packing import is_plain, packed_or_pack


@functools.cache
def fused_kernels() -> SimpleNamespace:
    """The Triton kernels of the fused inference paths, imported on first use (Triton is optional)."""
    from .kernels.decode_triton import MAX_ROWS, skinny_linear  # noqa: F401
    from .kernels.elementwise_triton import head_norm_gate, rms_norm, silu_mul, soft_cap_gates, step_gates  # noqa: F401
    from .kernels.mlstm_triton import mlstm_prefill_triton, mlstm_step_triton  # noqa: F401

    return SimpleNamespace(**locals())


def add_linear_(residual: torch.Tensor, x: torch.Tensor, linear: nn.Module) -> torch.Tensor:
    """`residual += linear(x)`, in place. For a plain bias-free `nn.Linear` and a contiguous residual, the add is the
    GEMM's epilogue (cuBLAS's beta = 1, one rounding) instead of a pass over the activations of its own."""
    if is_plain(linear) and linear.bias is None and residual.is_contiguous():
        residual.view(-1, residual.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]), linear.weight.t())
        return residual
    return residual.add_(linear(x))


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """`cap * tanh(x / cap)`: bounds x to (-cap, cap) while staying linear near zero."""
    return cap * torch.tanh(x / cap)


class XLSTMRMSNorm(nn.Module):
    """RMSNorm over the last dimension; statistics in float32 when `force_float32` (the default)."""

    def __init__(self, dim: int, eps: float = 1e-6, use_bias: bool = False, force_float32: bool = True):
        super().__init__()
        self.eps, self.force_float32 = eps, force_float32
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if use_bias else None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() if self.force_float32 else x
        return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x) * self.weight
        return x if self.bias is None else x + self.bias


class XLSTMMultiHeadLayerNorm(XLSTMRMSNorm):
    """Mean-centred layer norm over each head's value dims; input (B, S, NH, DV), output (B, S, NH * DV)."""

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-6, use_bias: bool = False,
                 force_float32: bool = True):
        super().__init__(num_heads * head_dim, eps, use_bias, force_float32)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() if self.force_float32 else x
        y = (y - y.mean(-1, keepdim=True)) * torch.rsqrt(y.var(-1, keepdim=True, unbiased=False) + self.eps)
        return y.to(x.dtype).flatten(-2)


class XLSTMFeedForward(nn.Module):
    """Gated FFN: `proj_down(silu(proj_up_gate(x)) * proj_up(x))` (fused: one `proj_up_gate_z`)."""

    def __init__(self, config: XLSTMConfig):
        super().__init__()
        self.weight_mode, self.ffn_dim = config.weight_mode, config.ffn_dim
        bias = config.use_bias
        if self.weight_mode == "single":
            self.proj_up_gate = nn.Linear(config.hidden_size, config.ffn_dim, bias=bias)
            self.proj_up = nn.Linear(config.hidden_size, config.ffn_dim, bias=bias)
        else:
            self.proj_up_gate_z = nn.Linear(config.hidden_size, 2 * config.ffn_dim, bias=bias)
        self.proj_down = nn.Linear(config.ffn_dim, config.hidden_size, bias=bias)
        self.proj_down.init_role = "residual_out"

    def up_projections(self) -> list[nn.Linear]:
        """The gate and up projections, in this order (one layer in the fused layout)."""
        return [self.proj_up_gate, self.proj_up] if self.weight_mode == "single" else [self.proj_up_gate_z]

    def gated_up(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """`silu(proj_up_gate(x)) * proj_up(x)`. `fused`: inference on the fused kernels, with the up projections as
        one GEMM (see `xlstm_hf.packing`)."""
        weights = packed_or_pack(self.up_projections()) if fused else None
        if weights is not None:
            gate, z = F.linear(x, *weights).split(self.ffn_dim, dim=-1)
        elif self.weight_mode == "single":
            gate, z = self.proj_up_gate(x), self.proj_up(x)
        else:
            gate, z = self.proj_up_gate_z(x).split(self.ffn_dim, dim=-1)
        return fused_kernels().silu_mul(gate, z) if fused else F.silu(gate) * z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_down(self.gated_up(x))


class XLSTMLayer(nn.Module):
    """The mLSTM layer: projections, soft-capped gates, the mLSTM cell, head norm, output gate and projection."""

    def __init__(self, config: XLSTMConfig):
        super().__init__()
        self.config = config
        self.num_heads, self.qk_dim, self.v_dim = config.num_heads, config.qk_dim, config.v_dim
        # Read on every forward: plain attributes cost a fraction of a config lookup (a 2K prefill was host-bound).
        self.gate_soft_cap, self.chunk_size, self.eps = config.gate_soft_cap, config.chunk_size, config.eps
        self.weight_mode = config.weight_mode
        self.projection_sizes = [self.qk_dim, self.qk_dim, self.v_dim, self.v_dim, self.num_heads, self.num_heads]
        hidden, bias = config.hidden_size, config.use_bias
        if config.weight_mode == "single":
            self.q = nn.Linear(hidden, self.qk_dim, bias=bias)
            self.k = nn.Linear(hidden, self.qk_dim, bias=bias)
            self.v = nn.Linear(hidden, self.v_dim, bias=bias)
            self.ogate_preact = nn.Linear(hidden, self.v_dim, bias=bias)
            self.igate_preact = nn.Linear(hidden, self.num_heads, bias=True)
            self.fgate_preact = nn.Linear(hidden, self.num_heads, bias=True)
            self.igate_preact.init_role, self.fgate_preact.init_role = "igate", "fgate"
        else:
            self.qkv_opreact = nn.Linear(hidden, 2 * self.qk_dim + 2 * self.v_dim, bias=bias)
            self.ifgate_preact = nn.Linear(hidden, 2 * self.num_heads, bias=True)
            self.ifgate_preact.init_role = "ifgate"
        self.multihead_norm = XLSTMMultiHeadLayerNorm(
            self.num_heads, config.v_head_dim, config.norm_eps, bias, config.norm_reduction_force_float32
        )
        self.out_proj = nn.Linear(self.v_dim, hidden, bias=bias)
        self.out_proj.init_role = "residual_out"

    def projections(self) -> list[nn.Linear]:
        """The input projections, in the order of `project`'s results (two layers in the fused layout)."""
        if self.weight_mode == "single":
            return [self.q, self.k, self.v, self.ogate_preact, self.igate_preact, self.fgate_preact]
        return [self.qkv_opreact, self.ifgate_preact]

    def project(self, x: torch.Tensor, packed: bool = False) -> tuple[torch.Tensor, ...]:
        """q, k, v, output-gate and (i, f) gate pre-activations (not yet soft-capped), each (B, S, ...). `packed`:
        as one GEMM over the projections packed into one buffer, where they can be (inference only)."""
        weights = packed_or_pack(self.projections()) if packed else None
        if weights is not None:
            return F.linear(x, *weights).split(self.projection_sizes, dim=-1)
        if self.weight_mode == "single":
            q, k, v, o = self.q(x), self.k(x), self.v(x), self.ogate_preact(x)
            i, f = self.igate_preact(x), self.fgate_preact(x)
        else:
            q, k, v, o = self.qkv_opreact(x).split([self.qk_dim, self.qk_dim, self.v_dim, self.v_dim], dim=-1)
            i, f = self.ifgate_preact(x).split(self.num_heads, dim=-1)
        return q, k, v, o, i, f

    def forward(
        self, x: torch.Tensor, state: MLSTMState | None = None, mask: torch.Tensor | None = None,
        fused: bool = False, backend: str | None = None, keep_from: int = 0,
    ) -> tuple[torch.Tensor, MLSTMState]:
        """`fused`: the elementwise work on the fused inference kernels (see `XLSTMBlock.forward`); `backend`: the
        cell's kernels, "torch" or "triton" (by default resolved from the config, see `xlstm_hf.kernels.backend`);
        `keep_from`: the output only from that position on (the state still takes every position)."""
        B, S, _ = x.shape
        q, k, v, o, i, f = self.project(x, packed=fused)
        cap, norm = self.gate_soft_cap, self.multihead_norm
        heads = lambda t: t.view(B, S, self.num_heads, -1).transpose(1, 2)  # noqa: E731
        if fused and (S > 1 or state is None):
            # Prefill: the gates' soft cap and padding, the head norm and the output gate inside the cell's kernels.
            y, state = fused_kernels().mlstm_prefill_triton(
                heads(q), heads(k), heads(v), i.transpose(1, 2), f.transpose(1, 2), state, cap, mask, o, norm.weight,
                norm.eps, self.eps,
            )
            return self.out_proj(y[:, keep_from:]), state
        if fused:  # one token after a state, which `XLSTMBlock.fused_step` declined: the step kernel, in place
            i, f = fused_kernels().soft_cap_gates(i, f, cap, mask)
        else:
            i, f = pad_gates(soft_cap(i, cap), soft_cap(f, cap), mask)
        h, state = mlstm(
            heads(q), heads(k), heads(v), i.transpose(1, 2), f.transpose(1, 2), state,
            chunk_size=self.chunk_size, eps=self.eps,
            backend=backend or resolve_backend(x.device, self.config.kernel_preference),
        )
        h, o = h[:, :, keep_from:], o[:, keep_from:]
        if not o.shape[1]:  # only the state was wanted
            return x[:, :0], state
        if fused:
            return self.out_proj(fused_kernels().head_norm_gate(h, o, norm.weight, norm.eps)), state
        h = norm(h.transpose(1, 2))
        return self.out_proj(torch.sigmoid(o) * h), state


class XLSTMBlock(GradientCheckpointingLayer):
    """Pre-norm residual block: mLSTM layer, then the gated FFN."""

    def __init__(self, config: XLSTMConfig):
        super().__init__()
        norm = lambda: XLSTMRMSNorm(  # noqa: E731
            config.hidden_size, config.norm_eps, config.use_bias, config.norm_reduction_force_float32
        )
        self.norm_mlstm = norm()
        self.mlstm_layer = XLSTMLayer(config)
        self.norm_ffn = norm()
        self.ffn = XLSTMFeedForward(config)
        self.fused_layout = not config.use_bias and config.norm_reduction_force_float32  # what the kernels do

    def forward(
        self, x: torch.Tensor, state: MLSTMState | None = None, mask: torch.Tensor | None = None, keep_from: int = 0
    ) -> tuple[torch.Tensor, MLSTMState]:
        """x (B, S, H) continuing `state` (None: a fresh one), `mask` (B, S) bool marking real tokens (None: all are).
        Returns the output from position `keep_from` on, and the new state. The positions before `keep_from` still
        pass through the cell into the state, but skip the output projection and the FFN: the last block of a
        prefill whose earlier outputs nothing reads (generate()'s head sees only the last position)."""
        backend = resolve_backend(x.device, self.mlstm_layer.config.kernel_preference)
        first_pass, state = checkpoint_first_pass(self, state)
        fused = not first_pass and self.fused_inference(x, backend)
        if fused and x.shape[1] == 1 and state is not None and (stepped := self.fused_step(x, state, mask)) is not None:
            return stepped[0][:, keep_from:], stepped[1]
        kernels = fused_kernels() if fused else None
        normed = kernels.rms_norm(x, self.norm_mlstm.weight, self.norm_mlstm.eps)[0] if fused else self.norm_mlstm(x)
        y, state = self.mlstm_layer(normed, state, mask, fused=fused, backend=backend, keep_from=keep_from)
        if not y.shape[1]:  # only the state was wanted
            return y, state
        x = x[:, keep_from:]
        if fused:
            normed, x = kernels.rms_norm(y, self.norm_ffn.weight, self.norm_ffn.eps, residual=x)  # x + y, normed
            return add_linear_(x, self.ffn.gated_up(normed, fused=True), self.ffn.proj_down), state
        x = x + y
        return x + self.ffn(self.norm_ffn(x)), state

    def fused_step(self, x: torch.Tensor, state: MLSTMState, mask: torch.Tensor | None
                   ) -> tuple[torch.Tensor, MLSTMState] | None:
        """One token per row, x (B, 1, H), with the projections on the decode GEMV (`xlstm_hf.kernels.decode_triton`),
        which also adds the residuals and gates the FFN: nine launches. None where it doesn't apply (more rows than
        its `MAX_ROWS`, projections that can't be packed): the caller takes the general fused path."""
        kernels = fused_kernels()
        layer, ffn = self.mlstm_layer, self.ffn
        B = x.shape[0]
        if B > kernels.MAX_ROWS:
            return None
        projections, up = packed_or_pack(layer.projections()), packed_or_pack(ffn.up_projections())
        if projections is None or up is None or not (is_plain(layer.out_proj) and is_plain(ffn.proj_down)):
            return None
        normed, _ = kernels.rms_norm(x, self.norm_mlstm.weight, self.norm_mlstm.eps)
        q, k, v, o, i, f = kernels.skinny_linear(normed.view(B, -1), *projections).split(layer.projection_sizes, -1)
        i, f, *snapshot = kernels.step_gates(i, f, layer.gate_soft_cap, mask, *state[1:])
        heads = lambda t: t.view(B, layer.num_heads, -1)  # noqa: E731
        h, state = kernels.mlstm_step_triton(heads(q), heads(k), heads(v), i, f, state, layer.eps, snapshot=snapshot)
        norm = layer.multihead_norm
        h = kernels.head_norm_gate(h[:, :, None], o[:, None], norm.weight, norm.eps)
        x = kernels.skinny_linear(h, layer.out_proj.weight, layer.out_proj.bias, residual=x)
        normed, _ = kernels.rms_norm(x, self.norm_ffn.weight, self.norm_ffn.eps)
        gated = kernels.skinny_linear(normed, *up, gated=True)
        return kernels.skinny_linear(gated, ffn.proj_down.weight, ffn.proj_down.bias, residual=x), state

    def fused_inference(self, x: torch.Tensor, backend: str | None = None) -> bool:
        """Whether this step can run its elementwise work on the fused Triton kernels: inference (no autograd) on
        the Triton backend (`backend`, else resolved from the config), in the weights' dtype, without biases (the
        7B's layout; anything else takes the modules' PyTorch path). Not under autocast (whose GEMMs return another
        dtype than the weights'), not for a block accelerate offloads (the kernels read weights that only the modules'
        own calls bring from the meta device); the caller rules out reentrant checkpointing's first pass."""
        weight = self.norm_mlstm.weight
        return (
            self.fused_layout and not torch.is_grad_enabled() and x.dtype == weight.dtype and x.device == weight.device
            and (backend or resolve_backend(x.device, self.mlstm_layer.config.kernel_preference)) == "triton"
            and not torch.is_autocast_enabled(x.device.type)
        )


class XLSTMPreTrainedModel(PreTrainedModel):
    """Weight initialisation (the paper's) and the transformers plumbing shared by the xLSTM models."""

    config_class = XLSTMConfig
    config: XLSTMConfig
    base_model_prefix = "backbone"
    _no_split_modules = ["XLSTMBlock"]
    supports_gradient_checkpointing = True
    _is_stateful = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        config = self.config
        if isinstance(module, (nn.Linear, nn.Embedding)):
            role = getattr(module, "init_role", None)
            if role in ("igate", "fgate", "ifgate"):
                # Paper: gate weights 0, input-gate bias -10, forget-gate bias linspace(3, 6) over the heads.
                nh, device = config.num_heads, module.bias.device
                igate_bias = torch.full((nh,), -10.0, device=device)
                fgate_bias = torch.linspace(3.0, 6.0, nh, device=device)
                bias = {"igate": igate_bias, "fgate": fgate_bias, "ifgate": torch.cat([igate_bias, fgate_bias])}[role]
                init.zeros_(module.weight)
                init.copy_(module.bias, bias)
                return
            if role == "residual_out":  # "Wang init" of the projections that write into the residual stream
                std = 2 / config.num_hidden_layers / module.weight.shape[1] ** 0.5
            else:  # "small init" (Nguyen & Salazar, 2019)
                std = (2 / (5 * config.hidden_size)) ** 0.5
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, XLSTMRMSNorm):  # the head norm too
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)

    @property
    def kernel_backend(self) -> str:
        """The mLSTM kernels this model runs on its device: "triton" or "torch" (see `xlstm_hf.kernels.backend`;
        override with `xlstm_hf.set_kernel_backend(...)` or the XLSTM_HF_KERNELS environment variable)."""
        return resolve_backend(self.device, self.config.kernel_preference)


def checkpoint_first_pass(block: nn.Module, state: tuple | None) -> tuple[bool, tuple | None]:
    """Whether `block` runs the first pass of reentrant gradient checkpointing (training without autograd, then run
    again from the same inputs for the backward), and the state for it to use: a copy on that pass. Not inference,
    then: no fused inference kernels, and no update in place (the step kernel's way without autograd) of the state
    that the second run starts from."""
    first_pass = block.gradient_checkpointing and block.training and not torch.is_grad_enabled()
    if first_pass and state is not None:
        state = tuple(t.clone() for t in state)
    return first_pass, state


def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: its weight's device, or, when accelerate offloads it (the weights wait on the meta
    device between forwards), the device its hook brings them to. A layer's recurrent state lives there."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    return module.weight.device if device is None else torch.device(device)


def keep_positions(x: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """The positions of (B, S, H) hidden states the LM head sees: the last `logits_to_keep` (0 = all), or the given
    indices."""
    if isinstance(logits_to_keep, int):
        return x[:, -logits_to_keep:] if logits_to_keep else x
    return x[:, logits_to_keep]


def padding_mask(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """The (B, length) bool mask of the input's positions (the last `length` columns of `attention_mask`), or None
    when nothing is padded: the cells then take their unmasked path."""
    if attention_mask is None or bool(attention_mask[:, -length:].all()):
        return None
    return attention_mask[:, -length:].bool()


class ForwardInputs(NamedTuple):
    use_cache: bool
    output_hidden_states: bool
    batch_size: int
    length: int
    cache: Cache | None
    mask: torch.Tensor | None  # (B, length) bool, None when nothing is padded
    states: list  # per block, the state to continue from (None: a fresh one)


def prepare_forward(model, cache_class: type, num_blocks: int, input_ids, inputs_embeds, attention_mask, cache,
                    use_cache, output_hidden_states) -> ForwardInputs:
    """What the forward() of both model families does before its blocks run: check the inputs, default `use_cache`
    and `output_hidden_states` from the config, check the cache passed or make one (`model.new_cache`), and derive
    the padding mask and every block's state to continue from."""
    check_inputs(model.config, input_ids, inputs_embeds, attention_mask)
    use_cache = model.config.use_cache if use_cache is None else use_cache
    if output_hidden_states is None:
        output_hidden_states = model.config.output_hidden_states
    batch_size, length = (input_ids if inputs_embeds is None else inputs_embeds).shape[:2]
    if cache is not None:
        check_cache(cache, cache_class)
        cache.check_compatible(model.config, batch_size)
    elif use_cache:
        cache = model.new_cache(batch_size)
    states = cache.states_to_continue() if cache is not None else [None] * num_blocks
    return ForwardInputs(use_cache, output_hidden_states, batch_size, length, cache,
                         padding_mask(attention_mask, length), states)


# Other names of the cache argument: transformers' (past_key_values) and its own xLSTM's (cache_params).
CACHE_ALIASES = ("past_key_values", "cache_params")


def takes_cache_aliases(forward):
    """A forward that also takes its `cache` under the names of `CACHE_ALIASES` (with a deprecation warning)."""
    for alias in CACHE_ALIASES:
        forward = deprecate_kwarg(alias, "5.40.0", new_name="cache")(forward)
    return forward


def check_cache(cache, cache_class: type) -> None:
    """A `TypeError` unless `cache` is exactly a `cache_class` (the other family's cache subclasses XLSTMCache), and
    a `ValueError` if it is known not to hold the state of the sequences it would continue (`check_continuable`)."""
    if type(cache) is not cache_class:
        raise TypeError(f"cache must be an {cache_class.__name__}, got {type(cache).__name__}")
    cache.check_continuable()


def check_inputs(config, input_ids, inputs_embeds, attention_mask) -> None:
    """Raise a `ValueError` naming the bad argument: both or neither of ids and embeddings, empty input, token ids
    outside the vocabulary, a wrong embedding width or mask shape. `config` gives vocab_size and hidden_size."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
    tokens = input_ids if input_ids is not None else inputs_embeds
    if tokens.dim() != (2 if input_ids is not None else 3) or 0 in tokens.shape[:2]:
        name = "input_ids" if input_ids is not None else "inputs_embeds"
        raise ValueError(f"{name} must be a non-empty batch of sequences, got shape {tuple(tokens.shape)}")
    if input_ids is not None:
        low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one host sync, not two
        if low < 0 or high >= config.vocab_size:
            raise ValueError(
                f"input_ids holds token id {low if low < 0 else high}, outside the vocabulary "
                f"[0, {config.vocab_size})"
            )
    if inputs_embeds is not None and inputs_embeds.shape[-1] != config.hidden_size:
        raise ValueError(
            f"inputs_embeds has width {inputs_embeds.shape[-1]}, the model's hidden_size is {config.hidden_size}"
        )
    if attention_mask is not None and (
        attention_mask.dim() != 2 or attention_mask.shape[0] != tokens.shape[0]
        or attention_mask.shape[1] < tokens.shape[1]
    ):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; the input needs (batch, length >= sequence) "
            f"= {tuple(tokens.shape[:2])}"
        )


class XLSTMModel(XLSTMPreTrainedModel):
    """The xLSTM backbone: embeddings, mLSTM blocks and the output norm. Returns the final hidden states."""

    def __init__(self, config: XLSTMConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList([XLSTMBlock(config) for _ in range(config.num_hidden_layers)])
        self.out_norm = (
            XLSTMRMSNorm(config.hidden_size, config.norm_eps, config.use_bias, config.norm_reduction_force_float32)
            if config.add_out_norm
            else nn.Identity()
        )
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def new_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> XLSTMCache:
        """An empty state for `batch_size` sequences, each layer's on that layer's device."""
        devices = [execution_device(block.norm_mlstm) for block in self.blocks]
        return XLSTMCache(self.config, batch_size, device=devices, dtype=dtype)

    @takes_cache_aliases
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: XLSTMCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        last_positions_to_keep: int = 0,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """
        Args:
            input_ids: (B, S) token ids; or `inputs_embeds` (B, S, hidden_size), not both.
            attention_mask: (B, S) or, during generation, (B, past + S), of which the last S columns are used:
                1 for real tokens, 0 for padding. A padded position leaves the recurrent state untouched.
            cache: An [`XLSTMCache`] to continue from; it is updated in place and returned.
            use_cache: Return the state (a new cache if none was passed). Defaults to `config.use_cache`.
            output_hidden_states: Also return the hidden states (embeddings, then every block's output; the last one
                after the output norm).
            last_positions_to_keep: Return `last_hidden_state` for only the last N positions (0 = all), so that a
                long prompt, processed in segments of `config.max_inference_chunksize` tokens, is never held whole;
                without `output_hidden_states` the last block then runs its output projection and FFN for those N
                positions only.
        """
        use_cache, output_hidden_states, _, length, cache, mask, states = prepare_forward(
            self, XLSTMCache, len(self.blocks), input_ids, inputs_embeds, attention_mask, cache, use_cache,
            output_hidden_states,
        )

        # Segments carry the state from one to the next: exact, and the activations of one segment bound memory. Only
        # in inference: autograd keeps every segment's activations anyway, and reentrant gradient checkpointing would
        # cut the gradient through the state between them.
        keep_from = length - last_positions_to_keep if 0 < last_positions_to_keep < length else 0
        segment = length if torch.is_grad_enabled() else self.config.max_inference_chunksize
        hidden_states = [[] for _ in range(len(self.blocks) + 1)] if output_hidden_states else None
        kept = []
        for start in range(0, length, segment):
            # Embedded segment by segment: a long prompt's embeddings alone would be ~1 GiB for the 7B at 128K.
            x = self.embeddings(input_ids[:, start : start + segment]) if inputs_embeds is None else \
                inputs_embeds[:, start : start + segment]
            segment_mask = None if mask is None else mask[:, start : start + segment]
            first_kept = min(max(keep_from - start, 0), x.shape[1])
            for index, block in enumerate(self.blocks):
                if output_hidden_states:
                    hidden_states[index].append(x)
                # Unless every output is returned, the last block works out only the kept positions' outputs.
                last = index == len(self.blocks) - 1 and not output_hidden_states
                x, states[index] = block(x, states[index], segment_mask, keep_from=first_kept if last else 0)
            if output_hidden_states:
                x = self.out_norm(x)
                hidden_states[-1].append(x)
                x = x[:, first_kept:]
            elif x.shape[1]:
                x = self.out_norm(x)
            if x.shape[1]:
                kept.append(x)

        if cache is not None:
            cache.absorb(states, length)
        return BaseModelOutputWithPast(
            last_hidden_state=torch.cat(kept, 1) if len(kept) > 1 else kept[0],
            cache=cache if use_cache else None,
            hidden_states=tuple(torch.cat(h, 1) for h in hidden_states) if output_hidden_states else None,
        )

    def pack_projections(self) -> None:
        """Make each layer's input projections, and its FFN's up projections, views of one buffer, so that each group
        runs as one GEMM (see `xlstm_hf.packing`); inference on the fused kernels does this on its first call. Values,
        parameter names and the state dict stay the same."""
        for block in self.blocks:
            packed_or_pack(block.mlstm_layer.projections())
            packed_or_pack(block.ffn.up_projections())

    def decode_step(self, input_ids: torch.LongTensor, mask: torch.Tensor, cache: XLSTMCache) -> torch.Tensor:
        """One token per row, continuing `cache`, with no host synchronisation (so a CUDA graph can capture it):
        no input checks, and `mask` (B, 1) bool applied as given. Returns the output-normed hidden state (B, 1, H)
        and updates the cache's state; the caller advances `cache.seen_tokens`."""
        x = self.embeddings(input_ids)
        for block, layer in zip(self.blocks, cache.layers):
            x, state = block(x, layer.state, mask)
            layer.update(state)
        return self.out_norm(x)


class FinishedRows(StoppingCriteriaList):
    """A decoding loop's stopping criteria, also remembering which rows had finished before the last token was
    appended. transformers appends a pad token to a finished row at every later step; fed as padding (mask 0), they
    leave the row's state as it was at its end, as the row alone would have it."""

    def __init__(self, criteria: StoppingCriteriaList):
        super().__init__(criteria)
        self.running_before_last: torch.Tensor | None = None  # (B, 1) bool, None until the second call
        self._running: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        done = super().__call__(input_ids, scores, **kwargs)
        self.running_before_last = self._running
        self._running = ~done[:, None] if self._running is None else self._running & ~done[:, None]
        return done


class RecurrentGenerationMixin(GenerationMixin):
    """generate() plumbing for a model whose whole past is a recurrent state in a static cache: the cache made up
    front (`new_generation_cache`), only the new tokens fed, the attention mask passed whole (its tail marks
    padding)."""

    cache_class: type[Cache]  # the only cache the model continues
    # Devices on which transformers' sampling loop reads its stop flag one step late instead of waiting for every
    # token (see `deferred_stop`); () keeps transformers' own choice.
    deferred_stop_devices: tuple[str, ...] = ("cuda",)

    def new_generation_cache(self, batch_size: int) -> Cache:
        raise NotImplementedError

    def generate(self, *args, **kwargs):
        """transformers' [`~GenerationMixin.generate`]. Where the call fails or is interrupted, a `cache` passed in is
        left as it was if its state took in none of the call's tokens (one state per prompt again, where `_prefill`
        gave it one per beam), and otherwise marked as not to be continued (partway through a chunked prefill, or
        while decoding): its state then holds part of the conversation, and no output says which part."""
        cache = next((kwargs[name] for name in ("cache", *CACHE_ALIASES)
                      if isinstance(kwargs.get(name), self.cache_class)), None)
        held, rows = (cache.get_seq_length(), cache.batch_size) if cache is not None else (None, None)
        try:
            return super().generate(*args, **kwargs)
        except BaseException:
            if cache is not None and cache.get_seq_length() != held:
                cache.not_continuable = (f"a generate() call failed after its state took in "
                                         f"{cache.get_seq_length() - held} of the call's tokens")
            elif cache is not None and cache.batch_size != rows:
                cache.batch_select_indices(torch.arange(0, cache.batch_size, cache.batch_size // rows))
            raise

    def _sample(self, input_ids: torch.LongTensor, logits_processor, stopping_criteria: StoppingCriteriaList,
                generation_config, *args, **model_kwargs):
        """transformers' greedy / sampling loop, reading its stop flag a step late on `deferred_stop_devices`, and
        feeding the pad tokens that it appends to rows finished by EOS as padding (`FinishedRows`)."""
        if input_ids.shape[0] > 1 and any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria):
            stopping_criteria = model_kwargs["finished_rows"] = FinishedRows(stopping_criteria)
        with deferred_stop_checks(self.deferred_stop_devices):
            return super()._sample(input_ids, logits_processor, stopping_criteria, generation_config, *args,
                                   **model_kwargs)

    def _beam_search(self, *args, **model_kwargs):
        """transformers' beam search, marking the cache it leaves as not to be continued: it holds the states of the
        beams still running at the end, not those of the sequences returned (chosen among beams finished earlier)."""
        result = super()._beam_search(*args, **model_kwargs)
        if (cache := model_kwargs.get("cache")) is not None:
            cache.not_continuable = ("beam search left it holding the states of its last running beams, which are not "
                                     "the sequences it returned")
        return result

    @staticmethod
    def _refuse_packed_documents(attention_mask: torch.Tensor | None, kwargs: dict) -> None:
        """Raise where the inputs are documents packed into one row without padding (transformers'
        `DataCollatorWithFlattening`: position_ids that restart at 0 after a real token, or cu_seq_lens / seq_idx).
        The recurrent state would carry from each document into the next; nothing here resets it."""
        named = next((name for name in ("cu_seq_lens_q", "cu_seq_lens_k", "seq_idx") if kwargs.get(name) is not None),
                     None)
        position_ids = kwargs.get("position_ids")
        if named is None and position_ids is not None and position_ids.shape[-1] > 1:
            restarts = position_ids[..., 1:] == 0
            if attention_mask is not None:  # a left-padded row's first real token is at 0 after padding
                real = attention_mask[..., -position_ids.shape[-1]:].bool()  # a mask over the whole conversation
                restarts &= real[..., :-1] & real[..., 1:]
            if restarts.any():
                named = "position_ids"
        if named is not None:
            raise ValueError(
                f"{named} marks several documents packed into one row without padding (as transformers' "
                "DataCollatorWithFlattening does): not supported by this recurrent model, whose state would carry "
                "from one document into the next. Pad the documents into a batch with an attention_mask instead."
            )

    def _lm_output(self, outputs: BaseModelOutputWithPast, logits: torch.Tensor, labels: torch.LongTensor | None,
                  **kwargs) -> CausalLMOutputWithPast:
        """The causal-LM result from the backbone's outputs and the head's logits: with `labels`, the shifted
        cross-entropy (ignoring -100) as the loss."""
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache,
                                      hidden_states=outputs.hidden_states)

    def _prepare_cache_for_generation(
        self, generation_config, model_kwargs: dict, generation_mode, batch_size: int, max_cache_length: int
    ) -> None:
        # generate() builds no default cache for xLSTM (it knows only attention caches); make ours up front, so that
        # chunked prefill (`prefill_chunk_size`) and compiled decoding find a static cache from the first call.
        cache = model_kwargs.get("cache")
        expand = max(generation_config.num_beams or 1, generation_config.num_return_sequences or 1)
        if cache is not None:
            check_cache(cache, self.cache_class)  # before the cache's batch size is read, or it is expanded
            if generation_config.use_cache is False:
                raise ValueError(
                    "generate() got a `cache` and use_cache=False: without a cache, generate() feeds the whole "
                    "sequence at every step, which the state passed would absorb again. Drop one of the two."
                )
            # One state per prompt becomes one per beam / returned sequence in `_prefill`, once the input passed its
            # checks: a refused call leaves the caller's cache as it was.
            if cache.batch_size not in (batch_size, batch_size * expand):
                raise ValueError(
                    f"`cache` has batch size {cache.batch_size}, but generate() got {batch_size} sequences"
                    + (f" ({batch_size * expand} with num_beams / num_return_sequences)" if expand > 1 else "")
                    + ": pass the cache of these very sequences"
                )
            if expand > 1 and cache.batch_size == batch_size * expand != batch_size and not cache.rows_repeat(expand):
                raise ValueError(
                    f"`cache` has {expand} states per prompt, and they differ: it is the cache of other sequences "
                    "(such as the ones a generate() with num_return_sequences returned). Pass those sequences with "
                    "it, or the cache of these prompts, one state per prompt"
                )
        if cache is not None or generation_config.use_cache is False:
            return super()._prepare_cache_for_generation(
                generation_config, model_kwargs, generation_mode, batch_size, max_cache_length
            )
        model_kwargs["cache"] = self.new_generation_cache(batch_size * expand)

    def _prefill(self, input_ids: torch.LongTensor, generation_config, model_kwargs: dict,
                 is_first_iteration: bool = True):
        """transformers' prefill, after checking that a cache passed in is behind the input it continues (its state
        cannot be rolled back, and transformers would otherwise feed it tokens it already holds), and giving it one
        state per beam / returned sequence where it has one per prompt (the caller's cache, in place)."""
        cache, mask = model_kwargs.get("cache"), model_kwargs.get("attention_mask")
        held = cache.get_seq_length() if cache is not None else 0
        embeds = model_kwargs.get("inputs_embeds") if is_first_iteration else None
        given = (input_ids if embeds is None else embeds).shape[1]
        # As transformers reads it: the input is the whole conversation, of which the cache holds the first `held`
        # tokens, unless the attention mask is longer (then only the new tokens were passed). An all-ones mask was
        # dropped by then, its length kept in the config.
        mask_length = mask.shape[1] if mask is not None else getattr(generation_config, "_mask_length", -1)
        if held and (embeds is not None or mask_length == given) and given <= held:
            raise ValueError(
                f"the `cache` passed to generate() already holds {held} tokens, and the input has {given}: pass the "
                "whole conversation with at least one token the cache has not seen (or only the new tokens, with "
                "an attention_mask over the whole conversation); a recurrent state cannot be rolled back"
            )
        if held and embeds is None and mask_length > given and mask_length != held + given:
            raise ValueError(
                f"the attention_mask covers {mask_length} tokens, but the `cache` holds {held} and the input adds "
                f"{given}: with only the new tokens, the mask covers the whole conversation ({held + given})"
            )
        if generation_config.prefill_chunk_size and embeds is None:  # every chunk's ids before the first is absorbed
            check_inputs(self.config, input_ids, None, None)
        if cache is not None and input_ids.shape[0] != cache.batch_size:  # undone by `generate` if the call fails
            cache.batch_repeat_interleave(input_ids.shape[0] // cache.batch_size)
        if embeds is not None and generation_config.prefill_chunk_size:
            return self._prefill_embeddings_in_chunks(embeds[:, held:], generation_config, model_kwargs)
        return super()._prefill(input_ids, generation_config, model_kwargs, is_first_iteration)

    def _prefill_embeddings_in_chunks(self, embeds: torch.Tensor, generation_config, model_kwargs: dict):
        """The prefill of an `inputs_embeds` prompt (the part the cache has not seen), `prefill_chunk_size` positions
        at a time: transformers' chunked prefill splits input_ids only, which such a prompt lacks."""
        mask, held = model_kwargs.get("attention_mask"), model_kwargs["cache"].get_seq_length()
        for chunk in embeds.split(generation_config.prefill_chunk_size, dim=1):
            held += chunk.shape[1]
            chunk_kwargs = {**model_kwargs, "inputs_embeds": chunk,
                            "attention_mask": None if mask is None else mask[:, :held]}
            outputs = self(**self.prepare_inputs_for_generation(None, is_first_iteration=True, **chunk_kwargs),
                           return_dict=True)
        return outputs

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: XLSTMCache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        finished_rows: FinishedRows | None = None,
        **kwargs,
    ) -> dict:
        """The new tokens only (the state holds the past), the full attention mask (its tail marks padding, and
        the pad tokens appended to rows that finished, see `FinishedRows`), and the cache; no 4D mask and no
        position ids, which a recurrent model has no use for."""
        running = finished_rows.running_before_last if finished_rows is not None else None
        if running is not None and next_sequence_length == 1:
            attention_mask = running if attention_mask is None else attention_mask[:, -1:] * running
        if inputs_embeds is not None and is_first_iteration:
            embeds = inputs_embeds[:, -next_sequence_length:] if next_sequence_length else inputs_embeds
            model_inputs = {"input_ids": None, "inputs_embeds": embeds}
        else:
            ids = input_ids[:, -next_sequence_length:] if next_sequence_length else input_ids
            model_inputs = {"input_ids": ids.contiguous()}
        model_inputs.update(cache=cache, attention_mask=attention_mask)
        ignored = ("labels", "position_ids", "token_type_ids", "cache_position")
        model_inputs.update({k: v for k, v in kwargs.items() if k not in ignored and k not in model_inputs})
        return model_inputs


class XLSTMForCausalLM(XLSTMPreTrainedModel, RecurrentGenerationMixin):
    """xLSTM with a language-modelling head (soft-capped logits)."""

    _tied_weights_keys = {"lm_head.weight": "backbone.embeddings.weight"}
    cache_class = XLSTMCache

    # Decode steps on CUDA replay a captured CUDA graph (no Python or launch overhead per token): the default; turn
    # it off with `model.cuda_graphs = False` or XLSTM_HF_CUDA_GRAPHS=0. Not with PEFT adapters in the model (see
    # `has_adapter_layers`) or parts offloaded by accelerate.
    cuda_graphs: bool = True
    max_decode_graphs = 2  # one per (batch size, state dtype); each holds its own memory pool

    def __init__(self, config: XLSTMConfig):
        super().__init__(config)
        self.backbone = XLSTMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._decode_graphs: dict[tuple, DecodeGraph] = {}
        self._adapter_layers = SinceRegistration()  # adding adapters registers modules
        self.post_init()

    def new_generation_cache(self, batch_size: int) -> XLSTMCache:
        return self.backbone.new_cache(batch_size)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.backbone.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @takes_cache_aliases
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: XLSTMCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """
        Args:
            labels: (B, S) targets; the loss is the shifted cross-entropy, ignoring -100.
            logits_to_keep: Compute the head only for the last N positions (0 = all), or for the given indices.
            See [`XLSTMModel.forward`] for the others.
        """
        self._refuse_packed_documents(attention_mask, kwargs)
        if self._can_replay_decode(input_ids, inputs_embeds, cache, labels, output_hidden_states):
            logits = self._replay_decode(input_ids, attention_mask, cache)
            return CausalLMOutputWithPast(logits=logits, cache=cache)
        keep_last = logits_to_keep if isinstance(logits_to_keep, int) and labels is None else 0
        outputs = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            last_positions_to_keep=keep_last,
        )
        return self._lm_output(outputs, self._head(keep_positions(outputs.last_hidden_state, logits_to_keep)), labels,
                              **kwargs)

    def save_pretrained(self, save_directory, is_main_process: bool = True, state_dict: dict | None = None,
                        **kwargs) -> None:
        """transformers' save_pretrained, plus a generated model card (README.md) when the folder has none. Tied
        embeddings are saved twice, also from a `state_dict` passed in (the Trainer's and accelerate's saves):
        vanilla transformers' xLSTM never ties, and would leave its head random. With `push_to_hub=True` the folder
        is uploaded as saved (the files this save wrote, as transformers uploads them), card included, in one commit
        (transformers would upload its template card instead);
        `repo_id`, `private`, `token`, `commit_message`, `commit_description`, `revision`, `create_pr` as for
        `push_to_hub`. Needs the network."""
        push = kwargs.pop("push_to_hub", False)
        hub_options = {name: kwargs.pop(name) for name in ("repo_id", "private", "token", "commit_message",
                                                           "commit_description", "revision", "create_pr")
                       if name in kwargs}
        if push and is_main_process:
            from .hub import file_times  # the hub module builds on this one

            hub_options["unchanged"] = file_times(save_directory)  # the upload is of what this save writes
        if self.lm_head.weight is self.get_input_embeddings().weight:
            source = self.state_dict() if state_dict is None else state_dict
            embeddings = source.get("backbone.embeddings.weight")
            if embeddings is not None:
                # A copy, not the shared tensor, which save_pretrained would drop as an alias; ours re-ties on loading.
                state_dict = {**source, "lm_head.weight": embeddings.detach().clone()}
        super().save_pretrained(save_directory, is_main_process, state_dict, **kwargs)
        card = os.path.join(save_directory, "README.md")
        if is_main_process and not os.path.exists(card):
            from .hub import model_card  # the hub module builds on this one

            with open(card, "w", encoding="utf-8") as handle:
                handle.write(model_card(self))
        if push and is_main_process:
            from .hub import push_saved_folder

            push_saved_folder(save_directory, **hub_options)

    def push_to_hub(self, repo_id: str, tokenizer=None, base_model: str | None = None, **kwargs):
        """Upload a complete repository in one commit: sharded safetensors, config, generation config, the
        tokenizer when given, and a generated model card. Takes transformers' keywords (commit_message,
        commit_description, private, token, revision, create_pr, max_shard_size, tags); see `xlstm_hf.hub`. Needs
        the network."""
        from .hub import push_to_hub  # the hub module builds on this one

        return push_to_hub(self, repo_id, tokenizer, base_model, **kwargs)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return soft_cap(self.lm_head(x.to(self.lm_head.weight.dtype)).float(), self.config.output_logit_soft_cap)

    def _use_cuda_graphs(self) -> bool:
        return self.cuda_graphs and os.environ.get("XLSTM_HF_CUDA_GRAPHS") != "0"

    def _valid_auto_compile_criteria(self, model_kwargs: dict, generation_config) -> bool:
        # generate() would torch.compile the decode step (reduce-overhead) because the cache is static; our own CUDA
        # graph of the step does that job without the compile time, and the two must not nest.
        if self._use_cuda_graphs() and self.device.type == "cuda":
            return False
        return super()._valid_auto_compile_criteria(model_kwargs, generation_config)

    def _can_replay_decode(self, input_ids, inputs_embeds, cache, labels, output_hidden_states) -> bool:
        return (
            self._use_cuda_graphs() and not torch.compiler.is_compiling()
            and input_ids is not None and inputs_embeds is None and input_ids.is_cuda and input_ids.shape[1] == 1
            and isinstance(cache, XLSTMCache) and cache.batch_size == input_ids.shape[0]  # a fresh cache too: zeros
            and labels is None and not output_hidden_states and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled(input_ids.device.type)  # the graph runs the weights' dtype
            and not self.offloaded  # accelerate's hooks would copy weights inside the graph, from memory they free
            and not self.has_adapter_layers
        )

    @property
    def has_adapter_layers(self) -> bool:
        """Whether PEFT adapter layers sit in the model. Their switches (`disable_adapter`, `set_adapter`,
        `merge_adapter`) are Python state and in-place weight updates that a captured decode graph would not see, so
        such a model decodes eagerly (`merge_and_unload()` first for the graph's speed)."""
        return self._adapter_layers.get(lambda: any(type(m).__module__.startswith("peft.") for m in self.modules()))

    @property
    def offloaded(self) -> bool:
        """Whether accelerate keeps part of the model on disk, or on the CPU while the rest computes elsewhere (loaded
        with such a `device_map`)."""
        devices = set((getattr(self, "hf_device_map", None) or {}).values())
        return "disk" in devices or ("cpu" in devices and len(devices) > 1)

    def _replay_decode(self, input_ids, attention_mask, cache: XLSTMCache) -> torch.Tensor:
        """The decode step from a CUDA graph: one per (batch size, state dtype), captured on first use (again if the
        weights moved); a new cache borrows the graph's state tensors instead of causing a new capture."""
        key = (cache.batch_size, cache.layers[0].state[0].dtype)
        graph = self._decode_graphs.get(key)
        if graph is None or graph.weights.moved(lambda: list(self.parameters())):
            if graph is None and len(self._decode_graphs) >= self.max_decode_graphs:
                self._decode_graphs.pop(next(iter(self._decode_graphs)))
            self.backbone.pack_projections()  # the step packs them otherwise, moving the weights after capture
            step = lambda ids, mask: self._head(self.backbone.decode_step(ids, mask, cache))  # noqa: E731
            graph = self._decode_graphs[key] = DecodeGraph(step, cache, list(self.parameters()), input_ids.device)
        graph.state.lend(cache)
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask[:, -1:].bool()
        logits = graph(input_ids, mask)
        cache.seen_tokens += 1
        return logits


__all__ = ["XLSTMForCausalLM", "XLSTMModel", "XLSTMPreTrainedModel"]
