"""Celery app, thin tasks, per-process model setup and the in-process runner of embedded mode."""
