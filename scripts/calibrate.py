#!/usr/bin/env python
"""`python scripts/calibrate.py ...` runs `liteasr-hf calibrate ...` (the command installed with the package); see --help."""

from liteasr_hf.cli import run

if __name__ == "__main__":
    run("calibrate")
