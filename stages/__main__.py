"""`python -m stages ...` is the same as the `cifar10` command."""

from stages.cli import main

main()
