"""`python -m infer_bench.cli ...`: the `infer-bench` command (backends/launch.py starts the
engine deployments of a run as `python -m infer_bench.cli serve ...`)."""

import sys

from .main import main

sys.exit(main())
