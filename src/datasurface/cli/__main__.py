"""`python -m datasurface.cli`: the same as `datasurface-job`."""

from datasurface.cli import _exit

_exit()
