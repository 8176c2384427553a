"""Disaggregated serving: prefill and decode workers in separate processes, a router, KV transfer."""
