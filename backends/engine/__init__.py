"""infer-bench backends/engine package."""
