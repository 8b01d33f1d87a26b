"""bench/seqcalib.py: where an alert falls against the setpoint changes of a load-shift day."""

from __future__ import annotations

import pytest

from bench.loadshift import shift_schedule
from bench.seqcalib import after_change_coverage, alert_times


def test_the_time_after_changes_is_counted_once_and_within_the_day() -> None:
    assert after_change_coverage([3600.0, 7200.0]) == pytest.approx(3600.0 / 86400.0)
    assert after_change_coverage([3600.0, 4500.0]) == pytest.approx(2700.0 / 86400.0)  # overlapping
    assert after_change_coverage([86400.0 - 600.0]) == pytest.approx(600.0 / 86400.0)  # clipped
    # a load-shift day: a move every 3 h held 1 h, then the take-back: a third of the day
    starts = [s.at_s for s in shift_schedule(111, 24.0)]
    assert len(starts) == 16 and after_change_coverage(starts) == pytest.approx(1 / 3)


def test_an_alert_is_placed_after_the_last_change_before_it() -> None:
    out = alert_times([100.0, 3700.0, 9000.0, 5500.0], [3600.0, 7200.0], [True, False])
    assert out[0] == {"t_h": 0.028, "since_change_min": None, "change": None, "after_change": False}
    assert (
        out[1]["change"] == "move"
        and out[1]["since_change_min"] == pytest.approx(1.7)
        and out[1]["after_change"]
    )
    assert out[2]["change"] == "take-back" and out[2]["since_change_min"] == 30.0 and out[2]["after_change"]
    assert out[3]["change"] == "move" and not out[3]["after_change"]


def test_an_alerts_time_is_counted_from_the_simulators_epoch() -> None:  # bench/operating_point.py
    import datetime as dt
    from types import SimpleNamespace

    from bench import operating_point as op

    epoch = op.StationParams().epoch_datetime
    at = (epoch + dt.timedelta(hours=2, seconds=5)).astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    res = SimpleNamespace(alarms=[{"asset": "Pump2", "raised": at}])
    assert op.raised_s(res) == [("Pump2", pytest.approx(7205.0))]


def test_delays_are_grouped_by_kind_in_episode_order() -> None:
    from bench import operating_point as op

    eps = [
        {"class": "stuck", "detected": True, "delay_s": 93.0},
        {"class": "drift", "detected": False, "delay_s": 0.0},
        {"class": "stuck", "detected": True, "delay_s": 600.0},
    ]
    assert op.delays_by_kind(eps, 1) == {"stuck": [1.6, 10.0], "drift": [None]}
    assert op.delays_by_kind(eps, 2)["stuck"] == [1.55, 10.0]
