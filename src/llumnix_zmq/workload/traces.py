"""Loaders for request traces: Azure LLM inference CSV, Mooncake JSONL, ShareGPT lengths CSV.

Every loader returns a :class:`Trace` of read-only numpy arrays, in file order:

| format   | layout                                              | arrivals                    |
|----------|-----------------------------------------------------|-----------------------------|
| azure    | CSV TIMESTAMP (wall clock, sub-second), ContextTokens, GeneratedTokens | seconds since row 0 |
| mooncake | JSONL timestamp (ms), input_length, output_length   | seconds since row 0         |
| sharegpt | CSV ..., prompt_tokens, completion_tokens           | none (generate them)        |

Loaded files are cached by (path, format, mtime, size); the arrays are read-only so a cached
trace cannot be changed by a caller.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

FORMATS = ("azure", "mooncake", "sharegpt")

# short names -> file names inside the shared traces directory
SHORT_NAMES = {
    "azure": "AzureLLMInferenceTrace_conv.csv",
    "mooncake": "mooncake_conversation_trace.jsonl",
    "sharegpt": "sharegpt_v3_first_pair_lengths.csv",
}

_AZURE_COLS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_SHAREGPT_COLS = ("prompt_tokens", "completion_tokens")
_MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")


@dataclass(frozen=True)
class Trace:
    """Lengths (and arrival offsets in seconds, first row at 0.0, when the trace has them)."""

    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    arrival_s: np.ndarray | None
    fmt: str
    path: str

    def __len__(self) -> int:
        return len(self.prompt_tokens)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _relative(seconds: np.ndarray) -> np.ndarray:
    return seconds - seconds[0] if len(seconds) else seconds


def _parse_wallclock(stamps: list[str]) -> np.ndarray:
    """'2023-11-16 18:15:46.6805900' -> float seconds (numpy datetime64 at ns resolution)."""
    iso = np.array([s.strip().replace(" ", "T") for s in stamps], dtype="datetime64[ns]")
    ns = (iso - iso[0]).astype(np.int64) if len(iso) else np.zeros(0, np.int64)
    return ns.astype(np.float64) / 1e9


def _csv_columns(path: Path, wanted: tuple[str, ...]) -> dict[str, list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in wanted if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing CSV columns {missing} (has {reader.fieldnames})")
        cols: dict[str, list[str]] = {c: [] for c in wanted}
        for row in reader:
            for c in wanted:
                cols[c].append(row[c])
    return cols


def _ints(values: list) -> np.ndarray:
    return np.asarray([int(float(v)) for v in values], dtype=np.int64)


def _load_azure(path: Path) -> Trace:
    cols = _csv_columns(path, _AZURE_COLS)
    arrivals = _parse_wallclock(cols["TIMESTAMP"])
    return Trace(_frozen(_ints(cols["ContextTokens"])), _frozen(_ints(cols["GeneratedTokens"])),
                 _frozen(arrivals), "azure", str(path))


def _load_sharegpt(path: Path) -> Trace:
    cols = _csv_columns(path, _SHAREGPT_COLS)
    return Trace(_frozen(_ints(cols["prompt_tokens"])), _frozen(_ints(cols["completion_tokens"])),
                 None, "sharegpt", str(path))


def _load_mooncake(path: Path) -> Trace:
    ts, inp, out = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            try:
                ts.append(float(rec["timestamp"]))
                inp.append(rec["input_length"])
                out.append(rec["output_length"])
            except KeyError as exc:
                raise ValueError(f"{path}:{lineno}: missing key {exc}") from None
    arrivals = _relative(np.asarray(ts, dtype=np.float64)) / 1000.0
    return Trace(_frozen(_ints(inp)), _frozen(_ints(out)), _frozen(arrivals), "mooncake", str(path))


_LOADERS = {"azure": _load_azure, "mooncake": _load_mooncake, "sharegpt": _load_sharegpt}


def detect_format(path: str | os.PathLike) -> str:
    """Guess the trace format from the first line (CSV header or JSON keys)."""
    with open(path, encoding="utf-8-sig") as f:
        first = f.readline().strip()
    if first.startswith("{"):
        keys = json.loads(first).keys()
        if all(k in keys for k in _MOONCAKE_KEYS):
            return "mooncake"
    else:
        header = next(csv.reader([first]), [])
        if all(c in header for c in _AZURE_COLS):
            return "azure"
        if all(c in header for c in _SHAREGPT_COLS):
            return "sharegpt"
    raise ValueError(f"{path}: unrecognised trace layout (first line {first[:120]!r})")


@lru_cache(maxsize=16)
def _load_cached(path: str, fmt: str, mtime_ns: int, size: int) -> Trace:
    return _LOADERS[fmt](Path(path))


def load_trace(path: str | os.PathLike, fmt: str | None = None) -> Trace:
    """Load a trace file; ``fmt`` is azure | mooncake | sharegpt, or None to autodetect."""
    p = Path(path).resolve()
    fmt = fmt or detect_format(p)
    if fmt not in _LOADERS:
        raise ValueError(f"unknown trace format {fmt!r}; expected one of {FORMATS}")
    st = p.stat()
    return _load_cached(str(p), fmt, st.st_mtime_ns, st.st_size)


def default_traces_dir(env: dict[str, str] | None = None) -> Path | None:
    """$LLUMNIX_TRACES_DIR, else ``<repo>/../shared/traces``, else ``./../shared/traces``."""
    env = os.environ if env is None else env
    candidates = []
    if env.get("LLUMNIX_TRACES_DIR"):
        candidates.append(Path(env["LLUMNIX_TRACES_DIR"]))
    repo = Path(__file__).resolve().parents[3]  # src/llumnix_zmq/workload/traces.py -> repo
    candidates += [repo.parent / "shared" / "traces", Path.cwd().parent / "shared" / "traces"]
    return next((c for c in candidates if c.is_dir()), None)


def resolve_trace(name: str, traces_dir: str | os.PathLike | None = None) -> Path:
    """A short name (azure | mooncake | sharegpt) or a path -> an existing file path."""
    if name in SHORT_NAMES:
        base = Path(traces_dir) if traces_dir is not None else default_traces_dir()
        if base is None or not (base / SHORT_NAMES[name]).is_file():
            raise FileNotFoundError(
                f"trace {name!r}: {SHORT_NAMES[name]} not found (set LLUMNIX_TRACES_DIR or put "
                "it in ../shared/traces)")
        return base / SHORT_NAMES[name]
    p = Path(name)
    if not p.is_file():
        raise FileNotFoundError(f"trace file {name!r} not found")
    return p
