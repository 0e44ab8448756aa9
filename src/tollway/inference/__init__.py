"""Inference: OpenAI-compatible serving of local and upstream models, metered in neurons."""
