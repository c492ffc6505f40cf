"""Uploaded datasets: OpenAI's files resource (``purpose=fine-tune``), stored by content hash."""
