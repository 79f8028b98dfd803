"""Prefect flows of the mlinfra platform, one module per job (``python -m flows.<job>``)."""
