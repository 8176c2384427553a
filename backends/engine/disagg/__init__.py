"""Disaggregated serving: prefill and decode workers in separate processes, a router, KV transfer.

Data flow of `infer-bench serve --mode disagg --prefill-workers N --decode-workers M`:

    http/serve.py (the one server lifecycle, mono and disagg): disagg_options(settings) ->
    router.DisaggEngine (the AsyncEngine API, so app.build_app serves it unchanged) -> start()
    spawns N + M worker processes (worker.py), each with its own engine and torch threads
    request: router -> decode worker "reserve" (blocks allocated; its prefix-cache hits are not
    re-sent) -> prefill worker "prefill" (prompt KV + first token; each layer's KV moves as soon
    as the forward pass wrote it, transport.py: shared memory or torch.distributed) -> decode
    worker "kv_done" -> decode continues -> outputs -> router -> HTTP (SSE) with per-phase timing.

Modules: wire.py (JSON control frames, shared-memory segments), transport.py (KV copy paths,
link throttle), worker.py (worker process, WorkerEngine), router.py (DisaggEngine and its
DisaggOptions: what http/serve.py builds), ray_placement.py (`--ray`: the workers as Ray actors
on a cluster's nodes, connected back to the router over TCP; the only module here importing Ray).
"""
