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
