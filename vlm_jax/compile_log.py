"""Compile seconds of each named program a run compiles, and whether the persistent compilation cache served it.

`named("train_step", jitted_fn)` returns fn running every call under that name; jax's monitoring events fired
during a call (tracing to a jaxpr, lowering to MLIR, XLA compiling or reading the persistent cache, see
vlm_jax/compilation_cache.py) are attributed to the outermost named call on the thread. A call that compiles
nothing fires no event and records nothing, so after the first call a program costs one list push and pop.

LOG, the process's one log, records every program in LOG.programs (name -> its figures, see `Program`).
`LOG.start(path)` (the trainer and evaluate do) also prints one line per compile,
"compile: train_step 12.3 s (cache miss)", and keeps `path` (a JSON file: compile_times.json in the
workdir) up to date with every program's figures and the extras the caller adds (time_to_first_step_s).

compile_s counts the union of the trace, lowering and XLA spans of the program's calls (nested jits are not
counted twice); xla_s the XLA part alone (on a cache hit: reading the executable back). cache: "hit",
"miss", "off" (no persistent cache) or "k/n hits" when a name compiled several programs with mixed outcomes;
a miss is not written to the cache when it compiled in under jax_persistent_cache_min_compile_time_secs.
"""

import dataclasses
import functools
import json
import os
import threading
import time

import jax

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
XLA_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_REQUEST_EVENT = "/jax/compilation_cache/compile_requests_use_cache"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_WRITE_EVENT = "/jax/compilation_cache/cache_misses"  # jax fires it when it writes a missed entry
SAVED_EVENT = "/jax/compilation_cache/compile_time_saved_sec"


def _union_seconds(spans) -> float:
  """Total length of the union of (start, end) intervals."""
  total, reach = 0.0, float("-inf")
  for start, end in sorted(spans):
    if end > reach:
      total += end - max(start, reach)
      reach = end
  return total


@dataclasses.dataclass
class Program:
  """What the calls of one named program compiled: its compile events' spans (start, end), how many XLA
  compiles, how many asked the persistent cache, were served by it, were written to it, and the seconds saved."""
  spans: list = dataclasses.field(default_factory=list)
  xla_spans: list = dataclasses.field(default_factory=list)
  cache_requests: int = 0
  cache_hits: int = 0
  cache_writes: int = 0
  saved_s: float = 0.0

  def add(self, other: "Program") -> None:
    self.spans += other.spans
    self.xla_spans += other.xla_spans
    self.cache_requests += other.cache_requests
    self.cache_hits += other.cache_hits
    self.cache_writes += other.cache_writes
    self.saved_s += other.saved_s

  @property
  def compile_s(self) -> float:
    return _union_seconds(self.spans)

  @property
  def cache(self) -> str:
    if not self.cache_requests:
      return "off"
    if self.cache_hits == self.cache_requests:
      return "hit"
    return "miss" if not self.cache_hits else f"{self.cache_hits}/{self.cache_requests} hits"

  def summary(self) -> dict:
    return {"compile_s": round(self.compile_s, 3), "xla_s": round(_union_seconds(self.xla_spans), 3),
            "compiles": len(self.xla_spans), "cache": self.cache, "cache_written": self.cache_writes,
            "cache_saved_s": round(self.saved_s, 3)}

  def describe(self) -> str:
    """The parenthesis of the printed line: the cache's part in it."""
    if self.cache == "hit":
      return f"cache hit, {self.saved_s:.1f} s saved" if self.saved_s > 0 else "cache hit"
    if self.cache == "miss" and not self.cache_writes:
      minimum = jax.config.jax_persistent_cache_min_compile_time_secs
      return f"cache miss; not cached: under the {minimum:g} s minimum"
    return f"cache {self.cache}" if self.cache != "off" else "no persistent cache"


class CompileLog:
  """The compile figures of the process's named programs; see the module docstring."""

  def __init__(self):
    self.programs = {}
    self.extras = {}
    self.path = None
    self.echo = False
    self._local = threading.local()

  def start(self, path: str | None = None, echo: bool = True) -> None:
    """Prints a line per compile from now on and keeps `path` (if given) written."""
    self.path, self.echo = path, echo
    self.programs = {}
    self.extras = {}

  def stop(self) -> None:
    self.path, self.echo = None, False

  def _stack(self) -> list:
    if not hasattr(self._local, "stack"):
      self._local.stack = []
    return self._local.stack

  def pending(self) -> Program | None:
    """The record of the named call running on this thread, or None outside any."""
    stack = self._stack()
    return stack[0][1] if stack else None

  def call(self, name: str, fn, *args, **kwargs):
    stack = self._stack()
    stack.append((name, Program()))
    try:
      return fn(*args, **kwargs)
    finally:
      _, record = stack.pop()
      if not stack and record.spans:
        self.record(name, record)

  def record(self, name: str, record: Program) -> None:
    total = self.programs.setdefault(name, Program())
    total.add(record)
    if self.echo:
      print(f"compile: {name} {record.compile_s:.1f} s ({record.describe()})", flush=True)
    self.write()

  def compile_s(self, name: str) -> float | None:
    return self.programs[name].compile_s if name in self.programs else None

  def add(self, **extras) -> None:
    """Figures to keep beside the programs' in the JSON file, e.g. time_to_first_step_s."""
    self.extras.update(extras)
    self.write()

  def summary(self) -> dict:
    return {"programs": {name: p.summary() for name, p in self.programs.items()}, **self.extras}

  def write(self) -> None:
    if not self.path:
      return
    with open(self.path + ".tmp", "w") as f:
      json.dump(self.summary(), f, indent=1)
    os.replace(self.path + ".tmp", self.path)


LOG = CompileLog()


def named(name: str, fn):
  """fn (a jitted function) whose calls are attributed to program `name` in LOG."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    return LOG.call(name, fn, *args, **kwargs)
  return wrapper


def _on_span(event: str, start: float, end: float, **kwargs) -> None:
  del kwargs
  record = LOG.pending()
  if record is not None and event in (TRACE_EVENT, LOWER_EVENT, XLA_EVENT):
    record.spans.append((start, end))
    if event == XLA_EVENT:
      record.xla_spans.append((start, end))


def _on_event(event: str, **kwargs) -> None:
  del kwargs
  record = LOG.pending()
  if record is None:
    return
  if event == CACHE_REQUEST_EVENT:
    record.cache_requests += 1
  elif event == CACHE_HIT_EVENT:
    record.cache_hits += 1
  elif event == CACHE_WRITE_EVENT:
    record.cache_writes += 1


def _on_duration(event: str, seconds: float, **kwargs) -> None:
  del kwargs
  record = LOG.pending()
  if record is not None and event == SAVED_EVENT:
    record.saved_s += seconds


jax.monitoring.register_event_time_span_listener(_on_span)
jax.monitoring.register_event_listener(_on_event)
jax.monitoring.register_event_duration_secs_listener(_on_duration)

_COMMAND_STARTED = [None]


def mark_command_start(when: float | None = None) -> None:
  """The command line's start (time.time()), which time to first step counts from (the CLIs call it)."""
  _COMMAND_STARTED[0] = time.time() if when is None else when


def command_started() -> float | None:
  return _COMMAND_STARTED[0]
