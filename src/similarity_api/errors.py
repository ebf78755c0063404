"""The domain exception tree. Nothing here knows about HTTP; problems.py maps these to responses."""

from __future__ import annotations


class SimilarityError(Exception):
    """Base of every error this package raises on purpose."""


# --- build-time errors -------------------------------------------------------------------------


class InputError(SimilarityError):
    """An input file is missing, unreadable or has the wrong shape. The message names the file."""


class BuildError(SimilarityError):
    """The build cannot produce an artifact from otherwise valid input (e.g. nothing to index)."""


# --- artifact errors ---------------------------------------------------------------------------


class ArtifactError(SimilarityError):
    """An artifact is missing, corrupt or of an unknown format. The message says what to run.

    ``public`` is the same message without filesystem paths, for HTTP bodies.
    """

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public or message


# --- query-time errors -------------------------------------------------------------------------


class UnknownUserError(SimilarityError):
    """The customer is not in the index at all."""

    #: The version of the index that was asked, when whoever catches the error knows it.
    index_version: str | None = None

    def __init__(self, user_handle: int) -> None:
        super().__init__(f"customer {user_handle} is not known to the index")
        self.user_handle = user_handle


class NoComparableActivityError(SimilarityError):
    """The customer is known, but none of their activity survived into the feature space."""

    #: The version of the index that was asked, when whoever catches the error knows it.
    index_version: str | None = None

    def __init__(self, user_handle: int) -> None:
        super().__init__(
            f"customer {user_handle} is known but has no comparable activity "
            "(no usable course views, interests or assessments), so has no neighbours"
        )
        self.user_handle = user_handle


class EmptyProfileError(SimilarityError):
    """A described profile contains nothing the index knows."""

    #: The version of the index that was asked, when whoever catches the error knows it.
    index_version: str | None = None

    def __init__(self, ignored: dict[str, list[str]]) -> None:
        super().__init__(
            "the profile contains no tag, course, interest or assessment the index knows"
        )
        self.ignored = ignored


class IndexNotReadyError(SimilarityError):
    """No verified index is loaded yet (or the last load failed)."""


class ReloadError(SimilarityError):
    """A reload was asked for but the new artifact failed to load; the old one keeps serving."""
