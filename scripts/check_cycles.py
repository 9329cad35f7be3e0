"""Fail when any modules of bot/ import each other in a cycle (directly or through others).

import-linter's layers keep the direction between layers; this catches cycles inside a layer too
(two engine modules, or a face's modules, that need each other). Imports made only for type hints
(under ``if TYPE_CHECKING:``) do not count: they never run.
"""

from __future__ import annotations

import sys

import grimp


def cycles(package: str = "bot") -> list[list[str]]:
    graph = grimp.build_graph(package, exclude_type_checking_imports=True)
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:  # Tarjan's strongly connected components, without recursion
        nonlocal counter
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    return found


def main() -> int:
    found = cycles(sys.argv[1] if len(sys.argv) > 1 else "bot")
    for component in found:
        print("import cycle: " + " ↔ ".join(component), file=sys.stderr)
    if found:
        print(f"{len(found)} import cycle(s) in bot/: break them (move the shared part down a layer)", file=sys.stderr)
        return 1
    print("no import cycles in bot/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
