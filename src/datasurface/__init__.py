"""DataSurface on Kubernetes: snapshot ingestion into live and forensic merge tables."""

__version__ = "0.3.0"
