#!/usr/bin/env python
"""`python scripts/benchmark.py ...` runs `liteasr-hf benchmark ...`; see --help."""
from liteasr_hf.cli import run

if __name__ == "__main__":
    run("benchmark")
