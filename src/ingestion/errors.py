"""What can go wrong in a use-case of the service layer, in domain words (no HTTP status codes).

Every error carries a human message and, in ``context``, the ids a client needs to act on it
(the task that holds a document, the status of a task that cannot be cancelled...). The HTTP
layer maps each class to a status and a stable error code in one table (`api/errors.py`);
a subclass without its own entry inherits its parent's. What the knowledge base itself refuses
(provider failures, a role that cannot write, ...) is in `src/rag/errors.py`.
"""

from __future__ import annotations

from src.core.errors import DomainError


class IngestionError(DomainError):
    """Base of every expected failure of a service-layer use-case."""


# ----------------------------------------------------------------- the request itself
class InvalidRequest(IngestionError):
    """A parameter the client can fix (bad doc id, callback URL, idempotency key...)."""


class InvalidDocId(InvalidRequest):
    pass


class InvalidCallbackUrl(InvalidRequest):
    pass


class InvalidIdempotencyKey(InvalidRequest):
    pass


class IdempotencyKeyReused(InvalidRequest):
    """The Idempotency-Key was first used for a different request (other content, doc id, route,
    priority or callback); context: task_id of the original request's task."""


class QueryTooLong(InvalidRequest):
    pass


class InvalidImage(InvalidRequest):
    """A picture attached to a question is not base64, not a picture, or unreadable."""


class TooManyImages(InvalidRequest):
    pass


class ImageTooLarge(IngestionError):
    """A picture attached to a question has more bytes or pixels than allowed."""


# ----------------------------------------------------------------- the uploaded content
class MalformedUpload(IngestionError):
    """The multipart body cannot be parsed."""


class NotMultipart(MalformedUpload):
    pass


class MissingFilePart(MalformedUpload):
    pass


class TruncatedUpload(MalformedUpload):
    pass


class UndecodablePartHeader(MalformedUpload):
    """A part header (a filename, in practice) is not UTF-8, the encoding RFC 7578 prescribes."""


class PartHeadersTooLarge(MalformedUpload):
    """Part headers, boundaries and non-file fields over their bound (the parser buffers headers)."""


class MultipleFileParts(MalformedUpload):
    """More than one file part: which one is "the" document is ambiguous, so none is stored."""


class UploadTimeout(IngestionError):
    """The body stalled (no bytes for the idle timeout) or arrived below the minimum rate."""


class EmptyUpload(IngestionError):
    """The uploaded file has no bytes."""


class EmptyText(IngestionError):
    """Raw text that is empty or only whitespace."""


class TooLarge(IngestionError):
    """Over the upload byte limit or the text character limit."""


class TooManyFiles(TooLarge):
    """A batch with more file parts than MAX_BATCH_FILES: refused whole, nothing of it kept."""


class UnsupportedType(IngestionError):
    """An extension the parsers do not handle."""


class ContentMismatch(UnsupportedType):
    """The content does not match its extension (a renamed binary)."""


# ----------------------------------------------------------------- admission and conflicts
class QueueFull(IngestionError):
    """Too many tasks are waiting service-wide; the client should retry later."""


class TenantQueueFull(QueueFull):
    """Too many tasks of this tenant are waiting."""


class QueryQueueFull(QueueFull):
    """Too many query tasks are waiting service-wide (the query lane has its own bound)."""


class TenantQueryQueueFull(QueryQueueFull):
    """Too many query tasks of this tenant are waiting."""


class DocConflict(IngestionError):
    """The document id is being indexed by another live task (context: task_id)."""


class DocExists(DocConflict):
    """The document id is already indexed from other content (context: doc_id)."""


class DocDeleting(DocConflict):
    """The document id is being deleted; a new upload of it is refused until the delete ends."""


class InsufficientStorage(IngestionError):
    """Too little free disk, or the uploads directory is at its size bound; retry later."""


class TaskExists(IngestionError):
    """A task with this id already exists (a task-id collision; practically never)."""


# ----------------------------------------------------------------- tasks and documents
class TaskNotFound(IngestionError):
    """Unknown, expired, or owned by another tenant (the same answer, so nothing leaks)."""


class DocumentNotFound(IngestionError):
    pass


class NotCancellable(IngestionError):
    """The task already reached a final status (context: status)."""


class BatchNotFound(IngestionError):
    """Unknown, expired, or owned by another tenant (the same answer, so nothing leaks)."""


# ----------------------------------------------------------------- the knowledge base
class DeleteFailed(IngestionError):
    """The knowledge base could not delete the document."""


class DeleteTimedOut(IngestionError):
    """The workspace's owner did not carry out a forwarded deletion in time (it was cancelled)."""
