"""safepatch: fine-tuning as a service that watches safety drift and repairs it."""
