"""Shell scripts read as the commands they run, for tests that check what a script or a workflow step does
without running it."""

from __future__ import annotations

import shlex


def commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script, one per line, as argv lists (a line that does not split on its
    own, inside a multi-line string, is no command of its own)."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        try:
            argv = shlex.split(line, comments=True)
        except ValueError:
            continue
        if argv:
            found.append(argv)
    return found
