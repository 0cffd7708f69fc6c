"""Durable task engine: records in Redis (store), admission and execution (runner)."""
