"""The composition root: the ``safepatch`` command, which wires the API (``app``) and the workers
(``workers``) together. Nothing imports this package; it may import every other one.

Its modules import only typer and torch-free code at the top level (torch and transformers are
imported inside the commands), so ``safepatch serve`` and ``--help`` start fast and never load
them.
"""
