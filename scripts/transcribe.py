#!/usr/bin/env python
"""`python scripts/transcribe.py ...` runs `liteasr-hf transcribe ...` (the command installed with the package); see --help."""

from liteasr_hf.cli import run

if __name__ == "__main__":
    run("transcribe")
