"""Errors of the central server: one root, children that map to HTTP problem details in one place."""


class ServerError(Exception):
    """Root of every error raised by the server package."""

    status_code = 500
    title = "Internal server error"


class NotFoundError(ServerError):
    status_code = 404
    title = "Not found"


class ConflictError(ServerError):
    status_code = 409
    title = "Conflict"


class InvalidInputError(ServerError):
    status_code = 422
    title = "Invalid input"


class PermissionDeniedError(ServerError):
    status_code = 403
    title = "Forbidden"


class StorageLockedError(ServerError):
    """Another process already writes the server's database file."""

    title = "Database file in use"


class UnauthorizedError(ServerError):
    """No credential, or one the server does not know (or has revoked)."""

    status_code = 401
    title = "Unauthorized"


class PayloadTooLargeError(ServerError):
    status_code = 413
    title = "Payload too large"


class RangeNotSatisfiableError(ServerError):
    status_code = 416
    title = "Range not satisfiable"


class BackupError(ServerError):
    """A backup cannot be written, or a restore source is incomplete or corrupt."""

    title = "Backup or restore failed"


class OverloadedError(ServerError):
    """The server cannot take this write now (its write queue is full); nothing of it was stored."""

    status_code = 429
    title = "Too many requests"

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
