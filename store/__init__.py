"""Persistence, below the service: the tables (tables.py), the engine and its Alembic migrations
(engine.py, migrations/), the content-addressed image store (images.py) and the repository, the
service's unit of work over results and images (repository.py). Imports grader only."""
