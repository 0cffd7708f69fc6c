"""Storage back-ends for LightRAG used by the service (embedded SQLite defaults and shared stores)."""
