"""The store: SQLAlchemy models, sessions and Alembic migrations. Reached only by the
controller and the API layer; the node agent never touches it."""

from corral.store.db import Store

__all__ = ["Store"]
