"""Errors a user can act on.

Every error the CLI shows is a :class:`CvatArgoError`: its message names the argument, file, model or
machine at fault and, where there is one, what to do instead. The CLI prints the message and exits
with :attr:`CvatArgoError.exit_code`; it never prints a traceback for these.
"""

from __future__ import annotations


class CvatArgoError(Exception):
    """Base class: a problem the user can fix, described in one or a few lines."""

    exit_code = 2


class ArgumentError(CvatArgoError, ValueError):
    """A training argument (``epochs=...,batch_size=...``) is unknown or out of range."""


class CatalogError(CvatArgoError, ValueError):
    """A model or machine catalog entry, or a catalog file, is invalid or missing."""


class RequestError(CvatArgoError, ValueError):
    """A training request cannot be run as asked (source, model, machine, arguments)."""


class RenderDriftError(CvatArgoError):
    """Committed rendered files differ from what the code renders now."""

    exit_code = 1


class SubmitError(CvatArgoError):
    """The Argo server refused or could not be reached; the message says what to check."""

    exit_code = 3


class DatasetError(CvatArgoError, ValueError):
    """Input data is unusable: names the file, image, line or label at fault."""

    exit_code = 4


class ImageProblem(DatasetError):
    """The bytes are not an image we can use; the message says why (the dataset stage skips such images)."""


class ArchiveRefused(DatasetError):
    """An archive member is unsafe or the archive is too large; nothing of it was kept."""


class ServingError(CvatArgoError):
    """A converted model folder is incomplete, or a runtime it does not have was asked for."""


class StageFailed(CvatArgoError):
    """A stage of a local run failed; the message names it, its exit code, its log's tail and path.

    Exits 1, or 75 when the failure was transient (an outage worth retrying), or 130/143 when a
    signal stopped the run.
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConvertError(CvatArgoError):
    """The model or dataset folder cannot be converted: names the file at fault."""


class SelfTestError(CvatArgoError):
    """An export does not reproduce the trained model's detections."""

    exit_code = 5


class StageStopped(CvatArgoError):
    """A stage of a local run was not started because the run is stopping (a signal)."""


class TransientError(CvatArgoError):
    """A failure worth retrying (network, 5xx): steps exit with TRANSIENT_EXIT_CODE (75) for it."""

    exit_code = 75


def one_line(exc: BaseException) -> str:
    """An exception as one line for a log or a failure record: ours as worded, others with their type."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, CvatArgoError) else f"{type(exc).__name__}: {text}"
