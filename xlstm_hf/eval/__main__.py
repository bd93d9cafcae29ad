"""python -m xlstm_hf.eval ...: lm-eval's command line with the `xlstm` model (same arguments as lm-eval)."""

import sys

from . import run_lm_eval_cli

run_lm_eval_cli(sys.argv[1:])
