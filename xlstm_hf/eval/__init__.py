"""lm-eval integration: the `xlstm` model type and a pass-through to lm-eval's command line (needs `lm_eval`)."""

from .lm_eval_model import RECURRENT_MAX_LENGTH, XLSTMLM, run_lm_eval_cli

__all__ = ["RECURRENT_MAX_LENGTH", "XLSTMLM", "run_lm_eval_cli"]
