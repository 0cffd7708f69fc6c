"""Compatibility shim: LightRAG's batch pipeline is no longer driven by this service.

Each task now indexes its own document through `src.ingestion.indexer.DocumentIndexer`
(no pass barrier, per-document cancel and progress). What used to live here - the
`PipelineCoordinator` that ran `apipeline_process_enqueue_documents` and the `DocumentGuard`
that matched prompt text to stop a cancelled document's LLM calls - is gone. This module only
keeps the name of the deletion entry point for callers written against the coordinator
(`engine.coordinator.delete(doc_id)` in api/routes/documents.py): it is the indexer itself.
"""

from __future__ import annotations

from src.ingestion.indexer import DocumentIndexer

#: ``coordinator.delete(doc_id) -> DeletionResult`` keeps working: the indexer has that method.
DocumentDeleter = DocumentIndexer

__all__ = ["DocumentDeleter"]
