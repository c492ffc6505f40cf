"""Fine-tuning jobs: the OpenAI-shaped resource, its state machine and its event log."""
