"""xlstm_hf: xLSTM 7B (arXiv 2503.13427) as a first-class transformers model.

`import xlstm_hf` registers our classes for model_type "xlstm", so `AutoConfig`, `AutoModel` and
`AutoModelForCausalLM` return them, also for checkpoints saved by transformers' built-in xLSTM or by NX-AI.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache_xlstm import XLSTMCache
from .configuration_xlstm import XLSTMConfig
from .kernels import set_backend as set_kernel_backend
from .lora import LORA_TARGET_MODULES, lora_target_modules, register_peft_defaults
from .modeling_xlstm import XLSTMForCausalLM, XLSTMModel, XLSTMPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register("xlstm", XLSTMConfig, exist_ok=True)
AutoModel.register(XLSTMConfig, XLSTMModel, exist_ok=True)
AutoModelForCausalLM.register(XLSTMConfig, XLSTMForCausalLM, exist_ok=True)
register_peft_defaults()

__all__ = [
    "LORA_TARGET_MODULES",
    "XLSTMCache",
    "XLSTMConfig",
    "XLSTMForCausalLM",
    "XLSTMModel",
    "XLSTMPreTrainedModel",
    "__version__",
    "lora_target_modules",
    "set_kernel_backend",
]
