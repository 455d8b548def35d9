"""The package's layering: no import cycle, entry modules imported by nothing, configs load without jax,
and no model is recognised by its name outside vlm_jax/models/."""

import ast
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "vlm_jax")
ENTRY_MODULES = {"vlm_jax.train", "vlm_jax.evaluate", "vlm_jax.predict", "vlm_jax.benchmark", "vlm_jax.prepare",
                 "vlm_jax.export"}


def _modules() -> dict:
  """Dotted module name -> source path, for every module of the package."""
  found = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        parts = os.path.relpath(os.path.join(root, name), REPO)[:-3].split(os.sep)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(root, name)
  return found


def _imports(path: str, modules) -> set:
  """The package modules a file imports anywhere (top level or inside functions)."""
  imported = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      imported |= {alias.name for alias in node.names if alias.name in modules}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlm_jax"):
      for alias in node.names:  # `from a import b`: module a.b when it is one, else a
        imported.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module)
  return imported


def _graph() -> dict:
  modules = _modules()
  return {name: _imports(path, modules) for name, path in modules.items()}


def test_the_package_has_no_import_cycle():
  graph, state, cycles = _graph(), {}, []

  def visit(module, stack):
    state[module] = "open"
    for imported in sorted(graph[module]):
      if state.get(imported) == "open":
        cycles.append(stack[stack.index(imported):] + [imported])
      elif imported not in state:
        visit(imported, stack + [imported])
    state[module] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not cycles, cycles


def test_entry_modules_are_imported_by_nothing_so_python_m_runs_them_once():
  graph = _graph()
  importers = {m: sorted(n for n, imports in graph.items() if m in imports) for m in ENTRY_MODULES | {"vlm_jax.cli"}}
  assert all(not importers[m] for m in ENTRY_MODULES), importers
  assert set(importers["vlm_jax.cli"]) <= ENTRY_MODULES, importers


def test_a_config_file_loads_without_jax():
  hf = "tests/fixtures/hf"
  code = ("import sys; from vlm_jax import run_config; run_config.load_config('configs/shapes_coca.py'); "
          f"run_config.load_config('configs/llava_hf.py:vision={hf}/llava_clip_vision,lm={hf}/llava_llama,stage=1'); "
          "print(sorted(m for m in ('jax', 'flax', 'tensorflow_datasets', 'grain') if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "[]"


def test_no_model_name_is_compared_outside_the_models_package():
  from vlm_jax import models
  names = set(models.MODEL_NAMES)

  def constants(node):
    if isinstance(node, ast.Constant):
      return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
      return {e.value for e in node.elts if isinstance(e, ast.Constant)}
    return set()

  found = []
  for module, path in _modules().items():
    if module.startswith("vlm_jax.models"):
      continue
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Compare):
        hits = set().union(*(constants(n) for n in [node.left, *node.comparators])) & names
        found += [f"{module}:{node.lineno} {sorted(hits)}"] if hits else []
      elif isinstance(node, ast.Dict):
        hits = set().union(*(constants(k) for k in node.keys if k is not None)) & names
        found += [f"{module}:{node.lineno} {sorted(hits)}"] if hits else []
  assert not found, found
