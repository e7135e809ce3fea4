"""Latency-aware scheduling: the learned cost of a batch, admission by predicted completion, batch choice."""
