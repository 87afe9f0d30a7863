"""Alembic migrations of the audit database (env.py and versions/)."""
