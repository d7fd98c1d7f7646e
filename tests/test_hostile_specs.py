"""Hostile specs: what a committed exray.yaml may do to whoever opens it.

Each case ends within seconds with an error at the spec's line and column,
and its peak memory is measured (VmHWM after resetting it through
/proc/self/clear_refs) and held to a bound: docs/security.md quotes them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probe_compiler.errors import SpecError
from probe_compiler.spec import READ_LIMITS, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
EXRAY = [sys.executable, "-m", "server.cli"]

# Peak memory a refused include may add. The cases measure 0-4 kB (the
# 20,000-entry glob walk and the included files a few MB); 16 MB
# is far below what reading /dev/zero or the 100 MB file would take.
MAX_GROWTH_KB = 16 << 10
MAX_SECONDS = 10.0


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _measured(fn) -> tuple[object, float, int]:
    """(result or exception, seconds, peak RSS growth in kB) of fn()."""
    try:
        Path("/proc/self/clear_refs").write_text("5")      # resets VmHWM to the current RSS
    except OSError:
        pass
    before = _vm("VmRSS")
    t = time.monotonic()
    try:
        out = fn()
    except Exception as e:      # noqa: BLE001 - the test looks at what it is
        out = e
    return out, time.monotonic() - t, _vm("VmHWM") - before


def _refused(spec_dir: Path, include: str) -> SpecError:
    (spec_dir / "exray.yaml").write_text(f'version: 1\ninclude: ["{include}"]\n')
    err, seconds, grew = _measured(lambda: load_spec(spec_dir / "exray.yaml"))
    assert isinstance(err, SpecError), err
    assert (err.line, err.column) == (2, 11), err
    assert seconds < MAX_SECONDS and grew < MAX_GROWTH_KB, (seconds, grew, err)
    return err


@pytest.mark.timeout(60)
def test_include_of_dev_zero_is_outside_the_root(tmp_path):
    assert "outside the module root" in str(_refused(tmp_path, "/dev/zero"))


@pytest.mark.timeout(60)
def test_include_of_a_device_inside_the_root_is_not_read(tmp_path):
    os.symlink("/dev/zero", tmp_path / "zero.yaml")             # a link out of the root
    assert "symlink to /dev/zero" in str(_refused(tmp_path, "zero.yaml"))
    os.mknod(tmp_path / "dev.yaml", 0o600 | 0o020000, os.makedev(1, 5))   # /dev/zero's numbers
    assert "character device, not a regular file" in str(_refused(tmp_path, "dev.yaml"))


@pytest.mark.timeout(60)
def test_include_of_a_fifo_never_blocks(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")                           # no writer: an open() would block
    assert "FIFO (named pipe), not a regular file" in str(_refused(tmp_path, "pipe.yaml"))
    assert "FIFO" in str(_refused(tmp_path, "*.yaml"))          # a glob that matches it


@pytest.mark.timeout(60)
def test_include_of_everything_is_refused_before_any_scan(tmp_path):
    assert "outside the module root" in str(_refused(tmp_path, "/**"))
    assert "outside the module root" in str(_refused(tmp_path, "../../**/*.yaml"))


@pytest.mark.timeout(60)
def test_include_of_etc_passwd(tmp_path):
    err = _refused(tmp_path, "../../etc/passwd")
    assert "outside the module root" in str(err) and str(tmp_path) in str(err)


@pytest.mark.timeout(60)
def test_symlink_out_of_the_root(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.yaml").write_text("version: 1\n")
    mod = tmp_path / "mod"
    mod.mkdir()
    os.symlink(outside / "x.yaml", mod / "x.yaml")
    os.symlink(outside, mod / "linked")                         # a folder link
    assert "symlink to" in str(_refused(mod, "x.yaml"))
    assert "symlink to" in str(_refused(mod, "linked/x.yaml"))
    err = _refused(mod, "**/*.yaml")                            # the walk finds the file link
    assert "symlink to" in str(err)


@pytest.mark.timeout(60)
def test_a_100_mb_include_is_refused_by_its_size(tmp_path):
    with open(tmp_path / "big.yaml", "wb") as f:
        f.write(b"version: 1\n# " + b"x" * (100 << 20) + b"\n")
    err = _refused(tmp_path, "big.yaml")
    assert f"over the limit of one spec file ({READ_LIMITS.max_file_bytes:,} bytes)" in str(err)


@pytest.mark.timeout(60)
def test_a_wide_glob_stops_at_its_entry_bound(tmp_path):
    wide = tmp_path / "wide"
    wide.mkdir()
    for i in range(READ_LIMITS.max_glob_entries + 1):
        os.close(os.open(wide / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600))
    err = _refused(tmp_path, "**/*.yaml")
    assert f"looks at more than {READ_LIMITS.max_glob_entries:,} directory entries" in str(err)


@pytest.mark.timeout(60)
def test_a_deep_glob_stops_at_its_depth_bound(tmp_path):
    deep = tmp_path.joinpath(*[f"d{i}" for i in range(READ_LIMITS.max_glob_depth + 3)])
    deep.mkdir(parents=True)
    (deep / "x.yaml").write_text("version: 1\n")
    err = _refused(tmp_path, "**/x.yaml")
    assert f"descends more than {READ_LIMITS.max_glob_depth} folders" in str(err)


@pytest.mark.timeout(60)
def test_include_count_is_bounded(tmp_path):
    for i in range(READ_LIMITS.max_files + 1):
        (tmp_path / f"s{i:03}.yaml").write_text("version: 1\n")
    err = _refused(tmp_path, "s*.yaml")
    assert f"more than {READ_LIMITS.max_files} files" in str(err)


def test_total_size_is_bounded(tmp_path, monkeypatch):
    """The same walk with smaller bounds: parsing 4 MiB of YAML takes seconds
    on a busy machine, and the test is about where reading stops."""
    import probe_compiler.spec as spec_module
    limits = spec_module.ReadLimits(max_file_bytes=64 << 10, max_total_bytes=256 << 10)
    monkeypatch.setattr(spec_module, "READ_LIMITS", limits)
    chunk = "version: 1\n#" + "x" * (limits.max_file_bytes - 20) + "\n"
    n = limits.max_total_bytes // len(chunk) + 1
    for i in range(n):
        (tmp_path / f"s{i}.yaml").write_text(chunk)
    err = _refused(tmp_path, "s*.yaml")
    assert "the limit of all the spec's files together" in str(err)


# ------------------------------------------------------------ the top file itself

@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "big", "binary"])
def test_the_top_spec_file_is_checked_too(tmp_path, kind):
    path = tmp_path / "exray.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        os.mknod(path, 0o600 | 0o020000, os.makedev(1, 5))
    elif kind == "big":
        with open(path, "wb") as f:
            f.truncate(100 << 20)
    else:
        path.write_bytes(bytes(range(256)) * 64)
    err, seconds, grew = _measured(lambda: load_spec(path))
    assert isinstance(err, SpecError), err
    assert seconds < MAX_SECONDS and grew < MAX_GROWTH_KB, (seconds, grew)
    words = {"fifo": "FIFO", "directory": "a directory", "device": "character device",
             "big": "over the limit", "binary": "not UTF-8"}[kind]
    assert words in str(err)


def test_text_given_directly_is_bounded():
    with pytest.raises(SpecError, match="over the limit of one spec file"):
        parse_spec("version: 1\n#" + "x" * READ_LIMITS.max_file_bytes)


@pytest.mark.timeout(60)
def test_an_alias_bomb_is_refused_by_its_expanded_size():
    """Billion laughs: each level repeats the one above ten times."""
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i-1}"] * 10) + "]")
    lines.append("functions:\n  main.f:\n    capture: *a8")
    err, seconds, grew = _measured(lambda: parse_spec("\n".join(lines) + "\n"))
    assert isinstance(err, SpecError) and "aliases" in str(err), err
    assert seconds < MAX_SECONDS and grew < MAX_GROWTH_KB


def test_a_recursive_alias_is_refused():
    with pytest.raises(SpecError, match="refer to themselves"):
        parse_spec("version: 1\nfunctions: &f\n  main.f: *f\n")


def test_deep_nesting_is_an_error_not_a_recursion_error():
    with pytest.raises(SpecError, match="nested too deeply|expected"):
        parse_spec("version: 1\nfunctions: " + "[" * 50_000 + "]" * 50_000 + "\n")


def test_includes_still_work_within_the_root(tmp_path):
    (tmp_path / "svc" / "a").mkdir(parents=True)
    (tmp_path / "svc" / "a" / "exray.yaml").write_text("version: 1\ninclude: ../../common.yaml\n")
    (tmp_path / "common.yaml").write_text("version: 1\nfunctions:\n  main.f:\n")
    (tmp_path / "svc" / "link.yaml").symlink_to(tmp_path / "common.yaml")    # a link inside: fine
    (tmp_path / "exray.yaml").write_text("version: 1\ninclude: ['**/exray.yaml', svc/link.yaml]\n")
    spec = load_spec(tmp_path / "exray.yaml")
    assert [f.symbol for f in spec.functions] == ["main.f"]
    assert len(spec.files) == 3


# ------------------------------------------------------------ the CLI says it, without a traceback

@pytest.mark.timeout(120)
@pytest.mark.parametrize("include", ["/dev/zero", "pipe.yaml", "/**", "../../etc/passwd"])
def test_check_spec_prints_the_error(tmp_path, include):
    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "exray.yaml").write_text(f'version: 1\ninclude: ["{include}"]\n')
    p = subprocess.run([*EXRAY, "check-spec", str(tmp_path / "exray.yaml")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith(f"error: {tmp_path}/exray.yaml:2:11: "), p.stderr


# ------------------------------------------------------------ checking is linear in the spec's size

def _reports_spec(n: int) -> str:
    """n reports: a chain (each reads the one before) and a fan (each also
    reads the function table), so both ordering and lookups are exercised."""
    lines = ["version: 1", "functions:", "  main.handle:", "    capture: [req.ID, req.Path]",
             "reports:"]
    for i in range(n):
        src = "main_handle" if i == 0 else f"r{i - 1}"
        lines.append(f"  r{i}: SELECT r.goid, r.req_ID FROM {src} AS r "
                     f"JOIN main_handle AS h ON h.goid = r.goid WHERE r.goid > {i}")
    lines.append("links: [{from: r%d(goid), to: goroutines(goid)}]" % (n - 1))
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(600)
def test_checking_reports_is_linear():
    """500, 1,000 and 2,000 reports took 1.75, 5.5 and 22.9 s (quadratic:
    sqlglot normalized the whole schema for every report). Four times the
    reports must take well under 16 times as long; a generous 8 leaves
    room for a shared machine."""
    def seconds(n: int) -> float:
        text = _reports_spec(n)
        t = time.process_time()
        spec = parse_spec(text)
        assert len(spec.reports) == n
        return time.process_time() - t
    seconds(200)                        # warm sqlglot's caches
    small, big = seconds(2000), seconds(8000)
    assert big / small < 8, (small, big)


def test_many_wrong_reports_stay_linear():
    """Every report naming an unknown table: the 'did you mean' search (one
    pass over every name) runs for the first errors only."""
    n = 3000
    lines = ["version: 1", "reports:"] + [f"  r{i}: SELECT * FROM nope{i}" for i in range(n)]
    t = time.process_time()
    from probe_compiler.spec_sql import check_spec
    spec = parse_spec("\n".join(lines) + "\n", check_sql=False)
    errors = check_spec(spec)
    assert len(errors) == n
    assert time.process_time() - t < 60
