"""Running plans with Python steps and checks: outputs, events, failures,
preview, history, resume."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rollback

PLAN = """
name: cache-rollback
budget: 1m
vars:
  region: eu-west
steps:
  - id: current
    kind: exec
    argv: [echo, "v2.4.1"]
  - id: flush
    kind: test.flush_cache
    after: [current]
    cache: orders
    release: "${steps.current.stdout}"
    region: "${var:region}"
  - id: warm
    kind: test.warm_async
    after: [flush]
    keys: 3
verify:
  - name: cache empty
    kind: test.cache_empty
    cache: orders
"""


def test_full_run_with_python_steps_check_and_event_callback(
    write_plan: Callable[[str], Path], state_dir: Path, kinds: list[str]
) -> None:
    seen: dict[str, Any] = {}

    @rollback.step("test.flush_cache")
    def flush_cache(config: dict[str, Any], ctx: rollback.StepContext) -> dict[str, Any]:
        seen["config"] = config
        seen["ctx"] = {
            "run_id": ctx.run_id,
            "step_id": ctx.step_id,
            "attempt": ctx.attempt,
            "operator": ctx.operator,
            "reason": ctx.reason,
            "outputs": ctx.outputs,
            "vars": ctx.vars,
        }
        ctx.progress("flushed 12 keys")
        return {"flushed": 12, "cache": config["cache"]}

    @rollback.step("test.warm_async")
    async def warm(config: dict[str, Any], ctx: rollback.StepContext) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"warmed": config["keys"], "after_flush": ctx.outputs["flush"]["flushed"]}

    @rollback.verifier("test.cache_empty")
    def cache_empty(config: dict[str, Any], ctx: rollback.StepContext) -> dict[str, Any]:
        return {"passed": True, "observed": f"{config['cache']}: 0 keys", "expected": "0 keys"}

    kinds.extend(["test.flush_cache", "test.warm_async", "test.cache_empty"])
    events: list[dict[str, Any]] = []
    plan = rollback.Plan.load(write_plan(PLAN))
    report = plan.run(reason="5xx spike", operator="alice", on_event=events.append, state_dir=state_dir)

    assert report.status == "succeeded"
    assert report.ok
    assert report.operator == "alice"
    assert report.reason == "5xx spike"
    assert report.budget_ms == 60_000
    assert report.duration_ms is not None and report.duration_ms < 60_000
    assert [s.id for s in report.steps] == ["current", "flush", "warm"]
    assert [s.outcome for s in report.steps] == ["succeeded"] * 3
    flush = report.step("flush")
    assert flush.kind == "test.flush_cache"
    assert flush.attempts == 1
    assert flush.outputs == {"flushed": 12, "cache": "orders"}
    assert flush.duration_ms is not None
    assert report.step("warm").outputs == {"warmed": 3, "after_flush": 12}
    assert [(c.name, c.passed, c.observed) for c in report.checks] == [("cache empty", True, "orders: 0 keys")]

    # The step saw its resolved config and the run's context.
    assert seen["config"] == {"cache": "orders", "release": "v2.4.1", "region": "eu-west"}
    ctx = seen["ctx"]
    assert ctx["run_id"] == report.run_id
    assert ctx["step_id"] == "flush"
    assert ctx["attempt"] == 1
    assert ctx["operator"] == "alice"
    assert ctx["reason"] == "5xx spike"
    assert ctx["outputs"]["current"]["exit_code"] == 0
    assert ctx["vars"] == {"region": "eu-west"}

    # Every journal record reached the callback, in order.
    names = [e["event"] for e in events]
    assert names[0] == "run_started" and names[-1] == "run_finished"
    assert names.count("step_started") == 3 and names.count("step_finished") == 3
    assert {"event": "step_progress", "step": "flush", "message": "flushed 12 keys"}.items() <= {
        k: v for e in events if e["event"] == "step_progress" for k, v in e.items()
    }.items()
    assert "check_finished" in names
    assert events[-1]["status"] == "succeeded"
    assert all("at" in e for e in events)

    as_dict = report.to_dict()
    assert as_dict["status"] == "succeeded"
    assert as_dict["run"]["run_id"] == report.run_id
    report.raise_for_status()


def test_failing_python_step_raises_step_failed_with_traceback(
    write_plan: Callable[[str], Path], state_dir: Path, kinds: list[str]
) -> None:
    @rollback.step("test.explode")
    def explode(config: dict[str, Any], ctx: rollback.StepContext) -> dict[str, Any]:
        raise ValueError(f"cache {config['cache']} is on fire")

    kinds.append("test.explode")
    path = write_plan(
        """
        name: explode
        steps:
          - id: boom
            kind: test.explode
            cache: orders
          - id: later
            kind: wait
            duration: 1ms
            after: [boom]
        """
    )
    with pytest.raises(rollback.StepFailed) as info:
        rollback.Plan.load(path).run(reason="test", state_dir=state_dir)
    err = info.value
    assert isinstance(err, rollback.RunFailed) and isinstance(err, rollback.RollbackError)
    assert err.step == "boom"
    assert err.kind == "test.explode"
    assert err.status == "step_failed"
    assert err.error.startswith("ValueError: cache orders is on fire")
    assert "Traceback (most recent call last)" in err.error
    assert "in explode" in err.error
    assert 'raise ValueError(f"cache {config' in err.error
    assert err.run_id == err.report.run_id
    assert err.report.step("boom").outcome == "failed"
    assert err.report.step("boom").error == err.error
    assert err.report.step("later").outcome == "skipped"
    # The journal holds the same traceback.
    stored = rollback.show(err.run_id, state_dir)
    assert stored.status == "step_failed"
    assert stored.step("boom").error == err.error
    with pytest.raises(rollback.StepFailed):
        stored.raise_for_status()


def test_transient_errors_are_retried(write_plan: Callable[[str], Path], state_dir: Path, kinds: list[str]) -> None:
    attempts: list[int] = []

    @rollback.step("test.flaky")
    def flaky(config: dict[str, Any], ctx: rollback.StepContext) -> dict[str, Any]:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise rollback.TransientError("connection refused")
        return {"attempt": ctx.attempt}

    kinds.append("test.flaky")
    path = write_plan(
        """
        name: flaky
        steps:
          - id: f
            kind: test.flaky
            retries: 3
            backoff: 1ms
        """
    )
    report = rollback.Plan.load(path).run(reason="test", state_dir=state_dir)
    assert attempts == [1, 2, 3]
    assert report.step("f").attempts == 3
    assert report.step("f").outputs == {"attempt": 3}


def test_outputs_must_be_journal_data(write_plan: Callable[[str], Path], state_dir: Path, kinds: list[str]) -> None:
    @rollback.step("test.bad_outputs")
    def bad(config: dict[str, Any], ctx: rollback.StepContext) -> dict[str, Any]:
        return {"when": object()}

    kinds.append("test.bad_outputs")
    plan = rollback.Plan.from_yaml("name: bad\nsteps:\n  - id: b\n    kind: test.bad_outputs\n")
    with pytest.raises(rollback.StepFailed) as info:
        plan.run(reason="test", state_dir=state_dir)
    assert "cannot be stored in the journal" in info.value.error


def test_failed_python_check_raises_verification_failed(state_dir: Path, kinds: list[str]) -> None:
    @rollback.verifier("test.never")
    def never(config: dict[str, Any], ctx: rollback.StepContext) -> bool:
        return False

    kinds.append("test.never")
    plan = rollback.Plan.from_yaml(
        "name: v\nsteps:\n  - id: w\n    kind: wait\n    duration: 1ms\nverify:\n  - name: never\n    kind: test.never\n"
    )
    with pytest.raises(rollback.VerificationFailed) as info:
        plan.run(reason="test", state_dir=state_dir)
    assert info.value.checks == ["never"]
    assert info.value.report.status == "verification_failed"


def test_preview_changes_nothing(
    write_plan: Callable[[str], Path], state_dir: Path, tmp_path: Path, kinds: list[str]
) -> None:
    marker = tmp_path / "ran"
    calls: list[str] = []

    def preview_touch(config: dict[str, Any], ctx: rollback.StepContext) -> list[str]:
        calls.append("preview")
        return [f"create {config['path']}"]

    @rollback.step("test.touch", preview=preview_touch)
    def touch(config: dict[str, Any], ctx: rollback.StepContext) -> None:
        calls.append("run")
        Path(config["path"]).write_text("x")

    kinds.append("test.touch")
    path = write_plan(
        f"""
        name: touchy
        steps:
          - id: t
            kind: test.touch
            path: {marker}
          - id: e
            kind: exec
            argv: [touch, "{marker}.exec"]
        """
    )
    preview = rollback.Plan.load(path).preview()
    assert preview.ok
    assert preview.plan == "touchy"
    t = preview.steps[0]
    assert (t["id"], t["changes"], t["error"]) == ("t", [f"create {marker}"], None)
    assert calls == ["preview"]
    assert not marker.exists()
    assert not Path(f"{marker}.exec").exists()
    assert rollback.history(state_dir) == []
    assert preview.to_dict()["plan"] == "touchy"


def test_history_lists_runs_newest_first(state_dir: Path) -> None:
    plan = rollback.Plan.from_yaml("name: hist\nsteps:\n  - id: w\n    kind: wait\n    duration: 1ms\n")
    first = plan.run(reason="first", state_dir=state_dir)
    second = plan.drill(state_dir=state_dir)
    runs = rollback.history(state_dir)
    assert [r.run_id for r in runs] == [second.run_id, first.run_id]
    assert runs[1].status == "succeeded"
    assert runs[1].reason == "first"
    assert runs[1].plan == "hist"
    assert runs[0].drill and not runs[1].drill
    assert rollback.history(state_dir, plan="other") == []
    assert len(rollback.history(state_dir, limit=1)) == 1
    assert second.drill_passed
    run_dir = state_dir / "runs" / second.run_id
    assert (run_dir / "drill.md").read_text().startswith("# Rollback drill: hist — PASS")
    assert rollback.show("last", state_dir).run_id == second.run_id


def test_unknown_run_and_empty_reason(state_dir: Path) -> None:
    with pytest.raises(rollback.RunNotFound) as info:
        rollback.show("20990101-000000-0000", state_dir)
    assert info.value.run_id == "20990101-000000-0000"
    plan = rollback.Plan.from_yaml("name: r\nsteps:\n  - id: w\n    kind: wait\n    duration: 1ms\n")
    with pytest.raises(rollback.InvalidInput, match="reason"):
        plan.run(reason=" ", state_dir=state_dir)


def test_resume_continues_without_rerunning_completed_steps(
    state_dir: Path, tmp_path: Path, kinds: list[str]
) -> None:
    fixed = tmp_path / "fixed"
    calls: list[str] = []

    @rollback.step("test.first")
    def first(config: dict[str, Any], ctx: rollback.StepContext) -> dict[str, Any]:
        calls.append("first")
        return {"n": 1}

    @rollback.step("test.needs_fix")
    def needs_fix(config: dict[str, Any], ctx: rollback.StepContext) -> None:
        calls.append("needs_fix")
        if not fixed.exists():
            raise RuntimeError("not fixed yet")

    kinds.extend(["test.first", "test.needs_fix"])
    plan = rollback.Plan.from_yaml(
        "name: res\nsteps:\n  - id: a\n    kind: test.first\n  - id: b\n    kind: test.needs_fix\n    after: [a]\n"
    )
    with pytest.raises(rollback.StepFailed) as info:
        plan.run(reason="resume test", state_dir=state_dir)
    fixed.write_text("yes")
    with pytest.raises(rollback.InvalidInput, match="has no step `nope`"):
        rollback.resume(info.value.run_id, state_dir, fresh=["nope"])
    report = rollback.resume(info.value.run_id, state_dir, fresh=["b"], programs_ended_on=[])
    assert report.run_id == info.value.run_id
    assert report.status == "succeeded"
    assert calls == ["first", "needs_fix", "needs_fix"]
    with pytest.raises(rollback.NotResumable):
        rollback.resume(report.run_id, state_dir)


def test_a_permission_error_is_a_permission_denied_with_what_was_being_done() -> None:
    error = rollback.PermissionDenied("permission denied: taking the plan lock: grant get on leases", what="taking the plan lock")
    assert isinstance(error, PermissionError) and isinstance(error, rollback.RollbackError)
    assert error.what == "taking the plan lock"


def test_exception_in_event_callback_cancels_the_run(state_dir: Path) -> None:
    plan = rollback.Plan.from_yaml(
        "name: cb\nsteps:\n  - id: long\n    kind: wait\n    duration: 1h\n"
    )

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "step_started":
            raise LookupError("the dashboard is gone")

    with pytest.raises(LookupError, match="dashboard"):
        plan.run(reason="cb", on_event=on_event, state_dir=state_dir)
    (run,) = rollback.history(state_dir)
    assert run.status == "cancelled"
