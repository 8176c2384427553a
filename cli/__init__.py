"""infer-bench cli package."""
