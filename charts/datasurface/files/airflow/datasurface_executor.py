"""The executor of the chart's Airflow: Airflow's LocalExecutor, stopping without a hang.

Airflow's `LocalExecutor.end()` sends one stop message (None) for each worker process it finds alive, one
after the other, then waits for each of them. A worker that takes one of the first messages can exit before
the loop reaches it: it is then counted as gone, one message fewer is sent, and a worker still alive waits
for a message that never comes while the scheduler waits for it. On an upgrade the scheduler then outlives
its pod's termination grace period and is killed. Sending the messages for every worker started, before
Airflow's own, leaves each worker one to take; the spare ones are dropped with the queue.
"""

from __future__ import annotations

from airflow.executors import local_executor


class LocalExecutor(local_executor.LocalExecutor):
    def end(self) -> None:
        for _ in self.workers:
            self.activity_queue.put(None)
        super().end()
