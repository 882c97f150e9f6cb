"""python -m tunelab.gpu_check: the GPU check on a machine where tunelab is not installed
(PYTHONPATH=src; only the standard library is needed until --bundle is unpacked)."""

import argparse
import sys

from tunelab.gpu_check import __doc__ as doc
from tunelab.gpu_check import add_arguments, run_check

parser = argparse.ArgumentParser(
    prog="python -m tunelab.gpu_check",
    description=doc,
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
add_arguments(parser)
sys.exit(run_check(parser.parse_args(), sys.argv[1:], "python3 -m tunelab.gpu_check"))
