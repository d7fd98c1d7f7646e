"""The compiled probe is cached per machine and kernel: plain data, reloaded
with no compiler, refused by nothing the cache can't vouch for."""
from __future__ import annotations

import json

import pytest

from ebpf_helpers import loaded_prog_ids, prog_ids, require_ebpf


def test_a_cache_hit_needs_no_compile_and_loads_the_same_programs(tmp_path, monkeypatch):
    require_ebpf()
    from agent.ebpf import loader
    from agent.ebpf.probe import PROGRAMS, SOURCE, StackProbe, cflags
    monkeypatch.setenv("EXRAY_EBPF_CACHE", str(tmp_path))
    obj, hit = loader.compiled(SOURCE.read_text(), cflags(), PROGRAMS)
    assert not hit and [p.name for p in obj.progs] == PROGRAMS
    [cached] = tmp_path.glob("*.json")
    d = json.loads(cached.read_text())
    maps = {m["name"]: m for m in d["maps"]}
    assert set(maps) >= {"plan", "state", "ctl", "tregs", "tslot", "work", "out", "progs"}
    assert all(maps[m]["flags"] & 1024 for m in ("state", "ctl", "tregs"))   # BPF_F_MMAPABLE: mapped by the agent
    # every map load of the bytecode is a relocation by name
    assert all(name in {m["name"] for m in d["maps"]} for p in d["progs"] for _, name in p["relocs"])

    import bcc
    monkeypatch.setattr(bcc, "BPF", None)      # a hit must not compile
    again, hit = loader.compiled(SOURCE.read_text(), cflags(), PROGRAMS)
    assert hit and again == obj
    with StackProbe() as probe:
        assert probe.from_cache
        ids = prog_ids(probe)
        assert len(loaded_prog_ids(ids, settle_s=0)) == len(PROGRAMS)
    assert not loaded_prog_ids(ids)


def test_a_damaged_or_foreign_cache_file_is_compiled_again(tmp_path, monkeypatch):
    require_ebpf()
    from agent.ebpf import loader
    from agent.ebpf.probe import PROGRAMS, SOURCE, cflags
    monkeypatch.setenv("EXRAY_EBPF_CACHE", str(tmp_path))
    key = loader.cache_key(SOURCE.read_text(), cflags())
    (tmp_path / f"{key}.json").write_text('{"version": 1, "key": "another"')
    obj, hit = loader.compiled(SOURCE.read_text(), cflags(), PROGRAMS)
    assert not hit and obj.key == key
    assert loader.ProbeObject.from_json((tmp_path / f"{key}.json").read_text()) == obj


def test_the_key_changes_with_the_source_and_the_flags():
    from agent.ebpf import loader
    assert loader.cache_key("a", ["-DX=1"]) != loader.cache_key("b", ["-DX=1"])
    assert loader.cache_key("a", ["-DX=1"]) != loader.cache_key("a", ["-DX=2"])


def test_a_refused_program_says_what_the_verifier_said():
    require_ebpf()
    from agent.ebpf import loader
    bad = loader.ProbeObject("k", "GPL", 0, [], [loader.ProgSpec("broken", "bf10000000000000", [])])
    with pytest.raises(loader.LoadError, match="the verifier refused broken"):
        loader.load(bad)
