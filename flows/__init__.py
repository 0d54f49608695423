"""Prefect flows: `process_incoming` (the main job) and `retrain_models`."""
