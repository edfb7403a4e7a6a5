"""``python -m streaming_llm.experiment``: seed 003's ``run_experiment.py`` flags, as
``streaming-llm experiment`` (the one command line, its errors and exit codes)."""

import sys

from ..cli import main

sys.exit(main(["experiment", *sys.argv[1:]]))
