"""infer-bench backends package."""
