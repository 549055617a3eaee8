"""Loading plans: validation errors with their positions, and the plan's facts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import rollback


def test_unknown_kind_points_at_line_and_suggests_the_nearest(write_plan: Callable[[str], Path]) -> None:
    path = write_plan(
        """
        name: order-service
        steps:
          - id: pause
            kind: wiat
            duration: 1s
        """
    )
    with pytest.raises(rollback.PlanError) as info:
        rollback.Plan.load(path)
    err = info.value
    assert isinstance(err, rollback.RollbackError)
    assert err.file == str(path)
    assert len(err.diagnostics) == 1
    d = err.diagnostics[0]
    assert d["file"] == str(path)
    assert d["line"] == 4
    assert d["column"] > 0
    assert d["field"] == "steps[0].kind"
    assert "wiat" in d["message"]
    assert d["hint"] is not None and "`wait`" in d["hint"]
    assert f"{path}:4:" in str(err)


def test_every_mistake_is_listed_in_file_order(write_plan: Callable[[str], Path]) -> None:
    path = write_plan(
        """
        name: broken
        budget: soon
        steps:
          - id: a
            kind: wait
            duration: 1s
            after: [b]
          - id: b
            kind: wait
            duration: 1s
            after: [a]
        """
    )
    with pytest.raises(rollback.PlanError) as info:
        rollback.Plan.load(path)
    diags = info.value.diagnostics
    assert len(diags) >= 2, diags
    assert [d["line"] for d in diags] == sorted(d["line"] for d in diags)
    fields = [d["field"] for d in diags]
    assert "budget" in fields
    assert diags[0]["line"] == 2
    assert any("cycle" in d["message"] for d in diags), diags


def test_yaml_syntax_error_has_a_position() -> None:
    with pytest.raises(rollback.PlanError) as info:
        rollback.Plan.from_yaml("name: x\nsteps: [\n", file="inline.yaml")
    d = info.value.diagnostics[0]
    assert d["file"] == "inline.yaml"
    assert d["field"] == "(syntax)"
    assert d["line"] >= 2


def test_missing_file_is_plan_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(rollback.PlanUnreadable) as info:
        rollback.Plan.load(missing)
    assert info.value.path == str(missing)
    assert isinstance(info.value, rollback.PlanError)


def test_loaded_plan_exposes_its_facts_and_vars_override(write_plan: Callable[[str], Path]) -> None:
    path = write_plan(
        """
        name: facts
        description: a plan about facts
        budget: 2m
        vars:
          service: orders
        steps:
          - id: first
            kind: exec
            argv: [echo, "${var:service}"]
          - id: second
            kind: wait
            duration: 1ms
            after: [first]
        """
    )
    plan = rollback.Plan.load(path, vars={"service": "payments"})
    assert plan.name == "facts"
    assert plan.description == "a plan about facts"
    assert plan.budget_ms == 120_000
    assert plan.vars == {"service": "payments"}
    assert plan.path == str(path)
    assert plan.digest.startswith("sha256:")
    assert [s["id"] for s in plan.steps] == ["first", "second"]
    assert plan.steps[1]["after"] == ["first"]
    plan.validate()


def test_python_kind_must_be_registered_before_loading(kinds: list[str]) -> None:
    text = "name: k\nsteps:\n  - id: s\n    kind: test.late_kind\n"
    with pytest.raises(rollback.PlanError):
        rollback.Plan.from_yaml(text)

    @rollback.step("test.late_kind")
    def late(config: dict[str, object], ctx: rollback.StepContext) -> None:
        return None

    kinds.append("test.late_kind")
    plan = rollback.Plan.from_yaml(text)
    plan.validate()
    rollback.unregister("test.late_kind")
    with pytest.raises(rollback.PlanError) as info:
        plan.validate()
    assert info.value.diagnostics[0]["line"] == 4


def test_builtin_kind_names_cannot_be_taken() -> None:
    with pytest.raises(ValueError, match="built in"):
        rollback.step("exec")(lambda config, ctx: None)


def test_the_package_carries_core_and_adapter_kinds() -> None:
    known = rollback.kinds()
    assert {"exec", "http", "wait", "confirm", "git.restore"} <= set(known["steps"])
    assert {"http", "exec", "tcp"} <= set(known["verifiers"])
    # Built with pyproject.toml's features: the db, notify, vault and compose adapters.
    prefixes = {kind.split(".")[0] for kind in known["steps"]} | set(known["notifiers"])
    assert {"db", "vault", "compose"} <= prefixes, known
    assert known["notifiers"], known
