"""Tests that need a process of their own: Ctrl-C, and the type stubs
(mypy's stubtest, mypy --strict on the example script)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import rollback

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "python"

CHILD = """
import sys
import rollback

plan = rollback.Plan.from_yaml(
    "name: long\\nbudget: 5m\\nsteps:\\n  - id: before\\n    kind: wait\\n    duration: 1ms\\n"
    "  - id: long\\n    kind: wait\\n    duration: 1h\\n    after: [before]\\n"
    "  - id: never\\n    kind: wait\\n    duration: 1ms\\n    after: [long]\\n"
)

def on_event(event):
    if event["event"] == "step_started" and event["step"] == "long":
        print("STARTED", file=sys.stdout, flush=True)

try:
    plan.run(reason="ctrl-c test", on_event=on_event, state_dir=sys.argv[1])
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    sys.exit(42)
print("NOT INTERRUPTED", flush=True)
"""


def test_ctrl_c_cancels_the_run_and_the_journal_says_so(state_dir: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line == "STARTED\n", child.stderr.read() if child.stderr else line
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 42, (out, err)
    assert out == "INTERRUPTED\n"
    (run,) = rollback.history(state_dir)
    assert run.status == "cancelled"
    report = rollback.show(run.run_id, state_dir)
    assert report.status == "cancelled"
    assert report.step("before").outcome == "succeeded"
    assert report.step("long").outcome != "succeeded"
    assert report.step("never").outcome in (None, "skipped")
    journal = (state_dir / "runs" / run.run_id / "journal.jsonl").read_text()
    assert '"event":"cancel_requested"' in journal.replace(" ", "")
    assert '"status":"cancelled"' in journal.replace(" ", "")


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Runs in `cwd` so mypy's cache lands there, not in the source tree."""
    env = dict(os.environ, MYPY_CACHE_DIR=str(cwd / ".mypy_cache"))
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, cwd=cwd)


def test_stubs_match_the_module(tmp_path: Path) -> None:
    result = _run([sys.executable, "-m", "mypy.stubtest", "rollback"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_script_type_checks_against_the_stubs(tmp_path: Path) -> None:
    script = EXAMPLES / "flush_cache.py"
    result = _run([sys.executable, "-m", "mypy", "--strict", str(script)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_script_runs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = _run(
        [sys.executable, str(EXAMPLES / "flush_cache.py"), "--state-dir", str(state), "--reason", "pytest"], tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout
    (run,) = rollback.history(state)
    assert run.status == "succeeded"
    assert run.reason == "pytest"
    assert rollback.show(run.run_id, state).step("flush").outputs == {"deleted": 3, "release": "2.4.1"}
