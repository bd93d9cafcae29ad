"""A remote-code bundle: our modeling and configuration code as sibling files plus `auto_map` in config.json, so
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` runs this implementation where xlstm_hf is
not installed. transformers' dynamic loader resolves only sibling modules, so the package is flattened."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .configuration_xlstm import XLSTMConfig
from .conversion import checkpoint_model_type, companion_files, copy_files, generated_card_arguments
from .hub import model_card
from .training import save_atomically, write_atomically

PACKAGE = Path(__file__).resolve().parent
# source file (in the package) -> flat name (in the bundle)
FILES = {
    "configuration_xlstm.py": "configuration_xlstm.py",
    "modeling_xlstm.py": "modeling_xlstm.py",
    "cache_xlstm.py": "cache_xlstm.py",
    "decode_graph.py": "decode_graph.py",
    "deferred_stop.py": "deferred_stop.py",
    "packing.py": "packing.py",
    "hub.py": "hub.py",  # XLSTMForCausalLM.push_to_hub imports it
    "training.py": "training.py",
    "kernels/__init__.py": "xlstm_kernels.py",
    "kernels/backend.py": "mlstm_backend.py",
    "kernels/mlstm_torch.py": "mlstm_torch.py",
    "kernels/mlstm_triton.py": "mlstm_triton.py",
    "kernels/elementwise_triton.py": "elementwise_triton.py",
    "kernels/decode_triton.py": "decode_triton.py",
    "kernels/checks.py": "kernel_checks.py",
}
RENAMES = {"kernels": "xlstm_kernels", "backend": "mlstm_backend", "checks": "kernel_checks"}
AUTO_MAP = {
    "AutoConfig": "configuration_xlstm.XLSTMConfig",
    "AutoModel": "modeling_xlstm.XLSTMModel",
    "AutoModelForCausalLM": "modeling_xlstm.XLSTMForCausalLM",
}


def flatten(source: str) -> str:
    """Relative imports onto the flat names; the Triton import made optional (the loader refuses a bundle whose
    files import a package that is not installed, except inside try blocks)."""
    source = re.sub(r"from \.kernels\.(\w+) import", r"from .\1 import", source)
    source = re.sub(r"from \.(\w+) import", lambda m: f"from .{RENAMES.get(m.group(1), m.group(1))} import", source)
    return source.replace(
        "import triton\nimport triton.language as tl\n",
        "try:  # hidden from the loader's import check: Triton is optional\n    import triton\n"
        "    import triton.language as tl\nexcept ImportError:  # triton_available() then reports False\n    raise\n",
    )


def export_remote_code(folder: str | Path, model=None, model_folder: str | Path | None = None) -> Path:
    """Write the code into `folder` and `auto_map` into its config.json. With a model, the model is saved there
    too, the folder written atomically (`save_atomically`), with the other files of its checkpoint folder
    `model_folder` (tokenizer, ...; see `conversion.companion_files`). Without one, the folder's other files
    (weights, tokenizer, `.git`, ...) stay as they are, and each file written replaces its old version atomically."""
    folder = Path(folder)
    if model is not None:
        model_type = model.config.model_type
    else:  # the folder's own checkpoint, checked before anything is written into it
        model_type = checkpoint_model_type(folder / "config.json")

    if model_type != XLSTMConfig.model_type:  # the bundle holds the xLSTM 7B family's code only
        raise ValueError(f"the remote-code bundle runs xLSTM 7B models (model_type {XLSTMConfig.model_type!r}), "
                         f"not model_type {model_type!r}")

    def write(path: Path) -> None:
        if model is not None:
            if model_folder is not None:
                copy_files(companion_files(Path(model_folder), model), path)
            model.save_pretrained(path)
        for source, name in FILES.items():
            write_atomically(path / name, flatten((PACKAGE / source).read_text(encoding="utf-8")))
        config_file = path / "config.json"
        config = json.loads(config_file.read_text())
        config["auto_map"] = AUTO_MAP
        write_atomically(config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")
        card = path / "README.md"
        if model is not None and (arguments := generated_card_arguments(card, model)) is not None:
            # A generated card, unedited: it says how to load a folder that brings its code.
            write_atomically(card, model_card(model, **{**arguments, "remote_code": True}))

    if model is not None:
        return save_atomically(folder, write)
    folder.mkdir(parents=True, exist_ok=True)
    write(folder)
    return folder

