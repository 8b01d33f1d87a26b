"""The short soak in CI (``make soak`` runs 100,000 cycles): see tests/soak/soak.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak.soak import soak

pytestmark = pytest.mark.timeout(240)


async def test_short_soak_leaks_nothing_and_audits_every_change(tmp_path: Path) -> None:
    report = await soak(4000, tmp_path / "state")
    print(report.table())
    assert report.problems() == []
    assert report.changed_decisions > 10 and report.plant_writes > 0  # the schedule made it act
