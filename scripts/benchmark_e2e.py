#!/usr/bin/env python
"""`python scripts/benchmark_e2e.py ...` runs `liteasr-hf benchmark-e2e ...`; see --help."""
from liteasr_hf.cli import run

if __name__ == "__main__":
    run("benchmark-e2e")
