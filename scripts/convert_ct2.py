#!/usr/bin/env python
"""`python scripts/convert_ct2.py ...` runs `liteasr-hf convert ...`; see --help."""
from liteasr_hf.cli import run

if __name__ == "__main__":
    run("convert")
