"""Celery workers and the training, evaluation and patching code they run."""
