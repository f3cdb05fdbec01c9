"""The lifecycle transition table: complete, bounded, and with a resume rule for every state."""

from __future__ import annotations

from agent.lifecycle import Lifecycle
from agent.states import RESUME, SYSTEM_CHANGING, TRANSITIONS, Event, State


def test_every_state_has_a_handler_and_outgoing_transition() -> None:
    """Each state has exactly one handler and at least one transition out of it."""
    handlers = {name[3:] for name in dir(Lifecycle) if name.startswith("on_")}
    assert handlers == {s.value for s in State}
    assert {s for s, _e in TRANSITIONS} == set(State)


def test_every_path_returns_to_idle() -> None:
    """From any state, following any events, IDLE is reached without a cycle avoiding it."""
    for start in State:
        seen: set[State] = set()
        frontier = [start]
        while frontier:
            state = frontier.pop()
            if state in seen or (state == State.IDLE and state != start):
                continue
            seen.add(state)
            frontier += [nxt for (s, _e), nxt in TRANSITIONS.items() if s == state]
        # IDLE's only way forward is a poll, which starts a bounded update run.
        assert State.IDLE in {nxt for (s, _e), nxt in TRANSITIONS.items() if s in seen} | {start}


def test_failures_before_the_switch_never_roll_back() -> None:
    """A failure before ACTIVATE returns to IDLE; after it, the way out is ROLLBACK."""
    for (state, event), nxt in TRANSITIONS.items():
        if event == Event.FAILURE and state in (State.ACTIVATE, State.COMMIT):
            assert nxt == State.ROLLBACK
        elif event == Event.FAILURE:
            assert nxt == State.IDLE


def test_resume_rules_cover_every_state_and_never_resume_mid_switch() -> None:
    """After a crash every state has a resume state; a crash during ACTIVATE rolls back."""
    assert set(RESUME) == set(State)
    assert RESUME[State.ACTIVATE] == State.ROLLBACK
    assert RESUME[State.COMMIT] == State.COMMIT
    assert {State.STAGE, State.ACTIVATE, State.COMMIT, State.ROLLBACK} <= SYSTEM_CHANGING
