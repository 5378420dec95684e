"""Exceptions raised by rag. Every message says what was received and what to do."""
from __future__ import annotations

__all__ = ["RagError", "BadInput", "IndexNotFound", "IndexFormat", "IndexStale", "IndexBusy", "ModelError"]


class RagError(Exception):
    """Base class: a problem a user can act on. The CLI prints it on one line and exits 1."""


class BadInput(RagError):
    """A page, folder, question or option that cannot be used as given."""


class IndexNotFound(RagError):
    """No index folder (or no manifest in it) where one was expected."""


class IndexFormat(RagError):
    """An index folder that is corrupt, or was built by another version, model or dimension."""


class IndexStale(RagError):
    """An index built from seed pages that have changed since."""


class IndexBusy(RagError):
    """Another process is writing the index folder (and we were asked not to wait for it)."""


class ModelError(RagError):
    """The encoder model (or its bundled weight file) could not be read or loaded."""
