"""Errors of the store agent: one root and the children its lifecycle acts on."""


class AgentError(Exception):
    """Root of every error raised by the agent package."""


class SyncError(AgentError):
    """The server could not be reached or answered something unusable."""


class ResponseTooLargeError(SyncError):
    """An answer of the server is larger than ``[agent] max_response_bytes`` (it is cut off, not read)."""


class NoActiveModelError(AgentError):
    """The agent has no verified model version to score or serve yet."""


class EnrollmentError(SyncError):
    """Enrollment was refused (bad or used one-time token) or no credential is available."""


class UpdateRejectedError(AgentError):
    """A model version failed download checks, verification, staging or its health check."""


class ScoringError(AgentError):
    """Scoring the active model on the store's history failed."""


class IngestError(AgentError):
    """A sales extract could not be read at all (bad rows are quarantined, not raised)."""
