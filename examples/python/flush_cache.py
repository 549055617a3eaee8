#!/usr/bin/env python3
"""An ops script: run a rollback plan that uses a step and a check written
in Python.

    python examples/python/flush_cache.py --reason "stale cache after 2.4.1"

Without --cache-dir it builds a throwaway cache to flush, so it runs anywhere.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import rollback

HERE = Path(__file__).resolve().parent


@rollback.step("team.flush_cache", preview=lambda config, ctx: [
    f"delete {p}" for p in sorted(Path(config["dir"]).glob("*.entry"))
])
def flush_cache(config: dict[str, Any], ctx: rollback.StepContext) -> dict[str, Any]:
    """Deletes the cache entries; idempotent (an empty cache is left alone)."""
    entries = sorted(Path(config["dir"]).glob("*.entry"))
    for entry in entries:
        entry.unlink(missing_ok=True)
    ctx.progress(f"deleted {len(entries)} entries")
    return {"deleted": len(entries), "release": config["release"].strip()}


@rollback.verifier("team.cache_empty")
def cache_empty(config: dict[str, Any], ctx: rollback.StepContext) -> dict[str, Any]:
    left = len(list(Path(config["dir"]).glob("*.entry")))
    return {"passed": left == 0, "observed": f"{left} entries", "expected": "0 entries"}


def show_event(event: dict[str, Any]) -> None:
    if event["event"] == "step_finished":
        print(f"  {event['step']}: {event['outcome']} in {event['duration_ms']} ms", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reason", default="example: flush the cache after a rollback")
    parser.add_argument("--cache-dir", type=Path, help="the cache to flush (default: a throwaway one)")
    parser.add_argument("--state-dir", type=Path, help="where runs are journaled")
    args = parser.parse_args()

    cache_dir: Path = args.cache_dir or Path(tempfile.mkdtemp(prefix="rollback-cache-"))
    if args.cache_dir is None:
        (cache_dir / "RELEASE").write_text("2.4.1\n")
        for i in range(3):
            (cache_dir / f"{i}.entry").write_text("stale")

    plan = rollback.Plan.load(HERE / "cache-rollback.yaml", vars={"cache_dir": str(cache_dir)})
    for step in plan.preview().steps:
        print(f"would {step['id']}: {step['summary']} {step['changes']}", file=sys.stderr)
    try:
        report = plan.run(reason=args.reason, on_event=show_event, state_dir=args.state_dir)
    except rollback.StepFailed as e:
        print(f"step {e.step} ({e.kind}) failed:\n{e.error}", file=sys.stderr)
        return 1
    except rollback.RunFailed as e:
        print(f"rollback did not succeed: {e}", file=sys.stderr)
        return 1
    flushed = report.step("flush").outputs
    print(f"run {report.run_id} {report.status}: deleted {flushed['deleted']} entries of release {flushed['release']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
