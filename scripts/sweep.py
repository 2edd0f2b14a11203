#!/usr/bin/env python
"""`python scripts/sweep.py ...` runs `liteasr-hf sweep ...` (the command installed with the package); see --help."""

from liteasr_hf.cli import run

if __name__ == "__main__":
    run("sweep")
