"""The state store: delivery ledger, audiences, occurrences, webhook inbox and (later) publications.

SQLAlchemy Core tables with Alembic migrations; SQLite by default, PostgreSQL or MySQL for teams.
"""
