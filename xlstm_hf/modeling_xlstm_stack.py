"""The original xLSTM family (arXiv 2405.04517) for transformers: xLSTM[a:b] stacks of mLSTM and sLSTM blocks.

The module tree and parameter names are those of the `xlstm` package's `xLSTMLMModel` (`token_embedding`,
`xlstm_block_stack.blocks.{i}.xlstm...`, `xlstm_block_stack.post_blocks_norm`, `lm_head`), so its state dicts load
as they are (`XLSTMStackForCausalLM.from_xlstm_package`). Blocks, per the paper:

* mLSTM block (pre up-projection): `x + proj_down((mLSTM(q, k, v) + skip * c) * silu(z))`, where `[x_m, z] =
  proj_up(LN(x))`, `c = silu(conv1d(x_m))`, q, k from c and v from x_m through block-diagonal projections, and the
  cell output is normalised per head.
* sLSTM block (post up-projection): `x + GroupNorm(sLSTM(i, f, z, o))`, the input and forget gates from
  `silu(conv1d(LN(x)))`, z and o from LN(x) (block-diagonal per head); then `x + gated_MLP(LN(x))`.

Every norm is a LayerNorm whose scale is stored as an offset from 1 (`weight` 0 = identity), eps 1e-5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple

from .cache_xlstm_stack import XLSTMStackCache, initial_block_state
from .configuration_xlstm_stack import XLSTMStackConfig
from .kernels import mlstm, pad_gates, resolve_backend
from .kernels.slstm_torch import slstm_recurrent_sequence
from .modeling_xlstm import (RecurrentGenerationMixin, checkpoint_first_pass, execution_device, keep_positions,
                             prepare_forward, takes_cache_aliases)

ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "relu^2": lambda x: F.relu(x).square(),
    "sigmoid": torch.sigmoid,
    "swish": F.silu,
    "selu": F.selu,
}
MLSTM_EPS = 1e-6  # the mLSTM cell's denominator epsilon in the xlstm package
# LoRA targets (PEFT matches a name or a dotted suffix): every nn.Linear of the blocks, i.e. the mLSTM layer's up and
# down projections and gates and the sLSTM block's MLP. The block-diagonal q/k/v and sLSTM gate projections and the
# sLSTM recurrent kernel are no nn.Linear; PEFT cannot wrap them.
LORA_TARGET_MODULES = ["proj_up", "proj_down", "mlstm_cell.igate", "mlstm_cell.fgate"]


class XLSTMStackLayerNorm(nn.Module):
    """LayerNorm over the last dimension, or over each of `num_heads` equal groups of it (the cells' head norms);
    scale `1 + weight` (weight optional), optional bias."""

    def __init__(self, dim: int, num_heads: int = 1, weight: bool = True, bias: bool = False, eps: float = 1e-5):
        super().__init__()
        self.num_heads, self.eps = num_heads, eps
        self.weight = nn.Parameter(torch.zeros(dim)) if weight else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = x.unflatten(-1, (self.num_heads, -1))
        x = F.layer_norm(heads, heads.shape[-1:], eps=self.eps).flatten(-2)
        if self.weight is not None:
            x = x * (1.0 + self.weight)
        return x if self.bias is None else x + self.bias


class XLSTMStackHeadwiseLinear(nn.Module):
    """Block-diagonal linear map: the input split into `num_heads` blocks, each mapped by its own square matrix.
    `weight` is (num_heads, out_per_head, in_per_head), as in the xlstm package's `LinearHeadwiseExpand`."""

    def __init__(self, features: int, num_heads: int, bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        head_dim = features // num_heads
        self.weight = nn.Parameter(torch.empty(num_heads, head_dim, head_dim))
        self.bias = nn.Parameter(torch.zeros(features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("...hd,hod->...ho", x.unflatten(-1, (self.num_heads, -1)), self.weight).flatten(-2)
        return y if self.bias is None else y + self.bias


class XLSTMStackCausalConv1d(nn.Module):
    """Causal depthwise convolution over time, with its state: the last `kernel_size - 1` inputs.

    With a mask, the real positions of each row are convolved as one contiguous sequence (padding removed), so a
    padded position neither enters a window nor the state; the output at a padded position is meaningless (the
    cells ignore it).
    """

    def __init__(self, features: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(features, features, kernel_size, groups=features, bias=True)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, S, F), state (B, K-1, F), mask (B, S) bool or None -> y (B, S, F), new state (B, K-1, F)."""
        width, length, features = self.kernel_size - 1, x.shape[1], x.shape[2]
        sequence = torch.cat([state.to(x.dtype), x], dim=1)
        if mask is None:
            return self.conv(sequence.transpose(1, 2)).transpose(1, 2), sequence[:, length:]
        # Real positions first, in order (a stable sort), then the padding; the state counts as real.
        real = torch.cat([mask.new_ones(mask.shape[0], width), mask], dim=1)
        order = torch.sort((~real).to(torch.uint8), dim=1, stable=True).indices
        compact = sequence.gather(1, order[..., None].expand(-1, -1, features))
        y = self.conv(compact.transpose(1, 2)).transpose(1, 2)
        # Output j of the compact sequence belongs to the input at position order[width + j] - width.
        y = torch.empty_like(y).scatter_(1, (order[:, width:] - width)[..., None].expand_as(y), y)
        last_real = mask.sum(1, keepdim=True) + torch.arange(width, device=x.device)  # the state's K-1 inputs
        return y, compact.gather(1, last_real[..., None].expand(-1, -1, features))


class XLSTMStackMLSTMCell(nn.Module):
    """The mLSTM cell of the paper: gates from [q, k, v], the matrix memory, and the per-head output norm."""

    def __init__(self, config: XLSTMStackConfig):
        super().__init__()
        self.config = config
        inner, self.num_heads = config.mlstm_inner_dim, config.mlstm_block["mlstm"]["num_heads"]
        self.igate = nn.Linear(3 * inner, self.num_heads)
        self.fgate = nn.Linear(3 * inner, self.num_heads)
        self.igate.init_role, self.fgate.init_role = "igate", "fgate"
        self.outnorm = XLSTMStackLayerNorm(inner, num_heads=self.num_heads)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: tuple, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple]:
        B, S, _ = q.shape
        qkv = torch.cat([q, k, v], dim=-1)
        i, f = pad_gates(self.igate(qkv), self.fgate(qkv), mask)  # (B, S, NH)
        heads = lambda t: t.view(B, S, self.num_heads, -1).transpose(1, 2)  # noqa: E731
        h, state = mlstm(
            heads(q), heads(k), heads(v), i.transpose(1, 2), f.transpose(1, 2), state,
            chunk_size=self.config.chunk_size, eps=MLSTM_EPS, backend=resolve_backend(q.device),
        )
        return self.outnorm(h.transpose(1, 2).flatten(-2)), state


class XLSTMStackMLSTMLayer(nn.Module):
    """The mLSTM layer (pre up-projection): up-projection, causal convolution, mLSTM cell, learnable skip, output
    gate silu(z), down-projection."""

    def __init__(self, config: XLSTMStackConfig):
        super().__init__()
        mlstm = config.mlstm_block["mlstm"]
        inner, bias = config.mlstm_inner_dim, config.bias
        self.inner_dim = inner
        self.proj_up = nn.Linear(config.embedding_dim, 2 * inner, bias=bias)
        blocks = inner // mlstm["qkv_proj_blocksize"]
        self.q_proj = XLSTMStackHeadwiseLinear(inner, blocks, bias=bias)
        self.k_proj = XLSTMStackHeadwiseLinear(inner, blocks, bias=bias)
        self.v_proj = XLSTMStackHeadwiseLinear(inner, blocks, bias=bias)
        self.conv1d = XLSTMStackCausalConv1d(inner, mlstm["conv1d_kernel_size"])
        self.mlstm_cell = XLSTMStackMLSTMCell(config)
        self.learnable_skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, config.embedding_dim, bias=bias)
        self.proj_down.init_role = "residual_out"
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, state: tuple, mask: torch.Tensor | None) -> tuple[torch.Tensor, tuple]:
        conv_state, *cell_state = state
        x_mlstm, z = self.proj_up(x).split(self.inner_dim, dim=-1)
        conv, conv_state = self.conv1d(x_mlstm, conv_state, mask)
        conv = F.silu(conv)
        h, cell_state = self.mlstm_cell(self.q_proj(conv), self.k_proj(conv), self.v_proj(x_mlstm),
                                        tuple(cell_state), mask)
        y = self.proj_down((h + self.learnable_skip * conv) * F.silu(z))
        return self.dropout(y), (conv_state, *cell_state)


class XLSTMStackSLSTMCell(nn.Module):
    """The sLSTM cell's parameters, in the layout of the checkpoint (`slstm_block.slstm.backend`):

    * "cuda":    `_recurrent_kernel_` (NH, DH_in, 4 * DH_out), `_bias_` flat over (NH, 4, DH);
    * "vanilla": `_recurrent_kernel_` (NH, 4 * DH_out, DH_in), `_bias_` flat over (4, NH, DH).

    `recurrent_weights()` and `gate_bias()` give them in the layout the kernels take: (NH, DH, 4, DH) and (4, NH, DH).
    """

    def __init__(self, config: XLSTMStackConfig, block_index: int):
        super().__init__()
        slstm = config.slstm_block["slstm"]
        self.block_index = block_index  # the forget-gate bias initialisation depends on the depth
        self.layout, self.num_heads, self.head_dim = slstm["backend"], slstm["num_heads"], config.slstm_head_dim
        nh, dh = self.num_heads, self.head_dim
        kernel_shape = (nh, dh, 4 * dh) if self.layout == "cuda" else (nh, 4 * dh, dh)
        self._recurrent_kernel_ = nn.Parameter(torch.zeros(kernel_shape))
        self._bias_ = nn.Parameter(torch.zeros(4 * nh * dh))

    def recurrent_weights(self) -> torch.Tensor:
        nh, dh = self.num_heads, self.head_dim
        if self.layout == "cuda":
            return self._recurrent_kernel_.view(nh, dh, 4, dh)
        return self._recurrent_kernel_.view(nh, 4, dh, dh).permute(0, 3, 1, 2)

    def gate_bias(self) -> torch.Tensor:
        nh, dh = self.num_heads, self.head_dim
        if self.layout == "cuda":
            return self._bias_.view(nh, 4, dh).transpose(0, 1)
        return self._bias_.view(4, nh, dh)

    def to_layout(self, value: torch.Tensor, which: str) -> torch.Tensor:
        """A recurrent kernel (NH, DH, 4, DH) (`which="kernel"`) or gate bias (4, NH, DH) (`which="bias"`) in this
        cell's checkpoint layout: the inverse of `recurrent_weights()` / `gate_bias()`."""
        if which == "kernel":
            value = value if self.layout == "cuda" else value.permute(0, 2, 3, 1)
            return value.reshape(self._recurrent_kernel_.shape)
        return (value.transpose(0, 1) if self.layout == "cuda" else value).reshape(-1)

    def forward(self, gates_x: torch.Tensor, state: tuple, mask: torch.Tensor | None) -> tuple[torch.Tensor, tuple]:
        """gates_x (B, S, 4, NH, DH) -> h (B, S, NH, DH) and the new state (h, c, n, m). With the Triton backend
        (see `xlstm_hf.kernels.backend`), one fused kernel launch, and one for the backward under autograd;
        otherwise the PyTorch reference."""
        gates_x = gates_x + self.gate_bias().to(gates_x.dtype)
        if resolve_backend(gates_x.device) == "triton":
            from .kernels import slstm_triton

            if slstm_triton.supported(gates_x.dtype):
                return slstm_triton.slstm_triton(gates_x, self.recurrent_weights(), state, mask)
        return slstm_recurrent_sequence(gates_x, self.recurrent_weights(), state, mask)


class XLSTMStackSLSTMLayer(nn.Module):
    """The sLSTM layer: causal convolution (input and forget gates see it), block-diagonal gate projections, the
    sLSTM cell with block-diagonal recurrent weights, and a per-head GroupNorm."""

    def __init__(self, config: XLSTMStackConfig, block_index: int):
        super().__init__()
        slstm = config.slstm_block["slstm"]
        dim, nh = config.embedding_dim, slstm["num_heads"]
        self.num_heads = nh
        self.conv1d = XLSTMStackCausalConv1d(dim, slstm["conv1d_kernel_size"]) if slstm["conv1d_kernel_size"] else None
        # The xlstm package feeds `fgate` into the input gate and `igate` into the forget gate; the names are kept
        # so that its checkpoints load unchanged.
        self.fgate = XLSTMStackHeadwiseLinear(dim, nh)
        self.igate = XLSTMStackHeadwiseLinear(dim, nh)
        self.zgate = XLSTMStackHeadwiseLinear(dim, nh)
        self.ogate = XLSTMStackHeadwiseLinear(dim, nh)
        self.slstm_cell = XLSTMStackSLSTMCell(config, block_index)
        self.group_norm = XLSTMStackLayerNorm(dim, num_heads=nh, weight=slstm["group_norm_weight"])
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, state: tuple, mask: torch.Tensor | None) -> tuple[torch.Tensor, tuple]:
        conv_state, *cell_state = state
        conv = x
        if self.conv1d is not None:
            conv, conv_state = self.conv1d(x, conv_state, mask)
            conv = F.silu(conv)
        gates = torch.stack([self.fgate(conv), self.igate(conv), self.zgate(x), self.ogate(x)], dim=2)
        h, cell_state = self.slstm_cell(gates.unflatten(-1, (self.num_heads, -1)), tuple(cell_state), mask)
        y = self.group_norm(self.dropout(h.flatten(-2)))
        return y, (conv_state, *cell_state)


class XLSTMStackFeedForward(nn.Module):
    """Gated MLP of the sLSTM block: `proj_down(act(gate) * up)` with `[gate, up] = proj_up(x)`."""

    def __init__(self, config: XLSTMStackConfig):
        super().__init__()
        ff = config.slstm_block["feedforward"]
        self.ffn_dim, self.act_fn = config.ffn_dim, ACTIVATIONS[ff["act_fn"]]
        self.proj_up = nn.Linear(config.embedding_dim, 2 * self.ffn_dim, bias=ff["bias"])
        self.proj_down = nn.Linear(self.ffn_dim, config.embedding_dim, bias=ff["bias"])
        self.proj_down.init_role = "residual_out"
        self.dropout = nn.Dropout(ff["dropout"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.proj_up(x).split(self.ffn_dim, dim=-1)
        return self.dropout(self.proj_down(self.act_fn(gate) * up))


class XLSTMStackBlock(GradientCheckpointingLayer):
    """Pre-norm residual block: an mLSTM or sLSTM layer, then (sLSTM blocks with a feed-forward) the gated MLP."""

    def __init__(self, config: XLSTMStackConfig, block_type: str, block_index: int):
        super().__init__()
        self.block_type = block_type
        self.xlstm_norm = XLSTMStackLayerNorm(config.embedding_dim)
        if block_type == "mlstm":
            self.xlstm = XLSTMStackMLSTMLayer(config)
        else:
            self.xlstm = XLSTMStackSLSTMLayer(config, block_index)
        has_ffn = block_type == "slstm" and config.slstm_block["feedforward"] is not None
        self.ffn_norm = XLSTMStackLayerNorm(config.embedding_dim) if has_ffn else None
        self.ffn = XLSTMStackFeedForward(config) if has_ffn else None

    def forward(self, x: torch.Tensor, state: tuple, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple]:
        _, state = checkpoint_first_pass(self, state)
        y, state = self.xlstm(self.xlstm_norm(x), state, mask)
        x = x + y
        if self.ffn is not None:
            x = x + self.ffn(self.ffn_norm(x))
        return x, state


class XLSTMStackBlockStack(nn.Module):
    """The blocks and the norm after them (the xlstm package's `xLSTMBlockStack`)."""

    def __init__(self, config: XLSTMStackConfig):
        super().__init__()
        self.blocks = nn.ModuleList(
            [XLSTMStackBlock(config, block_type, index) for index, block_type in enumerate(config.block_types)]
        )
        self.post_blocks_norm = XLSTMStackLayerNorm(config.embedding_dim) if config.add_post_blocks_norm else \
            nn.Identity()


class XLSTMStackPreTrainedModel(PreTrainedModel):
    """The paper's initialisation and the transformers plumbing of the xLSTM[a:b] models."""

    config_class = XLSTMStackConfig
    config: XLSTMStackConfig
    base_model_prefix = "backbone"  # no such attribute: the LM holds the backbone's modules under the same names
    _no_split_modules = ["XLSTMStackBlock"]
    supports_gradient_checkpointing = True
    _is_stateful = True

    @property
    def kernel_backend(self) -> str:
        """The mLSTM and sLSTM kernels this model runs on its device: "triton" or "torch" (see
        `xlstm_hf.kernels.backend`)."""
        return resolve_backend(self.device)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        config, dim = self.config, self.config.embedding_dim
        role = getattr(module, "init_role", None)
        if role in ("igate", "fgate"):
            # Paper: mLSTM gate weights 0, input-gate bias N(0, 0.1), forget-gate bias linspace(3, 6) over the heads.
            init.zeros_(module.weight)
            if role == "igate":
                init.normal_(module.bias, mean=0.0, std=0.1)
            else:
                init.copy_(module.bias, torch.linspace(3.0, 6.0, module.out_features))
        elif isinstance(module, XLSTMStackSLSTMCell):
            self._init_slstm_cell(module)
        elif isinstance(module, XLSTMStackMLSTMLayer):
            init.ones_(module.learnable_skip)
        elif isinstance(module, XLSTMStackCausalConv1d):  # PyTorch's Conv1d default, as the xlstm package keeps
            init.kaiming_uniform_(module.conv.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.kernel_size)
            init.uniform_(module.conv.bias, -bound, bound)
        elif isinstance(module, (nn.Linear, nn.Embedding, XLSTMStackHeadwiseLinear)):
            if role == "residual_out":  # "Wang init" of the projections that write into the residual stream
                std = 2 / config.num_blocks / math.sqrt(dim)
            else:  # "small init" (Nguyen & Salazar, 2019), with the model width
                std = math.sqrt(2 / (5 * dim))
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, XLSTMStackLayerNorm):  # scale 1 + weight: 0 is the identity
            for parameter in (module.weight, module.bias):
                if parameter is not None:
                    init.zeros_(parameter)

    def _init_slstm_cell(self, cell: "XLSTMStackSLSTMCell") -> None:
        slstm, nh, dh = self.config.slstm_block["slstm"], cell.num_heads, cell.head_dim
        bound = 1 / math.sqrt(nh * dh)
        recurrent = torch.zeros(nh, dh, 4, dh)
        if slstm["recurrent_weight_init"] == "standard":
            recurrent.uniform_(-bound, bound)
        bias = torch.zeros(4, nh, dh)  # gates i, f, z, o
        if slstm["bias_init"] == "powerlaw_blockdependent":
            # Forget gate: -(-5 + 12 (j / (DH - 1)) ** (0.3 + 1.3 depth)), depth = block index / (blocks - 1).
            depth = cell.block_index / (self.config.num_blocks - 1) if self.config.num_blocks > 1 else 0.0
            bias[1] = 5.0 - 12.0 * (torch.arange(dh) / max(dh - 1, 1)) ** (0.3 + 1.3 * depth)
        elif slstm["bias_init"] == "small_init":
            bias[1] = torch.linspace(3.0, 6.0, dh)
        elif slstm["bias_init"] == "standard":
            bias.uniform_(-bound, bound)
        init.copy_(cell._recurrent_kernel_, cell.to_layout(recurrent, "kernel"))
        init.copy_(cell._bias_, cell.to_layout(bias, "bias"))


class XLSTMStackModel(XLSTMStackPreTrainedModel):
    """The xLSTM[a:b] backbone: token embedding, blocks, post-blocks norm. Returns the final hidden states."""

    def __init__(self, config: XLSTMStackConfig):
        super().__init__(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.emb_dropout = nn.Dropout(config.dropout) if config.add_embedding_dropout else nn.Identity()
        self.xlstm_block_stack = XLSTMStackBlockStack(config)
        self.gradient_checkpointing = False
        self._add_heads(config)
        self.post_init()

    def _add_heads(self, config: XLSTMStackConfig) -> None:
        """Modules a subclass adds after the backbone (initialised with it); none here."""

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.token_embedding = value

    def new_cache(self, batch_size: int, dtype: torch.dtype = torch.float32) -> XLSTMStackCache:
        """An empty state for `batch_size` sequences, each block's on that block's device."""
        devices = [execution_device(block.xlstm_norm) for block in self.xlstm_block_stack.blocks]
        return XLSTMStackCache(self.config, batch_size, device=devices, dtype=dtype)

    @takes_cache_aliases
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: XLSTMStackCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """
        Args:
            input_ids: (B, S) token ids; or `inputs_embeds` (B, S, embedding_dim), not both.
            attention_mask: (B, S) or, during generation, (B, past + S), of which the last S columns are used:
                1 for real tokens, 0 for padding. A padded position leaves every state untouched (the cells' and the
                convolutions'), so a padded row computes exactly what it computes alone.
            cache: An [`XLSTMStackCache`] to continue from; it is updated in place and returned.
            use_cache: Return the state (a new cache if none was passed). Defaults to `config.use_cache`.
            output_hidden_states: Also return the hidden states (embeddings, then every block's output; the last one
                after the post-blocks norm).
        """
        blocks = self.xlstm_block_stack.blocks
        use_cache, output_hidden_states, batch_size, length, cache, mask, states = prepare_forward(
            self, XLSTMStackCache, len(blocks), input_ids, inputs_embeds, attention_mask, cache, use_cache,
            output_hidden_states,
        )

        x = self.emb_dropout(self.token_embedding(input_ids) if inputs_embeds is None else inputs_embeds)
        hidden_states = [] if output_hidden_states else None
        for index, block in enumerate(blocks):
            if output_hidden_states:
                hidden_states.append(x)
            state = states[index]
            if state is None:
                state = initial_block_state(self.config, block.block_type, batch_size, device=x.device)
            x, states[index] = block(x, state, mask)
        x = self.xlstm_block_stack.post_blocks_norm(x)
        if output_hidden_states:
            hidden_states.append(x)

        if cache is not None:
            cache.absorb(states, length)
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            cache=cache if use_cache else None,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
        )


class XLSTMStackForCausalLM(XLSTMStackModel, RecurrentGenerationMixin):
    """xLSTM[a:b] with a language-modelling head. It holds the backbone's modules directly (no prefix), so that its
    state dict is exactly the `xlstm` package's `xLSTMLMModel`'s."""

    _tied_weights_keys = {"lm_head.weight": "token_embedding.weight"}
    cache_class = XLSTMStackCache

    def _add_heads(self, config: XLSTMStackConfig) -> None:
        self.lm_head = nn.Linear(config.embedding_dim, config.vocab_size, bias=False)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @classmethod
    def from_xlstm_package(
        cls, model_or_state_dict: nn.Module | dict[str, torch.Tensor], config=None
    ) -> "XLSTMStackForCausalLM":
        """A model holding the weights of an `xlstm` package `xLSTMLMModel` (or of its `state_dict()`, e.g. loaded
        with `torch.load`), keys unchanged.

        Args:
            model_or_state_dict: The package's model, or a state dict it saved.
            config: An [`XLSTMStackConfig`], or the package's `xLSTMLMModelConfig` (object or dict); taken from the
                model when one is given.
        """
        if isinstance(model_or_state_dict, nn.Module):
            config = model_or_state_dict.config if config is None else config
            state_dict = model_or_state_dict.state_dict()
        else:
            state_dict = model_or_state_dict
        if config is None:
            raise ValueError("from_xlstm_package needs the config that goes with a state dict")
        if not isinstance(config, XLSTMStackConfig):
            config = XLSTMStackConfig.from_xlstm_package(config)
        model = cls(config)
        model.load_state_dict(state_dict, strict=True)
        return model.eval()

    @takes_cache_aliases
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: XLSTMStackCache | None = None,
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
            See [`XLSTMStackModel.forward`] for the others.
        """
        self._refuse_packed_documents(attention_mask, kwargs)
        outputs = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        return self._lm_output(outputs, self.lm_head(keep_positions(outputs.last_hidden_state, logits_to_keep)), labels,
                              **kwargs)

    def new_generation_cache(self, batch_size: int) -> XLSTMStackCache:
        return self.new_cache(batch_size)

    def _valid_auto_compile_criteria(self, model_kwargs: dict, generation_config) -> bool:
        # transformers compiles the decode step of every model with a static cache on CUDA. Here that compile took
        # about a minute on an H200 (3 tokens in 57.7 s), and its CUDA graphs skip the in-place state updates, so a
        # short generation never earns it back: compiled only when asked for, with a compile_config.
        return generation_config.compile_config is not None and super()._valid_auto_compile_criteria(
            model_kwargs, generation_config)


def register_peft_defaults() -> bool:
    """Make `LoraConfig()` without `target_modules` work on these models (PEFT looks the names up by model_type).
    Returns False when PEFT is not installed."""
    try:
        from peft.utils import constants
    except ImportError:
        return False
    constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.setdefault("xlstm_stack", LORA_TARGET_MODULES)
    return True


__all__ = ["LORA_TARGET_MODULES", "XLSTMStackForCausalLM", "XLSTMStackModel", "XLSTMStackPreTrainedModel",
           "register_peft_defaults"]
