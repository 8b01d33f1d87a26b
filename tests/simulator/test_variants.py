"""Perturbed plant variants: deterministic, really different, and the defaults untouched."""

from __future__ import annotations

import pytest

from simulator.physics import Plant, PlantVariant, StationParams


def test_the_default_plant_is_unchanged_by_the_variant_machinery() -> None:
    a, b = Plant(seed=4, permissive=True), Plant(seed=4, permissive=True, variant=None)
    a.run(600), b.run(600)
    assert a.variant is None and a.pump_params == (StationParams().pump,) * 2
    assert a.energy_kwh == b.energy_kwh and a.level == b.level
    assert a.oracle_speeds() == [a.oracle_speed()] * 2


def test_a_variant_is_drawn_from_its_seed_and_perturbs_every_part() -> None:
    v, again, other = PlantVariant.draw(7), PlantVariant.draw(7), PlantVariant.draw(8)
    assert v == again and v != other
    nominal = StationParams()
    for p in v.pumps:
        assert 0.7 < p.shutoff_head_m / nominal.pump.shutoff_head_m < 1.16
        assert 0.84 < p.head_coeff / nominal.pump.head_coeff < 1.16
        assert p != nominal.pump
    trimmed = v.pumps[v.trimmed_pump - 1]
    assert 0.92 <= v.trim_ratio <= 0.97 and trimmed.bep_flow_m3h < nominal.pump.bep_flow_m3h * 1.15 * 0.97
    assert v.static_head_m != nominal.static_head_m and v.tank_area_m2 != nominal.tank_area_m2


def test_a_variant_plant_runs_differently_and_its_oracle_keeps_min_flow() -> None:
    nominal, variant = Plant(seed=1, permissive=True), Plant(seed=1, permissive=True, variant_seed=3)
    nominal.run(1800), variant.run(1800)
    assert variant.q != pytest.approx(nominal.q, rel=0.02)
    assert variant.params.tank_area_m2 == PlantVariant.draw(3).tank_area_m2
    speeds = variant.oracle_speeds()
    assert len(speeds) == 2 and speeds[0] != speeds[1]  # different pumps, different speeds
    with pytest.raises(ValueError, match="variant has 2 pumps"):
        Plant(StationParams(pumps=3), variant=PlantVariant.draw(3))
