"""The import structure's checks themselves (``make lint`` runs them over the real packages)."""

from __future__ import annotations

import subprocess
import sys

from tools.check_import_cycles import strongly_connected


def test_strongly_connected_finds_each_cycle_once() -> None:
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},  # a -> b -> c -> a
        "d": {"e"},
        "e": {"d"},  # d <-> e
        "f": {"a"},  # reaches a cycle, is in none
    }
    components = [c for c in strongly_connected(graph) if len(c) > 1]
    assert components == [["a", "b", "c"], ["d", "e"]]


def test_a_graph_without_cycles_has_only_single_modules() -> None:
    graph = {"a": {"b", "c"}, "b": {"c"}, "c": set[str]()}
    assert strongly_connected(graph) == [["a"], ["b"], ["c"]]


def loaded_modules(code: str) -> set[str]:
    """The top-level packages in sys.modules after running ``code`` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", f"{code}; import sys; print(*sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {name.split(".")[0] for name in done.stdout.split()}


HEAVY = {"torch", "transformers", "sqlalchemy", "fastapi", "celery"}


def test_contracts_load_without_torch_a_database_or_a_web_stack() -> None:
    modules = loaded_modules("import contracts." + ", contracts.".join(CONTRACTS))
    assert modules & HEAVY == set()
    assert {"app", "workers", "safepatch"} & modules == set()


def test_the_command_starts_without_torch() -> None:
    assert {"torch", "transformers"} & loaded_modules("import safepatch.cli") == set()


CONTRACTS = ("chat", "jsonl", "manifest", "prompts", "safety", "stages", "text")
