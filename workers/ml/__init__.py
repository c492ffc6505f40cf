"""Training, evaluation and patching code that runs inside the GPU/CPU workers.

Everything here may import torch; nothing under ``app/`` may import from this package at module
level (the HTTP front end must start fast and stay small).
"""
