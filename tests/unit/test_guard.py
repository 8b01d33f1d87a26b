"""Tests for agent.pipeline.guard: a table of every reason, config refusals, the hold tracker,
and property tests that no input whatsoever gets an unsafe write past the Guard.

The property tests check every write against an oracle written from ARCHITECTURE.md's "Safety of
write-back", independently of the Guard's own code path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.pipeline.guard import (
    Guard,
    GuardConfig,
    GuardDecision,
    GuardInputs,
    HoldTracker,
    Reason,
    SetpointTarget,
    max_step,
    permissive_on,
)
from agent.types import Action, Decision, Quality, Recommendation, Sample, Value

SP = "P1.speed_sp"
REC_TAG = "P1.speed_rec"
PERM = "P1.remote"
OTHER = "P1.valve_sp"
NOW = 1000.0
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def target(**kw: Any) -> SetpointTarget:
    base: dict[str, Any] = dict(
        tag=SP,
        recommendation_tag=REC_TAG,
        min=20.0,
        max=50.0,
        rate_per_min=6.0,
        deadband=0.2,
        ttl_s=10.0,
        max_input_age_s=5.0,
    )
    base.update(kw)
    return SetpointTarget(**base)


def config(**kw: Any) -> GuardConfig:
    base: dict[str, Any] = dict(
        writes_enabled=True,
        mode="auto",
        allow_list=[SP, REC_TAG, OTHER],
        permissive_tag=PERM,
        targets=[target()],
    )
    base.update(kw)
    return GuardConfig(**base)


def sample(tag: str, value: Value, *, age: float = 0.5, quality: Quality | None = None) -> Sample:
    return Sample(tag, value, quality or Quality.good(), T0, NOW - age)


def rec(
    value: float = 42.0, *, tag: str = SP, age: float = 1.0, ttl: float = 10.0, **kw: Any
) -> Recommendation:
    return Recommendation(tag, value, "energy", "pump_energy", NOW - age, NOW - age + ttl, T0, **kw)


def inputs(**kw: Any) -> GuardInputs:
    base: dict[str, Any] = dict(
        now=NOW,
        recommendation=rec(),
        permissive=sample(PERM, True),
        readback=sample(SP, 40.0),
        input_qualities={"P1.flow": Quality.good(), "P1.pressure": Quality.good()},
        inputs_mono=NOW - 1.0,
        model_healthy=True,
        audit_ok=True,
        stopping=False,
        last_verify_ok=True,
        last_write_at=None,
    )
    base.update(kw)
    return GuardInputs(**base)


# --------------------------------------------------------------------------- every reason


@dataclass(frozen=True)
class Case:
    name: str
    inp: dict[str, Any]
    action: Action
    reasons: tuple[str, ...]  # exact reasons expected
    applied: float | None = None
    cfg: dict[str, Any] | None = None


CASES = [
    Case("passes as is", {}, Action.WRITE, (), 42.0),
    Case("clamp to max", {"recommendation": rec(60.0), "readback": sample(SP, 48.0)},
         Action.CLAMP, ("clamped to max: 50",), 50.0),
    Case("clamp to min", {"recommendation": rec(10.0), "readback": sample(SP, 22.0)},
         Action.CLAMP, ("clamped to min: 20",), 20.0),
    Case("rate limited by elapsed time", {"recommendation": rec(49.0), "last_write_at": NOW - 10.0},
         Action.CLAMP, ("rate limited: 6/min",), 41.0),
    Case("rate limited downward", {"recommendation": rec(21.0), "last_write_at": NOW - 30.0},
         Action.CLAMP, ("rate limited: 6/min",), 37.0),
    Case("elapsed capped at one minute", {"recommendation": rec(49.0), "last_write_at": NOW - 600.0},
         Action.CLAMP, ("rate limited: 6/min",), 46.0),
    Case("no previous write: one minute's worth", {"recommendation": rec(49.0)},
         Action.CLAMP, ("rate limited: 6/min",), 46.0),
    Case("clamp and rate limit", {"recommendation": rec(1e300)},
         Action.CLAMP, ("clamped to max: 50", "rate limited: 6/min"), 46.0),
    Case("read-back above max, back within reach",
         {"recommendation": rec(45.0), "readback": sample(SP, 52.0)},
         Action.CLAMP, ("rate limited: 6/min",), 46.0),
    Case("read-back above max, out of reach", {"recommendation": rec(45.0), "readback": sample(SP, 60.0)},
         Action.HOLD, ("read-back outside limits: [20, 50] beyond the rate limit",)),
    Case("inside deadband", {"recommendation": rec(40.15)}, Action.HOLD, ("inside deadband",)),
    Case("clamped value inside deadband", {"recommendation": rec(99.0), "readback": sample(SP, 49.9)},
         Action.HOLD, ("inside deadband",)),
    Case("rate allows nothing yet",
         {"last_write_at": NOW, "readback": sample(SP, 40.0, age=0.0)}, Action.HOLD,
         ("rate limit allows no change yet",)),
    Case("read-back pending after a write", {"last_write_at": NOW - 0.2}, Action.HOLD, ("read-back pending",)),
    Case("permissive off", {"permissive": sample(PERM, False)}, Action.HOLD, ("permissive off",)),
    Case("permissive zero", {"permissive": sample(PERM, 0)}, Action.HOLD, ("permissive off",)),
    Case("permissive 0.0", {"permissive": sample(PERM, 0.0)}, Action.HOLD, ("permissive off",)),
    Case("permissive NaN", {"permissive": sample(PERM, math.nan)}, Action.HOLD, ("permissive off",)),
    Case("permissive string", {"permissive": sample(PERM, "on")}, Action.HOLD,
         ("permissive off: value is not boolean",)),
    Case("permissive missing", {"permissive": None}, Action.HOLD, ("permissive off: no sample",)),
    Case("permissive BAD", {"permissive": sample(PERM, True, quality=Quality.bad("timeout"))},
         Action.HOLD, ("permissive off: BAD (timeout)",)),
    Case("permissive UNCERTAIN", {"permissive": sample(PERM, True, quality=Quality.uncertain("held"))},
         Action.HOLD, ("permissive off: UNCERTAIN (held)",)),
    Case("permissive stale", {"permissive": sample(PERM, True, age=5.01)}, Action.HOLD,
         ("permissive off: stale",)),
    Case("permissive of another tag", {"permissive": sample("P2.remote", True)}, Action.HOLD,
         ("permissive off: sample is for tag 'P2.remote', not 'P1.remote'",)),
    Case("permissive 1 is on", {"permissive": sample(PERM, 1)}, Action.WRITE, (), 42.0),
    Case("input BAD", {"input_qualities": {"P1.flow": Quality.bad("timeout"), "P1.pressure": Quality.good()}},
         Action.HOLD, ("input BAD: timeout (P1.flow)",)),
    Case("input UNCERTAIN", {"input_qualities": {"P1.flow": Quality.uncertain("last usable")}},
         Action.HOLD, ("input UNCERTAIN: last usable (P1.flow)",)),
    Case("two inputs BAD, sorted by tag",
         {"input_qualities": {"b": Quality.bad("stale"), "a": Quality.bad("exception 02")}},
         Action.HOLD, ("input BAD: exception 02 (a)", "input BAD: stale (b)")),
    Case("no input qualities", {"input_qualities": {}}, Action.HOLD, ("input qualities unknown",)),
    Case("clock NaN", {"now": math.nan}, Action.HOLD,
         ("time not finite: now=nan", "permissive off: stale", "inputs stale", "recommendation expired",
          "read-back unavailable: stale")),
    Case("permissive time NaN", {"permissive": sample(PERM, True, age=math.nan)}, Action.HOLD,
         ("permissive off: stale",)),
    Case("permissive time +Inf", {"permissive": sample(PERM, True, age=-math.inf)}, Action.HOLD,
         ("permissive off: stale",)),
    Case("read-back time +Inf", {"readback": sample(SP, 40.0, age=-math.inf)}, Action.HOLD,
         ("read-back unavailable: stale",)),
    Case("inputs time NaN", {"inputs_mono": math.nan}, Action.HOLD, ("inputs stale",)),
    Case("recommendation created at +Inf", {"recommendation": rec(age=-math.inf)}, Action.HOLD,
         ("recommendation expired",)),
    Case("recommendation expiry NaN", {"recommendation": rec(ttl=math.nan)}, Action.HOLD,
         ("recommendation expired",)),
    Case("last write time NaN", {"last_write_at": math.nan}, Action.HOLD, ("read-back pending",)),
    Case("last write at -Inf is long ago", {"recommendation": rec(49.0), "last_write_at": -math.inf},
         Action.CLAMP, ("rate limited: 6/min",), 46.0),
    Case("policy flagged inputs", {"recommendation": rec(inputs_good=False)}, Action.HOLD, ("inputs not GOOD",)),
    Case("inputs stale", {"inputs_mono": NOW - 5.01}, Action.HOLD, ("inputs stale",)),
    Case("inputs age unknown", {"inputs_mono": None}, Action.HOLD, ("inputs stale",)),
    Case("expired by its own expiry", {"recommendation": rec(age=3.0, ttl=3.0)}, Action.HOLD,
         ("recommendation expired",)),
    Case("expired by the target's ttl", {"recommendation": rec(age=10.0, ttl=100.0)}, Action.HOLD,
         ("recommendation expired",)),
    Case("model unhealthy", {"model_healthy": False}, Action.HOLD, ("model unhealthy",)),
    Case("writes disabled", {}, Action.HOLD, ("writes disabled",), cfg={"writes_enabled": False}),
    Case("mode shadow", {}, Action.HOLD, ("mode shadow",), cfg={"mode": "shadow"}),
    Case("audit unavailable", {"audit_ok": False}, Action.HOLD, ("audit unavailable",)),
    Case("read-back mismatch", {"last_verify_ok": False}, Action.HOLD, ("read-back mismatch",)),
    Case("stopping", {"stopping": True}, Action.HOLD, ("stopping",)),
    Case("no recommendation", {"recommendation": None}, Action.HOLD, ("no recommendation",)),
    Case("read-back missing", {"readback": None}, Action.HOLD, ("read-back unavailable: no sample",)),
    Case("read-back BAD", {"readback": sample(SP, 40.0, quality=Quality.bad("timeout"))}, Action.HOLD,
         ("read-back unavailable: BAD (timeout)",)),
    Case("read-back stale", {"readback": sample(SP, 40.0, age=6.0)}, Action.HOLD,
         ("read-back unavailable: stale",)),
    Case("read-back NaN", {"readback": sample(SP, math.nan)}, Action.HOLD,
         ("read-back unavailable: not a finite number",)),
    Case("read-back text", {"readback": sample(SP, "40")}, Action.HOLD,
         ("read-back unavailable: not a finite number",)),
    Case("read-back of another tag", {"readback": sample(OTHER, 40.0)}, Action.HOLD,
         ("read-back unavailable: sample is for tag 'P1.valve_sp', not 'P1.speed_sp'",)),
    Case("NaN", {"recommendation": rec(math.nan)}, Action.REJECT, ("value not finite: nan",)),
    Case("+Inf", {"recommendation": rec(math.inf)}, Action.REJECT, ("value not finite: inf",)),
    Case("-Inf", {"recommendation": rec(-math.inf)}, Action.REJECT, ("value not finite: -inf",)),
    Case("wrong target", {"recommendation": rec(tag=OTHER)}, Action.REJECT,
         ("wrong target: for 'P1.valve_sp', not 'P1.speed_sp'",)),
    Case("not allow-listed", {"recommendation": rec(tag="P1.trip")}, Action.REJECT,
         ("not on allow-list: 'P1.trip'", "wrong target: for 'P1.trip', not 'P1.speed_sp'")),
    Case("REJECT wins over HOLD", {"recommendation": rec(math.nan), "stopping": True}, Action.REJECT,
         ("value not finite: nan",)),
    Case("every HOLD reason at once",
         {"stopping": True, "audit_ok": False, "last_verify_ok": False, "permissive": None,
          "model_healthy": False, "input_qualities": {"f": Quality.bad("timeout")}, "inputs_mono": None,
          "recommendation": rec(inputs_good=False, age=20.0), "readback": None},
         Action.HOLD,
         ("writes disabled", "mode shadow", "stopping", "audit unavailable", "read-back mismatch",
          "permissive off: no sample", "model unhealthy", "input BAD: timeout (f)", "inputs not GOOD",
          "inputs stale", "recommendation expired", "read-back unavailable: no sample"),
         cfg={"writes_enabled": False, "mode": "shadow"}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_reason(case: Case) -> None:
    cfg = config(**(case.cfg or {}))
    gd = Guard(cfg).decide(SP, inputs(**case.inp))
    assert gd.action is case.action
    assert gd.reasons == case.reasons
    assert gd.applied_value == case.applied
    assert gd.target == SP
    assert (gd.write_tag == SP) == gd.writes
    assert gd.decision.recommendation is case.inp.get("recommendation", gd.decision.recommendation)
    for reason in gd.reasons:
        assert isinstance(Reason.of(reason), Reason)


def test_unknown_target_is_rejected() -> None:
    gd = Guard(config()).decide("P9.speed_sp", inputs())
    assert gd.action is Action.REJECT
    assert gd.reasons == ("unknown target: 'P9.speed_sp' is not configured",)
    assert gd.write_tag is None


def test_advise_mode_writes_the_recommendation_tag() -> None:
    gd = Guard(config(mode="advise")).decide(SP, inputs(recommendation=rec(49.0)))
    assert gd.action is Action.CLAMP
    assert gd.write_tag == REC_TAG
    assert gd.applied_value == 46.0  # rate-limited from the setpoint's read-back, as auto would write


def test_shadow_mode_proposes_what_auto_would_write() -> None:
    shadow = Guard(config(mode="shadow")).decide(SP, inputs(recommendation=rec(49.0)))
    auto = Guard(config(mode="auto")).decide(SP, inputs(recommendation=rec(49.0)))
    assert shadow.action is Action.HOLD and shadow.write_tag is None and shadow.applied_value is None
    assert shadow.proposed == auto.applied_value == 46.0


def test_advise_without_recommendation_tag_holds_even_if_validation_was_bypassed() -> None:
    cfg = GuardConfig.model_construct(
        writes_enabled=True, mode="advise", allow_list=[SP], permissive_tag=PERM,
        targets=[target(recommendation_tag=None)],
    )  # fmt: skip
    gd = Guard(cfg).decide(SP, inputs())
    assert gd.action is Action.HOLD
    assert gd.reasons == ("no recommendation_tag: 'P1.speed_sp' has none for advise mode",)


def test_tag_off_the_allow_list_is_never_written_even_if_validation_was_bypassed() -> None:
    cfg = GuardConfig.model_construct(
        writes_enabled=True, mode="auto", allow_list=[REC_TAG], permissive_tag=PERM, targets=[target()]
    )
    gd = Guard(cfg).decide(SP, inputs())
    assert gd.action is Action.REJECT
    assert gd.reasons[0] == "not on allow-list: 'P1.speed_sp'"
    cfg = GuardConfig.model_construct(
        writes_enabled=True, mode="auto", allow_list=[SP, PERM], permissive_tag=PERM,
        targets=[target(tag=PERM, recommendation_tag=None)],
    )  # fmt: skip
    gd = Guard(cfg).decide(PERM, inputs(recommendation=rec(tag=PERM), readback=sample(PERM, 40.0)))
    assert gd.action is Action.REJECT  # the permissive is never writable


def test_rate_limit_is_exact_at_float_edges() -> None:
    # 0.1 + 0.2 style rounding: the applied value never exceeds the step from the read-back.
    t = target(min=-1e6, max=1e6, rate_per_min=0.3, deadband=0.0)
    g = Guard(config(targets=[t]))
    for rb in (0.1, 1e5 + 0.1, -7.7, 1 / 3):
        gd = g.decide(SP, inputs(recommendation=rec(1e6), readback=sample(SP, rb), last_write_at=NOW - 21.0))
        assert gd.applied_value is not None
        assert abs(gd.applied_value - rb) <= max_step(0.3, NOW - 21.0, NOW)


def test_max_step() -> None:
    assert max_step(6.0, None, NOW) == 6.0
    assert max_step(6.0, NOW - 30, NOW) == 3.0
    assert max_step(6.0, NOW - 3600, NOW) == 6.0
    assert max_step(6.0, NOW + 5, NOW) == 0.0
    assert max_step(6.0, math.nan, NOW) == 0.0
    assert max_step(6.0, -math.inf, NOW) == 6.0


def test_permissive_on() -> None:
    assert permissive_on(sample(PERM, True), PERM, 5.0, NOW) is None
    assert permissive_on(sample(PERM, 2.5), PERM, 5.0, NOW) is None
    assert permissive_on(sample(PERM, False), PERM, 5.0, NOW) == "permissive off"


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"targets": [{**target().model_dump(), "min": 50.0, "max": 50.0}]},
            "min (50.0) must be below max (50.0)",
        ),
        ({"targets": [{**target().model_dump(), "rate_per_min": 0}]}, "rate_per_min"),
        ({"targets": [{**target().model_dump(), "rate_per_min": -1}]}, "greater than 0"),
        ({"targets": [{**target().model_dump(), "min": math.nan}]}, "finite number"),
        ({"targets": [{**target().model_dump(), "max": math.inf}]}, "finite number"),
        ({"targets": [{**target().model_dump(), "deadband": -0.1}]}, "deadband"),
        ({"allow_list": [REC_TAG]}, "targets[0].tag 'P1.speed_sp' is not on allow_list"),
        ({"allow_list": [SP]}, "targets[0].recommendation_tag 'P1.speed_rec' is not on allow_list"),
        ({"allow_list": [SP, REC_TAG, PERM]}, "permissive_tag 'P1.remote' must not be on allow_list"),
        ({"targets": [target(), target()]}, "targets[1].tag 'P1.speed_sp' is configured twice"),
        (
            {"mode": "advise", "targets": [{**target().model_dump(), "recommendation_tag": None}]},
            "needs recommendation_tag in advise",
        ),
        ({"targets": [{**target().model_dump(), "recommendation_tag": SP}]}, "must differ from tag"),
        ({"mode": "manual"}, "mode"),
        ({"writes": True}, "Extra inputs are not permitted"),
    ],
)
def test_config_refusals(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        config(**kw)
    assert message in str(err.value)


def test_config_defaults_never_write() -> None:
    cfg = GuardConfig(permissive_tag=PERM)
    assert cfg.writes_enabled is False
    assert cfg.mode == "shadow"
    assert target().ttl_s == 10.0
    with pytest.raises(ValidationError):
        cfg.model_copy().__setattr__("writes_enabled", True)  # frozen


# --------------------------------------------------------------------------- hold tracker


def _gd(action: Action, *reasons: str, target: str = SP) -> GuardDecision:
    applied = 1.0 if action in (Action.WRITE, Action.CLAMP) else None
    return GuardDecision(target, Decision(None, action, applied, reasons), SP if applied else None)


def test_hold_tracker_records_changes_only() -> None:
    tr = HoldTracker()
    seq = [
        (_gd(Action.HOLD, "permissive off"), True),  # entering HOLD (first decision)
        (_gd(Action.HOLD, "permissive off"), False),  # steady
        (_gd(Action.HOLD, "permissive off"), False),
        (_gd(Action.HOLD, "permissive off", "stopping"), True),  # reasons changed
        (_gd(Action.HOLD, "stopping"), True),
        (_gd(Action.WRITE), True),  # leaving HOLD
        (_gd(Action.WRITE), True),  # every write
        (_gd(Action.CLAMP, "rate limited: 6/min"), True),
        (_gd(Action.HOLD, "inside deadband"), True),  # entering HOLD again
        (_gd(Action.HOLD, "inside deadband"), False),
        (_gd(Action.REJECT, "value not finite: nan"), True),
        (_gd(Action.REJECT, "value not finite: nan"), True),  # every REJECT
        (_gd(Action.HOLD, "inside deadband"), True),
    ]
    for n, (d, expected) in enumerate(seq):
        assert tr.observe(d) is expected, n
    assert tr.holding(SP) == ("inside deadband",)


def test_hold_tracker_is_per_target_and_can_forget() -> None:
    tr = HoldTracker()
    assert tr.observe(_gd(Action.HOLD, "stopping"))
    assert tr.observe(_gd(Action.HOLD, "stopping", target=OTHER))
    assert not tr.observe(_gd(Action.HOLD, "stopping"))
    tr.forget(SP)
    assert tr.observe(_gd(Action.HOLD, "stopping"))
    assert not tr.observe(_gd(Action.HOLD, "stopping", target=OTHER))
    tr.forget()
    assert tr.holding(OTHER) is None
    assert tr.observe(_gd(Action.HOLD, "stopping", target=OTHER))


# --------------------------------------------------------------------------- properties

Tv = TypeVar("Tv")


def mostly(
    good: st.SearchStrategy[Tv], bad: st.SearchStrategy[Tv], one_in: int = 20
) -> st.SearchStrategy[Tv]:
    """``good``, except one draw in ``one_in`` from ``bad``: each fault is rare enough that every
    fault also shows up alone and writes happen often (a property over HOLDs only proves nothing).
    The simplest draw (0, which Hypothesis favours and shrinks toward) is the good one."""
    return st.integers(0, one_in - 1).flatmap(lambda i: bad if i == one_in // 2 else good)


WILD = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 0.0]),
)
BAD_QUALITIES = st.sampled_from([Quality.bad("timeout"), Quality.bad("stale"), Quality.uncertain("held")])
WILD_TIMES = st.sampled_from([math.nan, math.inf, -math.inf])
QUALITIES = mostly(st.just(Quality.good()), BAD_QUALITIES)
PERMISSIVE_VALUES = mostly(
    st.sampled_from([True, 1, 2, 1.0]), st.sampled_from([False, 0, 0.0, -0.0, math.nan, "on", None])
)
TAGS = mostly(st.just(SP), st.sampled_from([REC_TAG, OTHER, PERM, "P1.trip"]))


@st.composite
def targets(draw: st.DrawFn) -> SetpointTarget:
    lo = draw(st.floats(-1e6, 1e6))
    span = draw(st.floats(1e-3, 1e6))
    return target(
        min=lo,
        max=lo + span if lo + span > lo else lo + 1.0,
        rate_per_min=draw(st.floats(1e-6, 1e6)),
        deadband=draw(st.sampled_from([0.0, 0.0, 0.01, 0.5, 10.0])),
        ttl_s=draw(st.floats(0.1, 100.0)),
        max_input_age_s=draw(st.floats(0.1, 30.0)),
        recommendation_tag=draw(mostly(st.just(REC_TAG), st.none())),
    )


@st.composite
def guard_configs(draw: st.DrawFn) -> GuardConfig:
    """Valid configs, and configs that bypass validation (allow-lists missing the target)."""
    t = draw(targets())
    kw: dict[str, Any] = dict(
        writes_enabled=draw(mostly(st.just(True), st.just(False))),
        mode=draw(mostly(st.sampled_from(["auto", "advise"]), st.just("shadow"))),
        permissive_tag=PERM,
        targets=[t],
    )
    if draw(mostly(st.just(True), st.just(False))):
        kw["allow_list"] = [SP, REC_TAG, OTHER]
        if kw["mode"] == "advise" and t.recommendation_tag is None:
            kw["mode"] = "auto"
        return GuardConfig(**kw)
    kw["allow_list"] = draw(st.lists(st.sampled_from([SP, REC_TAG, OTHER, PERM]), unique=True))
    return GuardConfig.model_construct(**kw)


def _truthy(v: Value) -> bool:
    if v is True:
        return True
    return type(v) in (int, float) and math.isfinite(v) and v != 0  # type: ignore[arg-type]


def assert_safe(cfg: GuardConfig, t: SetpointTarget, inp: GuardInputs, gd: GuardDecision) -> None:
    """The write-back rules from ARCHITECTURE.md, checked against one decision."""
    d = gd.decision
    assert all(isinstance(Reason.of(r), Reason) for r in d.reasons)
    if not d.writes:
        assert gd.write_tag is None
        assert d.applied_value is None
        return
    now = inp.now
    age = t.max_input_age_s
    assert math.isfinite(now)
    # global switch, mode, allow-list
    assert cfg.writes_enabled
    assert cfg.mode in ("advise", "auto")
    assert gd.write_tag == (t.tag if cfg.mode == "auto" else t.recommendation_tag)
    assert gd.write_tag in cfg.allow_list and gd.write_tag != cfg.permissive_tag
    # health
    assert not inp.stopping and inp.audit_ok and inp.model_healthy and inp.last_verify_ok
    # permissive
    p = inp.permissive
    assert p is not None and p.tag == cfg.permissive_tag and p.quality.is_good
    assert math.isfinite(p.mono) and now - p.mono <= age and _truthy(p.value)
    # recommendation
    r = inp.recommendation
    assert r is not None and r.target_tag == t.tag and math.isfinite(r.value) and r.inputs_good
    assert now < r.expires_mono and math.isfinite(r.created_mono) and now - r.created_mono < t.ttl_s
    # inputs
    assert inp.input_qualities and all(q.is_good for q in inp.input_qualities.values())
    assert inp.inputs_mono is not None and math.isfinite(inp.inputs_mono) and now - inp.inputs_mono <= age
    # read-back
    rb = inp.readback
    assert rb is not None and rb.tag == t.tag and rb.quality.is_good
    assert math.isfinite(rb.mono) and now - rb.mono <= age
    assert type(rb.value) in (int, float)
    rbv = float(rb.value)  # type: ignore[arg-type]
    assert math.isfinite(rbv)
    if inp.last_write_at is not None:
        assert rb.mono >= inp.last_write_at
    # value: limits, rate from the read-back, deadband
    a = d.applied_value
    assert a is not None and math.isfinite(a)
    assert t.min <= a <= t.max
    elapsed = 60.0 if inp.last_write_at is None else min(max(now - inp.last_write_at, 0.0), 60.0)
    assert abs(a - rbv) <= t.rate_per_min * elapsed / 60.0
    assert abs(min(max(r.value, t.min), t.max) - rbv) > t.deadband
    assert a != rbv
    assert (d.action is Action.WRITE) == (a == r.value)


@st.composite
def guard_inputs(draw: st.DrawFn, t: SetpointTarget) -> GuardInputs:
    now = draw(mostly(st.floats(0.0, 1e6), WILD_TIMES, 40))
    span = t.max - t.min
    max_age = t.max_input_age_s
    ages = mostly(st.floats(0.0, 0.9 * max_age), st.one_of(st.floats(-1.0, 3 * max_age), WILD_TIMES))
    near = st.floats(t.min - span, t.max + span)  # in range, or out of it by up to one span
    r = None
    if draw(mostly(st.just(True), st.just(False))):
        created = now - draw(
            mostly(st.floats(0.0, t.ttl_s), st.one_of(st.floats(-5.0, 3 * t.ttl_s), WILD_TIMES))
        )
        r = Recommendation(
            draw(TAGS), draw(mostly(near, WILD, 6)), "x", "m", created,
            created + draw(mostly(st.floats(t.ttl_s, 3 * t.ttl_s), st.one_of(st.floats(0.0, t.ttl_s), WILD_TIMES))),
            T0,
            inputs_good=draw(mostly(st.just(True), st.just(False))),
        )  # fmt: skip
    perm = None
    if draw(mostly(st.just(True), st.just(False))):
        tag = draw(mostly(st.just(PERM), st.just(SP)))
        perm = Sample(tag, draw(PERMISSIVE_VALUES), draw(QUALITIES), T0, now - draw(ages))
    rb = None
    last_write_at = None
    if draw(mostly(st.just(True), st.just(False))):
        rb_value: Value = draw(mostly(near, st.one_of(WILD, st.sampled_from(["x", True, None]))))
        rb = Sample(
            draw(mostly(st.just(SP), st.just(OTHER))), rb_value, draw(QUALITIES), T0, now - draw(ages)
        )
        if draw(st.booleans()):
            last_write_at = rb.mono - draw(
                mostly(st.floats(0.0, 120.0), st.one_of(st.floats(-10.0, 0.0), WILD_TIMES))
            )
    elif draw(st.booleans()):
        last_write_at = now - draw(st.floats(-10.0, 200.0))
    return GuardInputs(
        now=now,
        recommendation=r,
        permissive=perm,
        readback=rb,
        input_qualities=draw(
            st.dictionaries(st.sampled_from(["a", "b", "c"]), QUALITIES, min_size=1, max_size=3)
        ),
        inputs_mono=draw(mostly(ages.map(lambda a: now - a), st.none())),
        model_healthy=draw(mostly(st.just(True), st.just(False))),
        audit_ok=draw(mostly(st.just(True), st.just(False))),
        stopping=draw(mostly(st.just(False), st.just(True))),
        last_verify_ok=draw(mostly(st.just(True), st.just(False))),
        last_write_at=last_write_at,
    )


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_no_unsafe_write_for_any_inputs(data: st.DataObject) -> None:
    cfg = data.draw(guard_configs())
    t = cfg.targets[0]
    inp = data.draw(guard_inputs(t))
    gd = Guard(cfg).decide(t.tag, inp)
    event(f"action {gd.action}")
    assert_safe(cfg, t, inp, gd)


def test_property_inputs_reach_every_action() -> None:
    """Guard against a vacuous property: the input strategy must produce writes and clamps."""
    seen: set[Action] = set()

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        cfg = data.draw(guard_configs())
        seen.add(Guard(cfg).decide(SP, data.draw(guard_inputs(cfg.targets[0]))).action)

    run()
    assert seen == set(Action)


@st.composite
def steps(draw: st.DrawFn) -> dict[str, Any]:
    good = st.just(True)
    return {
        "dt": draw(
            mostly(
                st.floats(0.0, 4.0),
                st.one_of(st.sampled_from([0.0, 7.0, 60.0, 61.0]), st.floats(0.0, 120.0)),
                4,
            )
        ),
        "value": draw(mostly(st.floats(-100, 200), WILD, 6)),
        "rec": draw(mostly(st.just("new"), st.sampled_from(["keep", "none", "other"]), 4)),
        "rec_ttl": draw(mostly(st.floats(10.0, 20.0), st.floats(0.0, 10.0))),
        "perm": draw(PERMISSIVE_VALUES),
        "perm_q": draw(QUALITIES),
        "perm_age": draw(mostly(st.floats(0.0, 4.5), st.floats(4.5, 8.0))),
        "rb": draw(mostly(st.just("fresh"), st.sampled_from(["keep", "bad", "none", "manual"]), 4)),
        "rb_delay": draw(mostly(st.floats(0.0, 0.1), st.floats(0.0, 6.0), 4)),
        "manual": draw(mostly(st.floats(0.0, 100.0), WILD, 4)),
        "q": draw(st.dictionaries(st.sampled_from(["a", "b"]), QUALITIES, min_size=1, max_size=2)),
        "in_age": draw(mostly(st.floats(0.0, 4.5), st.floats(4.5, 8.0))),
        "model": draw(mostly(good, st.just(False))),
        "audit": draw(mostly(good, st.just(False))),
        "stopping": draw(mostly(st.just(False), good)),
        "verify": draw(mostly(good, st.just(False))),
    }


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cfg=st.builds(
        config,
        writes_enabled=mostly(st.just(True), st.just(False)),
        mode=mostly(st.sampled_from(["auto", "advise"]), st.just("shadow"), 5),
        targets=st.builds(
            lambda rate, db: [target(min=0.0, max=100.0, rate_per_min=rate, deadband=db)],
            st.sampled_from([0.5, 6.0, 60.0, 1e6]),
            st.sampled_from([0.0, 0.2, 5.0]),
        ),
    ),
    start=mostly(st.floats(-50.0, 150.0), WILD),
    script=st.lists(steps(), min_size=1, max_size=40),
)
def test_sequences_never_move_the_plc_unsafely(
    cfg: GuardConfig, start: float, script: list[dict[str, Any]]
) -> None:
    """A simulated PLC under any sequence of recommendations, permissive, qualities, read-backs,
    manual changes and times: every write is safe, and in auto the agent never moves the *actual*
    setpoint faster than the rate limit (whenever its read-back is current)."""
    guard = Guard(cfg)
    t = cfg.targets[0]
    now = 5000.0
    plc: float = start
    last_write_at: float | None = None
    readback: Sample | None = Sample(SP, plc, Quality.good(), T0, now)
    readback_current = True  # the read-back shows the PLC's present value
    recommendation: Recommendation | None = None
    writes = 0
    for s in script:
        now += s["dt"]
        if s["rb"] == "manual":  # the operator changes the setpoint; we have not read it yet
            plc = s["manual"]
            readback_current = False
        elif s["rb"] == "fresh":
            readback = Sample(SP, plc, Quality.good(), T0, now - s["rb_delay"])
            readback_current = True
        elif s["rb"] == "bad":
            readback = Sample(SP, plc, Quality.bad("timeout"), T0, now)
        elif s["rb"] == "none":
            readback = None
        if s["rec"] == "new":
            recommendation = Recommendation(SP, s["value"], "x", "m", now, now + s["rec_ttl"], T0)
        elif s["rec"] == "other":
            recommendation = Recommendation(OTHER, s["value"], "x", "m", now, now + s["rec_ttl"], T0)
        elif s["rec"] == "none":
            recommendation = None
        inp = GuardInputs(
            now=now,
            recommendation=recommendation,
            permissive=Sample(PERM, s["perm"], s["perm_q"], T0, now - s["perm_age"]),
            readback=readback,
            input_qualities=s["q"],
            inputs_mono=now - s["in_age"],
            model_healthy=s["model"],
            audit_ok=s["audit"],
            stopping=s["stopping"],
            last_verify_ok=s["verify"],
            last_write_at=last_write_at,
        )
        gd = guard.decide(SP, inp)
        assert_safe(cfg, t, inp, gd)
        if not gd.writes:
            continue
        writes += 1
        assert gd.applied_value is not None
        if gd.write_tag == SP:
            if readback_current:
                assert abs(gd.applied_value - plc) <= max_step(t.rate_per_min, last_write_at, now)
            plc = gd.applied_value
            readback_current = False
        last_write_at = now
    event(f"sequence writes: {min(writes, 3)}{'+' if writes >= 3 else ''}")


def test_guard_is_pure_and_deterministic() -> None:
    g = Guard(config())
    inp = inputs(recommendation=rec(49.0), last_write_at=NOW - 20)
    assert g.decide(SP, inp) == g.decide(SP, replace(inp))
