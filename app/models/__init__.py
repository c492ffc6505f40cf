"""Models customers may see: hosted base models and the tenant's fine-tuned, patched and
checkpoint versions, with their lineage, metrics and downloads."""
