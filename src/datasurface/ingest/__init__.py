"""The ingest side: check the source against the model, take a consistent snapshot, stage it."""
