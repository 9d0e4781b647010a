"""Alembic migrations of the sipswitch database, run to head by ``Database.open()``."""
