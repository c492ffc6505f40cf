"""The torch-free contracts shared by the API (``app``) and the workers (``workers``).

What both sides must agree on lives here and nowhere else: the chat JSONL a customer uploads and
its limits, prompt files, model manifests, the evaluation stages and the job's safety settings.
Nothing here imports ``app``, ``workers``, torch, SQLAlchemy, FastAPI or Celery.
"""
