"""Workloads for the load generator and the simulator: traces, length samplers, arrivals.

Pure and fast (numpy only): ``build_workload(...) -> list[WorkItem]`` is deterministic per seed.
"""

from .arrivals import gamma_arrivals, poisson_arrivals, trace_arrivals, trace_rate
from .lengths import PAPER_CAP, ArtifactZipfLengths, FixedLengths, LengthSpec, ZipfLengths, parse_length_spec
from .spec import ARRIVALS, HIGH, NORMAL, WorkItem, build_workload, workload_summary
from .traces import (FORMATS, SHORT_NAMES, Trace, default_traces_dir, detect_format, load_trace,
                     resolve_trace)

__all__ = [
    "ARRIVALS", "FORMATS", "HIGH", "NORMAL", "PAPER_CAP", "SHORT_NAMES",
    "ArtifactZipfLengths", "FixedLengths", "LengthSpec", "Trace", "WorkItem", "ZipfLengths",
    "build_workload", "default_traces_dir", "detect_format", "gamma_arrivals", "load_trace",
    "parse_length_spec", "poisson_arrivals", "resolve_trace", "trace_arrivals", "trace_rate",
    "workload_summary",
]
