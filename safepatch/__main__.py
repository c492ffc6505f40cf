"""``python -m safepatch``: the same as the ``safepatch`` command."""

from safepatch.cli import main

main()
