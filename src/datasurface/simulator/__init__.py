"""The data change simulator: keeps a source database busy with realistic customer/address changes."""

from datasurface.simulator.operations import invariant_violations
from datasurface.simulator.runner import Simulator, ensure_tables, run_simulator

__all__ = ["Simulator", "ensure_tables", "invariant_violations", "run_simulator"]
