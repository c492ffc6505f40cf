"""The append-only, hash-chained audit trail of everything that changes a job or a model."""
