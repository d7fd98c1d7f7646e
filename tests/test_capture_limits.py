"""Capture limits are one value (probe_compiler/capture_limits.py), set by the
spec's `limits:` and by `exray snapshot`'s flags, within hard ceilings, and
passed down to the pause, the stack copies and the decoder."""
from __future__ import annotations

import pytest

from probe_compiler import capture_limits as cl
from probe_compiler.decode import Budgets
from probe_compiler.errors import SpecError
from probe_compiler.spec import parse_spec


def test_defaults_are_defined_once():
    from agent.snapshot import SnapshotOptions
    assert cl.DEFAULTS.budgets() == Budgets()
    o = SnapshotOptions()
    assert (o.deadline_s, o.capture_share, o.stack_copy_bytes, o.max_frames) == \
        (cl.DEFAULTS.deadline_ms / 1e3, cl.DEFAULTS.capture_share, cl.DEFAULTS.stack_copy_bytes,
         cl.DEFAULTS.max_frames)
    o.capture_share = 0.25        # the agent service sets it so: it lands in the one value
    assert o.limits.capture_share == 0.25 and SnapshotOptions(deadline_s=0.5).limits.deadline_ms == 500
    assert not cl.DEFAULTS.over_ceiling()


def test_spec_limits_set_capture_bounds_beside_the_sql_ones(tmp_path):
    spec = parse_spec("version: 1\nlimits:\n  deadline_ms: 50\n  string_bytes: 1024\n"
                      "  statement_seconds: 5\n")
    assert spec.capture_limits.deadline_ms == 50 and spec.capture_limits.string_bytes == 1024
    assert spec.sql_limits.statement_seconds == 5
    with pytest.raises(SpecError, match="above its ceiling"):
        parse_spec("version: 1\nlimits:\n  depth: 1000\n")
    with pytest.raises(SpecError, match="more than 0"):
        parse_spec("version: 1\nlimits:\n  elements: 0\n")
    # an included file can only lower a bound
    from probe_compiler.spec import load_spec
    (tmp_path / "more.yaml").write_text("version: 1\nlimits:\n  string_bytes: 9999\n  elements: 3\n")
    (tmp_path / "exray.yaml").write_text("version: 1\ninclude: more.yaml\nlimits:\n  string_bytes: 100\n")
    spec = load_spec(str(tmp_path / "exray.yaml"))
    assert spec.capture_limits.string_bytes == 100 and spec.capture_limits.elements == 3


def test_cli_flags_override_within_ceilings():
    from server.cli import _capture_limits, build_parser
    from server.errors import ServerError
    p = build_parser()
    args = p.parse_args(["snapshot", "--pid", "1", "--deadline-ms", "40", "--string-bytes", "8"])
    assert _capture_limits(args) == {"deadline_ms": 40.0, "string_bytes": 8}
    with pytest.raises(ServerError, match="ceiling"):
        _capture_limits(p.parse_args(["snapshot", "--pid", "1", "--max-frames", "10000000"]))


def test_limits_reach_the_snapshot(go_build, tmp_path, capsys):
    """A spec's string_bytes cuts the captured string; a flag cuts it shorter."""
    from server.snapshot_job import run, snapshot_pids
    from server.store import reading
    from targets import run_target
    spec_text = ("version: 1\nlimits:\n  string_bytes: 4\nfunctions:\n"
                 "  main.parkLabeled:\n    capture: [sku]\n")
    (tmp_path / "exray.yaml").write_text(spec_text)
    with run_target(go_build("parkers"), "-labeled", "2") as t:
        [rec] = snapshot_pids([t.pid], parse_spec(spec_text))
        skus = [c.values["sku"] for g in rec.goroutines for c in g.captures]
        assert skus == [{"__truncated": "bytes", "len": 6, "value": "widg"}] * 2, skus
        out = tmp_path / "s.sqlite"
        assert run([t.pid], str(tmp_path / "exray.yaml"), str(out), limits={"string_bytes": 2}) == 0
    with reading(str(out)) as db:
        got = [r[0] for r in db.execute("SELECT sku FROM main_parkLabeled")]
    assert all('"wi"' in v for v in got), got
