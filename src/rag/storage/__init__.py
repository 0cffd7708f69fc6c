"""Storage back-ends for LightRAG: the embedded SQLite defaults (incremental, off-loop), a PostgreSQL
graph without AGE, and the selection of storages by environment."""
