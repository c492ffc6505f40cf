"""Cross-cutting infrastructure: settings, database, task queue, errors, logging."""
