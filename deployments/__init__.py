"""Prefect deployments of the flows, with their schedules."""
