"""The local knowledge-base engine: one LightRAG (+ RAG-Anything) per tenant, a per-document
indexer, grouped merges, and answering queries."""
