"""Retraining domain of the server: scheduled and alert-triggered training runs on the central dataset.

Runs execute in worker processes (``python -m shelfcast train``), never in the API's event loop; a finished
run's bundle and run record are registered through the registry's own services.
"""
