"""The job's commands beside the batch pipeline (engine.py): reset-batch, reset-store, setup, check."""
