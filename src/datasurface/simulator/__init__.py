"""The data change simulator: keeps a source database busy with realistic customer/address changes."""

from datasurface.simulator.runner import Simulator, run_simulator
from datasurface.simulator.tables import ensure_tables, invariant_violations

__all__ = ["Simulator", "ensure_tables", "invariant_violations", "run_simulator"]
