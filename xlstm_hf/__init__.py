"""xlstm_hf: xLSTM 7B (arXiv 2503.13427) as a first-class transformers model.

`import xlstm_hf` registers our classes for model_type "xlstm", so `AutoConfig`, `AutoModel` and
`AutoModelForCausalLM` return them, also for checkpoints saved by transformers' built-in xLSTM or by NX-AI; and
`XLSTMStackConfig` / `XLSTMStackModel` / `XLSTMStackForCausalLM` for model_type "xlstm_stack", the original xLSTM[a:b]
family (arXiv 2405.04517) with the `xlstm` package's checkpoints (docs/xlstm_stack.md).
"""

from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache_xlstm import XLSTMCache
from .cache_xlstm_stack import XLSTMStackCache
from .configuration_xlstm import XLSTMConfig
from .configuration_xlstm_stack import XLSTMStackConfig
from .kernels import set_backend as set_kernel_backend
from .lora import LORA_TARGET_MODULES, lora_target_modules, register_peft_defaults
from .modeling_xlstm import XLSTMForCausalLM, XLSTMModel, XLSTMPreTrainedModel
from .modeling_xlstm_stack import XLSTMStackForCausalLM, XLSTMStackModel, XLSTMStackPreTrainedModel
from .modeling_xlstm_stack import register_peft_defaults as register_stack_peft_defaults

__version__ = "0.1.0"

AutoConfig.register("xlstm", XLSTMConfig, exist_ok=True)
AutoModel.register(XLSTMConfig, XLSTMModel, exist_ok=True)
AutoModelForCausalLM.register(XLSTMConfig, XLSTMForCausalLM, exist_ok=True)
# The original xLSTM[a:b] family (arXiv 2405.04517), the xlstm package's xLSTMLMModel.
AutoConfig.register("xlstm_stack", XLSTMStackConfig, exist_ok=True)
AutoModel.register(XLSTMStackConfig, XLSTMStackModel, exist_ok=True)
AutoModelForCausalLM.register(XLSTMStackConfig, XLSTMStackForCausalLM, exist_ok=True)
register_stack_peft_defaults()
register_peft_defaults()


def default_model_path() -> Path:
    """The folder of the small xLSTM shipped with xlstm_hf (trained by this project on the Python standard library,
    see its README.md), loadable offline with `from_pretrained`; the default of `xlstm-hf generate` and the
    examples. Raises FileNotFoundError when the installation lacks it."""
    path = Path(__file__).resolve().parent / "default_model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the default model is missing from this installation ({path}): reinstall xlstm_hf")
    return path


__all__ = [
    "LORA_TARGET_MODULES",
    "XLSTMCache",
    "XLSTMConfig",
    "XLSTMForCausalLM",
    "XLSTMModel",
    "XLSTMPreTrainedModel",
    "XLSTMStackCache",
    "XLSTMStackConfig",
    "XLSTMStackForCausalLM",
    "XLSTMStackModel",
    "XLSTMStackPreTrainedModel",
    "__version__",
    "default_model_path",
    "lora_target_modules",
    "set_kernel_backend",
]
