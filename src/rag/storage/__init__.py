"""Storage back-ends for LightRAG beyond its file storages, and their selection by environment."""
