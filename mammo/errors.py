"""Exceptions shared by every part of the project.

Each exception derives from `MammoError` and from the builtin that fits it, so callers can
catch either. `InputRejected` carries a quarantine reason code: an input that raises it is
moved to ``quarantine/<reason>/`` and recorded, and the run goes on with the other inputs.
"""

from __future__ import annotations

from enum import StrEnum


class ReasonCode(StrEnum):
    """Reason code of a quarantined input, stored in the quarantine log."""

    INCOMPLETE = "incomplete"
    NOT_REGULAR_FILE = "not_regular_file"
    NOT_DICOM = "not_dicom"
    CORRUPT_PIXEL_DATA = "corrupt_pixel_data"
    BLANK_IMAGE = "blank_image"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    FOR_PROCESSING = "for_processing"
    NOT_MAMMOGRAM = "not_mammogram"
    NOT_GRAYSCALE = "not_grayscale"
    NO_PIXEL_DATA = "no_pixel_data"
    MULTI_FRAME = "multi_frame"
    OVERSIZE = "oversize"
    MISSING_UID = "missing_uid"
    UID_CONFLICT = "uid_conflict"
    INVALID_SCORE = "invalid_score"


class MammoError(Exception):
    """Base class of the project's exceptions."""


class ConfigurationError(MammoError, ValueError):
    """A setting or a deployed component does not match what the system needs."""


class InputRejected(MammoError, ValueError):
    """An input file cannot be scored; `reason` gives the cause and picks its quarantine folder."""

    def __init__(self, reason: ReasonCode, message: str) -> None:
        super().__init__(message)
        self.reason = ReasonCode(reason)
        self.message = message

    def __reduce__(self):  # keep reason and message across process boundaries
        return (type(self), (self.reason, self.message))


class ModelServingError(MammoError, RuntimeError):
    """The model server failed a request after the allowed retries."""


class ModelContractError(ConfigurationError):
    """A served model's status or signature does not match the serving contract."""


class ModelRepositoryError(MammoError, RuntimeError):
    """The model repository is missing a model or contains an unusable version."""
