"""`python -m jobs.bench`: the same as `fervid bench` (pipeline/bench.py)."""

import sys

from pipeline.bench import main

if __name__ == "__main__":
    sys.exit(main())
