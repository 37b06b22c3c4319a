"""Crash matrix: every operation kind, the daemon killed with SIGKILL at several offsets into
it, then started again; after each, every operation must end and the cloud must agree with
itself (tests/crash.py says what is checked). Not a timing benchmark: it records, per kind and
offset, how the operation ended, how long recovery took (restart -> operation ended), and any
disagreement found, and exits non-zero when there was one.

    sudo .venv/bin/python -m bench.crash [--offsets 0,0.2,0.5,1,2,4] [--kinds image-capture,...]

The integration suite runs a bounded subset (tests/integration/test_crash_points.py). The
image build is left out (it takes minutes; its steps are files written atomically)."""

from __future__ import annotations

import argparse
import sys
import time

from bench.common import machine, new_daemon, write_results
from tests.crash import CASES, Outcome, cleanup, crash_at

OFFSETS = [0.0, 0.2, 0.5, 1.0, 2.0, 4.0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--offsets", default=",".join(str(o) for o in OFFSETS))
    ap.add_argument("--kinds", default=",".join(CASES), help="operation kinds (comma-separated)")
    args = ap.parse_args()
    offsets = [float(x) for x in args.offsets.split(",") if x]
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in CASES]
    if unknown:
        ap.error(f"unknown kinds {unknown}; known: {', '.join(CASES)}")
    info = machine()
    d = new_daemon()
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    try:
        d.start()
        d.cli("image", "build", "tiny", timeout=1800).ok()
        for kind in kinds:
            for offset in offsets:
                try:
                    out = crash_at(d, CASES[kind], offset)
                except Exception as err:  # a case that could not even be checked
                    out = Outcome(kind, offset, "error", repr(err), 0.0, [f"harness: {err!r}"])
                    if d.proc is None or d.proc.poll() is not None:
                        d.start()
                outcomes.append(out)
                flag = "ok" if not out.problems else "PROBLEMS: " + "; ".join(out.problems)
                print(f"{kind:20} +{offset:4.1f}s {out.op_status:9} {out.recovered_s:6.1f}s {flag}")
                sys.stdout.flush()
        cleanup(d)
    finally:
        d.teardown()
    bad = [o for o in outcomes if o.problems]
    lines = [
        "# Crash matrix (kill -9 of the daemon during each operation kind)",
        "",
        f"{len(outcomes)} crash points, {len(bad)} with a disagreement; "
        f"{time.monotonic() - t0:.0f} s in all; load {info['loadavg_start']}.",
        "",
        "| operation | offset (s) | ended | recovery (s) | problems |",
        "|---|---:|---|---:|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.kind} | {o.offset} | {o.op_status} | {o.recovered_s} | "
            f"{'; '.join(o.problems) or '-'} |"
        )
    write_results(
        "crash",
        {"machine": info, "offsets": offsets, "outcomes": [o.__dict__ for o in outcomes]},
        "\n".join(lines),
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
