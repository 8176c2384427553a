"""infer-bench reports package."""
