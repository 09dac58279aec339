"""Named fault points for crash-safety and concurrency tests.

When env `DATASURFACE_TEST_KILL_AT` names a point the job reaches, the job SIGKILLs itself there,
exactly as an OOM kill or a node loss would. `DATASURFACE_TEST_PAUSE_AT=<point>=<seconds>` sleeps
there instead (to hold a stream while another run starts). Production runs set neither.
"""

from __future__ import annotations

import os
import signal
import time

KILL_ENV = "DATASURFACE_TEST_KILL_AT"
PAUSE_ENV = "DATASURFACE_TEST_PAUSE_AT"


def killpoint(name: str) -> None:
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        point, _, seconds = pause.rpartition("=")
        if point == name:
            time.sleep(float(seconds))
