"""A directory scan (LightRAG Server's ``INPUT_DIR`` and ``POST /documents/scan``) as tasks.

Each new supported file of the tenant's input directory is copied into the uploads directory and
submitted like an upload (content hash -> doc id, so a file scanned twice is the same task or the
same document); the files of one scan form one batch. Files stay where they are: a second scan
finds them again and is answered with the same tasks or documents, never indexed twice. Files
already in the knowledge base (by their content's doc id) are skipped.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from src.core.config import Settings
from src.core.defaults import DEFAULT_TENANT
from src.core.errors import DomainError
from src.ingestion.batches import BatchService
from src.ingestion.errors import InvalidRequest
from src.ingestion.submission import Accepted, SubmissionService, SubmitOptions
from src.ingestion.uploads import adopt_file
from src.rag.knowledge import DocumentStatus
from src.rag.parsing.formats import SUPPORTED_EXTENSIONS
from src.tasks.batches import BatchRecord
from src.tasks.store import TaskStore

log = logging.getLogger(__name__)


class ScanNotConfigured(InvalidRequest):
    """No INPUT_DIR is set."""


def _listing(directory: Path, limit: int) -> list[Path]:
    if not directory.is_dir():
        return []
    found = [
        p
        for p in sorted(directory.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUPPORTED_EXTENSIONS
    ]
    return found[:limit]


class DirectoryScanner:
    def __init__(self, settings: Settings, submission: SubmissionService, batches: BatchService) -> None:
        self.settings = settings
        self.submission = submission
        self.batches = batches

    def directory_for(self, tenant: str) -> Path:
        if self.settings.input_dir is None:
            raise ScanNotConfigured("no input directory is configured (set INPUT_DIR)")
        base = Path(self.settings.input_dir)
        return base if tenant == DEFAULT_TENANT else base / tenant

    async def scan(self, tenant: str) -> BatchRecord | None:
        """Queue the directory's new files (at most MAX_BATCH_FILES per scan; scan again for more)."""
        directory = self.directory_for(tenant)
        paths = await asyncio.to_thread(_listing, directory, self.settings.max_batch_files)
        await self.submission.admit(tenant, SubmitOptions())
        accepted: list[tuple[str, Accepted]] = []
        for path in paths:
            saved = None
            try:
                saved = await adopt_file(
                    path,
                    self.submission.files,
                    TaskStore.new_task_id(),
                    max_bytes=self.settings.max_upload_bytes,
                )
                record = await self.submission.knowledge_bases.document(tenant, f"doc-{saved.sha256[:32]}")
                if record is not None and record.status == DocumentStatus.PROCESSED:
                    await self.submission.files.remove_path(saved.path)
                    continue
                accepted.append(
                    (saved.original_name, await self.submission.submit_file(tenant, saved, SubmitOptions()))
                )
            except DomainError as exc:
                log.warning("scan of tenant %s: %s not queued: %s", tenant, path.name, exc.message)
        if not accepted:
            return None
        return await self.batches.group(tenant, accepted)
