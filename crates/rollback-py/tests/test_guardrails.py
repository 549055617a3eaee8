"""Guardrails from Python: approvals by named roles, the plan lock held by
another process, and the time budget, each surfacing as its exception with
structured attributes."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import rollback

GUARDED = """
name: guarded
steps:
  - id: backup
    kind: wait
    duration: 1ms
  - id: swap
    kind: wait
    duration: 1ms
    after: [backup]
approvals:
  - role: engineering-manager
    before: [swap]
"""


def test_named_role_approvals_are_given_with_approved_by(
    write_plan: Callable[[str], Path], state_dir: Path
) -> None:
    plan = rollback.Plan.load(write_plan(GUARDED))
    # `yes` never stands in for a named approver.
    with pytest.raises(rollback.StepFailed) as info:
        plan.run(reason="test", yes=True, state_dir=state_dir)
    assert info.value.step == "swap"
    assert "engineering-manager" in info.value.error
    assert info.value.report.step("backup").outcome == "succeeded"

    with pytest.raises(rollback.InvalidInput, match="engineering-manager"):
        plan.run(reason="test", approved_by={"engineering-manager": " "}, state_dir=state_dir)

    report = plan.run(reason="test", approved_by={"engineering-manager": "amara"}, state_dir=state_dir)
    assert report.status == "succeeded"
    (approval,) = report.to_dict()["approvals"]
    assert approval["step"] == "swap"
    assert approval["role"] == "engineering-manager"
    assert approval["approved_by"] == "amara"
    # The journal keeps who approved.
    assert rollback.show(report.run_id, state_dir).to_dict()["approvals"] == [approval]


HOLDER = """
import sys
import rollback

plan = rollback.Plan.from_yaml(
    "name: shared\\nsteps:\\n  - id: long\\n    kind: wait\\n    duration: 1h\\n"
)

def on_event(event):
    if event["event"] == "step_started":
        print("STARTED", flush=True)

try:
    plan.run(reason="holds the lock", operator="olga", on_event=on_event, state_dir=sys.argv[1])
except KeyboardInterrupt:
    sys.exit(0)
"""


def test_a_plan_locked_by_another_process_raises_locked_naming_the_holder(state_dir: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line == "STARTED\n", holder.stderr.read() if holder.stderr else line
        plan = rollback.Plan.from_yaml("name: shared\nsteps:\n  - id: quick\n    kind: wait\n    duration: 1ms\n")
        with pytest.raises(rollback.Locked) as info:
            plan.run(reason="second operator", state_dir=state_dir)
        err = info.value
        assert isinstance(err, rollback.RollbackError)
        assert err.plan == "shared"
        assert err.operator == "olga"
        assert err.pid == holder.pid
        (running,) = rollback.history(state_dir)
        assert err.run_id == running.run_id
        assert "olga" in str(err)
    finally:
        holder.send_signal(signal.SIGINT)
        try:
            holder.communicate(timeout=60)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()


def test_running_out_of_budget_raises_budget_exceeded(
    write_plan: Callable[[str], Path], state_dir: Path
) -> None:
    path = write_plan(
        """
        name: slow
        budget: 300ms
        steps:
          - id: slow
            kind: wait
            duration: 30s
        """
    )
    with pytest.raises(rollback.BudgetExceeded) as info:
        rollback.Plan.load(path).run(reason="test", state_dir=state_dir)
    err = info.value
    assert isinstance(err, rollback.RunFailed)
    assert err.status == "budget_exceeded"
    assert err.budget_ms == 300
    assert err.duration_ms is not None and err.duration_ms < 30_000
    assert err.report.step("slow").outcome == "interrupted"
    assert err.run_id == err.report.run_id
