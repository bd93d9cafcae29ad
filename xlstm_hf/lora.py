"""LoRA target modules of the xLSTM layers, and their registration as PEFT's default for model_type "xlstm"."""

from __future__ import annotations

from transformers import PretrainedConfig

from . import modeling_xlstm_stack

# Per weight mode: the linear layers of the mLSTM layer and of the gated FFN.
LORA_TARGET_MODULES = {
    "single": ["q", "k", "v", "ogate_preact", "igate_preact", "fgate_preact", "out_proj",
               "proj_up", "proj_up_gate", "proj_down"],
    "fused": ["qkv_opreact", "ifgate_preact", "out_proj", "proj_up_gate_z", "proj_down"],
}


def lora_target_modules(config: PretrainedConfig) -> list[str]:
    """The LoRA target module names for a model with this config: the xLSTM[a:b] family's (model_type
    "xlstm_stack"), or the 7B design's, which depend on `weight_mode`."""
    if config.model_type == "xlstm_stack":
        return list(modeling_xlstm_stack.LORA_TARGET_MODULES)
    return list(LORA_TARGET_MODULES[config.weight_mode])


def register_peft_defaults() -> bool:
    """Make `LoraConfig()` without `target_modules` work on xLSTM models (PEFT looks the names up by model_type).
    Returns False when PEFT is not installed."""
    try:
        from peft.utils import constants
    except ImportError:
        return False
    names = sorted({name for names in LORA_TARGET_MODULES.values() for name in names})
    constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.setdefault("xlstm", names)
    return True
