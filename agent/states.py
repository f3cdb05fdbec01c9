"""The update lifecycle's states and events and the whole transition table, with where each state resumes
after a crash. The handlers that run in each state are in :mod:`agent.lifecycle`."""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    IDLE = "idle"
    CHECK = "check"
    DOWNLOAD = "download"
    VERIFY = "verify"
    STAGE = "stage"
    HEALTH_CHECK = "health_check"
    ACTIVATE = "activate"
    COMMIT = "commit"
    ROLLBACK = "rollback"


class Event(enum.StrEnum):
    POLL = "poll"
    UPDATE = "update"
    NOTHING = "nothing_to_do"
    SUCCESS = "success"
    FAILURE = "failure"


# The whole lifecycle, in one place.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.IDLE, Event.POLL): State.CHECK,
    (State.CHECK, Event.UPDATE): State.DOWNLOAD,
    (State.CHECK, Event.NOTHING): State.IDLE,
    (State.CHECK, Event.FAILURE): State.IDLE,
    (State.DOWNLOAD, Event.SUCCESS): State.VERIFY,
    (State.DOWNLOAD, Event.FAILURE): State.IDLE,
    (State.VERIFY, Event.SUCCESS): State.STAGE,
    (State.VERIFY, Event.FAILURE): State.IDLE,
    (State.STAGE, Event.SUCCESS): State.HEALTH_CHECK,
    (State.STAGE, Event.FAILURE): State.IDLE,
    (State.HEALTH_CHECK, Event.SUCCESS): State.ACTIVATE,
    (State.HEALTH_CHECK, Event.FAILURE): State.IDLE,
    (State.ACTIVATE, Event.SUCCESS): State.COMMIT,
    (State.ACTIVATE, Event.FAILURE): State.ROLLBACK,
    (State.COMMIT, Event.SUCCESS): State.IDLE,
    (State.COMMIT, Event.FAILURE): State.ROLLBACK,
    (State.ROLLBACK, Event.SUCCESS): State.IDLE,
    (State.ROLLBACK, Event.FAILURE): State.IDLE,
}

# Where a state found in lifecycle.json after a crash continues.
RESUME: dict[State, State] = {
    State.IDLE: State.IDLE,
    State.CHECK: State.IDLE,
    State.DOWNLOAD: State.DOWNLOAD,  # the .part file is resumed with Range
    State.VERIFY: State.VERIFY,  # unpack again from the downloaded archive
    State.STAGE: State.VERIFY,  # a half-staged directory is discarded and staged again
    State.HEALTH_CHECK: State.HEALTH_CHECK,
    State.ACTIVATE: State.ROLLBACK,  # the switch may or may not have happened: go back to known good
    State.COMMIT: State.COMMIT,  # the new version is active: finish the bookkeeping
    State.ROLLBACK: State.ROLLBACK,
}

# States that change what the agent runs: the record is on disk before they start.
SYSTEM_CHANGING = frozenset({State.STAGE, State.ACTIVATE, State.COMMIT, State.ROLLBACK})
