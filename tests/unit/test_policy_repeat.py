"""The pump-energy rule given the arguments of its previous plan again: the agent cycles far
more often than the measurements change, so ``plan`` hands back the previous plan then. Every
call must give exactly what recomputing gives (``_plan``, the rule's own computation, on a twin
rule fed the same calls), state and summary included, with and without start/stop choices."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pipeline.policy import PumpEnergyRule, PumpRunState, RecommenderConfig, RecommenderPump


def rule(start_stop: bool) -> PumpEnergyRule:
    pumps = [
        RecommenderPump(
            asset=f"pump{i}", target=f"P{i}.Sp", start_stop_tag=f"P{i}.Run" if start_stop else None
        )
        for i in (1, 2)
    ]
    return PumpEnergyRule(RecommenderConfig(level_tag="l", demand_tag="d", pumps=pumps, npsh3_bep_m=3.0))


# a few argument sets, drawn with repeats: (level, demand, unloaded, planned, suction, run, price)
ARGS = st.tuples(
    st.sampled_from([2.2, 3.0, 3.9]),
    st.sampled_from([40.0, 120.0, 230.0]),
    st.sampled_from([(), ("pump1",)]),
    st.sampled_from([None, 90.0]),
    st.sampled_from([None, {"pump1": (1.2, 100.0), "pump2": (0.4, 150.0)}]),
    st.sampled_from(
        [
            None,
            {"pump1": PumpRunState(True, 10.0), "pump2": PumpRunState(True, 2.0)},
            {"pump1": PumpRunState(True, 10.0), "pump2": PumpRunState(False, 30.0)},
        ]
    ),
    st.sampled_from([None, 0.28]),
)


def state(r: PumpEnergyRule) -> tuple[Any, ...]:
    return (r.last_stopped, r.last_codes, r.last_specific_energy, r._price, r._rank, r._handover)


@settings(max_examples=40, deadline=None)
@given(st.booleans(), st.lists(st.tuples(ARGS, st.booleans()), min_size=1, max_size=12))
def test_a_repeated_plan_is_the_plan_recomputed(start_stop: bool, calls: list[Any]) -> None:
    cached, fresh = rule(start_stop), rule(start_stop)
    previous = None
    for args, repeat in calls:
        if repeat and previous is not None:
            args = previous  # the arguments of the call before (the common case in the agent)
        previous = args
        level, demand, unloaded, planned, suction, run, price = args
        got = cached.plan(level, demand, list(unloaded), planned, suction, run, price_per_kwh=price)
        speeds, flows, why, _ = fresh._plan(level, demand, list(unloaded), planned, suction, run, price)
        assert got == (speeds, flows, why)
        assert state(cached) == state(fresh)
        fresh._summary = None  # the summary recomputed, against the one reused when it repeats
        assert cached.summary() == fresh.summary() != ""


def counting(r: PumpEnergyRule) -> list[int]:
    """Count the rule's computed plans (``_plan`` calls) in the returned list's one item."""
    n = [0]
    real = r._plan

    def counted(*a: Any) -> Any:
        n[0] += 1
        return real(*a)

    r._plan = counted  # type: ignore[method-assign]
    return n


def test_repeats_are_not_recomputed_unless_the_rule_chose_among_pumps() -> None:
    for start_stop, expected in ((False, 1), (True, 3)):
        r = rule(start_stop)
        n = counting(r)
        run = {"pump1": PumpRunState(True, 10.0), "pump2": PumpRunState(True, 2.0)}
        first = r.plan(3.0, 120.0, [], None, None, run)
        first[0]["pump1"] = -1.0  # the caller's copy: the next plan is not changed by it
        again = [r.plan(3.0, 120.0, [], None, None, run) for _ in range(2)]
        assert n[0] == expected
        assert again[0] == again[1] and again[0][0]["pump1"] > 0
        r.plan(3.0, 121.0, [], None, None, run)
        assert n[0] == expected + 1  # new arguments: computed
