"""The worker pool: units of (model, version), the memory every process shares, and live changes."""
