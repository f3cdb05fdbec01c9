"""Errors of the store agent: one root and the children its lifecycle acts on."""


class AgentError(Exception):
    """Root of every error raised by the agent package."""


class SyncError(AgentError):
    """The server could not be reached or answered something unusable."""


class NoActiveModelError(AgentError):
    """The agent has no verified model version to score or serve yet."""
