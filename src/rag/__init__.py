"""RAG adapters: offline tokenizer, embeddings, LLM, parsers and the LightRAG/RAG-Anything assembly."""
