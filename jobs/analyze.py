"""Ray job entry point: `python -m jobs.analyze VIDEOS --out RESULTS [...]`, the same as `fervid run`."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
