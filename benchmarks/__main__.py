"""``python -m benchmarks``: see ``benchmarks.run``."""
import sys

from benchmarks.run import main
from tinyseg.cli import run_main

sys.exit(run_main(main, "benchmarks"))
