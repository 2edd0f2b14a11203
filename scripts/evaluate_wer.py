#!/usr/bin/env python
"""`python scripts/evaluate_wer.py ...` runs `liteasr-hf evaluate ...`; see --help.

Not named evaluate.py: Python puts this folder first on sys.path, where that name would shadow the Hugging Face
`evaluate` library the command scores WER with.
"""
from liteasr_hf.cli import run

if __name__ == "__main__":
    run("evaluate")
