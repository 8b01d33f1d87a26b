"""bench/loadshift.py's schedule: the low-carrier moves drawn on request, the five kinds unchanged."""

from __future__ import annotations

import pytest

from bench.loadshift import (
    CARRY_MIN_RPM,
    LOW_CARRY_MAX_RPM,
    LOW_UNLOAD_MAX_RPM,
    Shift,
    shift_schedule,
)
from simulator.physics import StationParams


def _moves(shifts: list[Shift]) -> list[dict[int, float]]:
    return [s.speeds for s in shifts if s.speeds is not None]


def _low_carrier(speeds: dict[int, float]) -> bool:
    carry, unload = max(speeds.values()), min(speeds.values())
    return CARRY_MIN_RPM <= carry <= LOW_CARRY_MAX_RPM and unload <= LOW_UNLOAD_MAX_RPM


def test_without_low_carrier_moves_the_schedule_is_the_five_kinds_draw_for_draw() -> None:
    # the recordings models/build.sh and the bench make stay what they were
    assert shift_schedule(111, 24.0, low_carrier=0.0) == shift_schedule(111, 24.0)
    assert shift_schedule(111, 24.0, low_carrier=0.5) != shift_schedule(111, 24.0)


def test_every_move_is_a_low_carrier_hold_when_asked_for_all() -> None:
    lo = StationParams(pumps=2).min_speed_rpm
    shifts = shift_schedule(7, 48.0, low_carrier=1.0)
    moves = _moves(shifts)
    assert len(moves) == 16 and all(_low_carrier(m) for m in moves)
    assert all(min(m.values()) >= lo and len(m) == 2 for m in moves)
    assert {max(m, key=m.__getitem__) for m in moves} == {1, 2}  # either pump carries
    # each is held an hour and given back to the PLC, as the five kinds are
    for move, back in zip(shifts[::2], shifts[1::2], strict=True):
        assert move.speeds is not None and back.speeds is None and back.at_s - move.at_s == 3600.0


def test_a_share_of_the_moves_is_drawn_as_low_carrier_holds() -> None:
    seeds = range(1, 41)
    share = [sum(map(_low_carrier, _moves(shift_schedule(s, 48.0, low_carrier=0.5)))) / 16 for s in seeds]
    base = [sum(map(_low_carrier, _moves(shift_schedule(s, 48.0)))) / 16 for s in seeds]
    assert 0.4 < sum(share) / len(share) < 0.6  # half, and the five kinds' own rare ones
    assert sum(base) / len(base) < 0.05  # about 1 move in 92 without


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_share_outside_0_to_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="low_carrier"):
        shift_schedule(1, 24.0, low_carrier=share)
