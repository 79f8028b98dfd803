"""``python -m mlinfra_serving``: the same as ``mlinfra-serve``."""

from mlinfra_serving.cli import main

main()
