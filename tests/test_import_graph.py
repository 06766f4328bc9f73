"""The library's import graph: no cycle inside tiger_jax/, and no import of tasks/, benchmarks/ or experiments/.

Every import statement counts, function-level ones included (a lazy import still ties two modules together),
except a module importing itself (the `python -m` entry points do that to reach their importable copy).
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = "tiger_jax"
FORBIDDEN = ("tasks", "benchmarks", "experiments")


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, REPO)[:-len(".py")].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _is_module(name: str) -> bool:
  base = os.path.join(REPO, *name.split("."))
  return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))


def _imports(path: str, module: str) -> set:
  """Modules `path` imports: `from pkg import name` counts as pkg.name when that is a module, else pkg."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      for alias in node.names:
        full = f"{base}.{alias.name}"
        found.add(full if _is_module(full) else base)
  return found


def library_graph() -> dict:
  graph = {}
  for root, _, files in os.walk(os.path.join(REPO, LIBRARY)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        module = _module_name(path)
        graph[module] = {m for m in _imports(path, module) if m != module}
  return graph


def find_cycle(graph: dict):
  """One cycle among the library's modules as a list [a, b, ..., a], or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if nxt not in graph:
        continue
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_library_imports_form_no_cycle():
  cycle = find_cycle(library_graph())
  assert cycle is None, " -> ".join(cycle)


def test_library_imports_nothing_outside_itself_of_this_repository():
  bad = {module: sorted(m for m in imports if m.split(".")[0] in FORBIDDEN)
         for module, imports in library_graph().items()}
  assert not {m: i for m, i in bad.items() if i}


def test_the_checks_see_a_cycle_and_a_forbidden_import():
  """The walker itself: a two-module cycle and an import of tasks/ are found."""
  graph = {"tiger_jax.a": {"tiger_jax.b"}, "tiger_jax.b": {"tiger_jax.a", "tasks.vocab"}}
  assert find_cycle(graph) == ["tiger_jax.a", "tiger_jax.b", "tiger_jax.a"]
  assert find_cycle({"tiger_jax.a": {"tiger_jax.b"}, "tiger_jax.b": set()}) is None


@pytest.mark.parametrize("source,expected", [
    ("from tiger_jax import vocab", {"tiger_jax.vocab"}),
    ("from tiger_jax.data import load_dataset", {"tiger_jax.data"}),
    ("import tasks.tiger_tasks", {"tasks.tiger_tasks"}),
    ("def f():\n  from tasks import cache_tasks", {"tasks.cache_tasks"}),
])
def test_imports_are_read_at_every_level(tmp_path, source, expected):
  path = tmp_path / "m.py"
  path.write_text(source)
  assert _imports(str(path), "tiger_jax.m") == expected
