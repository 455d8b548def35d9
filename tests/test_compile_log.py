"""compile_log attributes compile time to the named program being called, once per compile, and tells a
persistent-cache hit from a miss (the test session's cache stores every program: conftest.py)."""

import jax
import jax.numpy as jnp

from vlm_jax import compile_log


def _probe():
  """A fresh function object each call, the same program each time: a new trace and lowering that only the
  persistent cache can spare a compile."""
  def compile_log_probe(x):
    return jnp.sin(x) * 3.0 + jnp.arange(x.shape[0], dtype=x.dtype)
  return compile_log_probe


def test_compiles_are_attributed_to_the_outermost_named_call_and_a_second_compile_hits_the_cache(capsys):
  log = compile_log.LOG
  log.start(echo=True)
  try:
    inner = compile_log.named("inner", jax.jit(lambda x: x + 1.0))
    outer = compile_log.named("outer", jax.jit(lambda x: inner(x) * 2.0))
    x = jnp.ones((5,), jnp.float32)
    outer(x)
    outer(x)  # compiled already: nothing to record
    assert set(log.programs) == {"outer"} and log.programs["outer"].summary()["compiles"] == 1
    assert log.programs["outer"].compile_s > 0

    first = compile_log.named("probe", jax.jit(_probe()))
    first(jnp.ones((7,), jnp.float32))
    assert log.programs["probe"].cache == "miss" and log.programs["probe"].cache_writes == 1
    again = compile_log.named("probe_again", jax.jit(_probe()))
    again(jnp.ones((7,), jnp.float32))
    assert log.programs["probe_again"].cache == "hit"
  finally:
    log.stop()
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("compile: ")]
  assert [line.split()[1] for line in lines] == ["outer", "probe", "probe_again"], lines
  assert "(cache miss)" in lines[1] and "(cache hit" in lines[2]


def test_union_of_spans_counts_overlaps_once():
  assert compile_log._union_seconds([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0), (5.5, 5.7)]) == 4.0
  assert compile_log._union_seconds([]) == 0.0
