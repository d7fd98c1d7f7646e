"""ProcessRecords on the wire: agent/records.py's dataclasses as JSON, and back.

The agent streams each process's record as this JSON, cut into chunks
(`chunks`); the control plane joins them and rebuilds the dataclasses
(`record_from_json`). Unknown keys from a newer agent are dropped, missing
ones take the dataclass defaults, so the two ends may differ by a release.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Iterator

from .records import CaptureRecord, FrameRecord, GoroutineRecord, ProcessRecord


def record_to_json(rec: ProcessRecord) -> bytes:
    return json.dumps(dataclasses.asdict(rec), separators=(",", ":")).encode()


def _known(cls, d: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def record_from_json(data: bytes | str) -> ProcessRecord:
    d = json.loads(data)
    gs = []
    for g in d.pop("goroutines", []):
        frames = [FrameRecord(**_known(FrameRecord, f)) for f in g.pop("frames", [])]
        caps = [CaptureRecord(**_known(CaptureRecord, c)) for c in g.pop("captures", [])]
        gs.append(GoroutineRecord(**_known(GoroutineRecord, g), frames=frames, captures=caps))
    return ProcessRecord(**_known(ProcessRecord, d), goroutines=gs)


def chunks(data: bytes, size: int) -> Iterator[tuple[bytes, bool]]:
    """(slice, is_last) of `data` in slices of at most `size` bytes (one empty slice for b"")."""
    if not data:
        yield b"", True
        return
    for i in range(0, len(data), size):
        yield data[i:i + size], i + size >= len(data)
