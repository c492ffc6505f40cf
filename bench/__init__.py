"""Measurements of the product, each runnable from the repository root as a module
(``.venv/bin/python -m bench.pipeline``); their results are in docs/."""
