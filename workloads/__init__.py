"""infer-bench workloads package."""
