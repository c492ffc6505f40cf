"""Fail when the project's modules import each other in a cycle.

    python -m tools.check_import_cycles        # part of `make lint`, from the repository root

Builds grimp's import graph of our packages (every import counts: at module level, inside
functions and under TYPE_CHECKING) and lists each strongly connected component of more than one
module, i.e. each set of modules that reach one another through their imports. No exceptions:
grimp records ``from workers import data`` as an import of ``workers.data``, not of
``workers/__init__.py``, so a package and its own submodules form no cycle.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

import grimp

PACKAGES = ("app", "bench", "contracts", "safepatch", "workers")


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively (no recursion limit): every component, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return sorted(components)


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Each set of more than one module whose imports lead from any of them to all the others."""
    imports = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    return [component for component in strongly_connected(imports) if len(component) > 1]


def main() -> int:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    cycles = import_cycles(graph)
    for component in cycles:
        members = set(component)
        print(f"import cycle among {len(component)} modules:", file=sys.stderr)
        for module in component:
            targets = sorted(members & graph.find_modules_directly_imported_by(module))
            print(f"  {module} -> {', '.join(targets)}", file=sys.stderr)
    if cycles:
        return 1
    print(f"no import cycles in {', '.join(PACKAGES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
