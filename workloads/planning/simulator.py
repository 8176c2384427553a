"""Discrete-event simulator of a serving deployment, driven by the same workload specs as real runs.

Role in the data flow: `workloads/planning/planner.py` sweeps rates and deployments with it, `validate`
(planner) re-simulates measured runs, `infer-bench simulate` writes a results dir from it. This
module is the event loop only; the types a caller builds and reads live in
`workloads/planning/sim_model.py`. Input: a `Deployment` (its `InstanceConfig`s and `Link`) and
`SimRequests` (arrival time, n_input, n_output; `sim_model.requests_from_spec` draws them from a
(WorkloadSpec, ArrivalSpec) exactly as a real run does, and `simulate_spec` simulates those).
Step times come from a `workloads.latency_model.LatencyModel`. Output: a `SimResult` of
per-request numpy arrays (records, SLO attainment: see sim_model).

Model (a plain event heap; one event per engine step, arrival and KV transfer):
- An instance runs steps back to back while it has work; each step is one forward pass whose
  duration is `latency_model.step_time(P, D, C, N, Q)` (decode knots included; N prefill
  chunks; Q the sum of their squared lengths: attention is causal within each sequence; C the
  KV tokens the step attends: each decode's computed tokens, each chunk's computed prefix), with the instance's
  own model (`InstanceConfig.latency_model`: a per-role profile / TP degree) or else the one
  passed to `simulate`, times
  (1 + `colocated_slowdown`) when another instance of the deployment is in a step at its start
  (instances sharing one host). An idle instance starts its first step `wake_s` after work
  reaches it (work arriving meanwhile joins that step). Requests reach the deployment
  `intake_s` after they are sent (TTFT still counts from the send).
- Scheduling (`InstanceConfig.policy`, one of SCHEDULING_POLICIES):
  - "chunked" (the bundled engine's; Sarathi-Serve, vLLM v1): all running decodes first (one
    token each), then the running chunked prefills FCFS, then FCFS admission of waiting
    requests (no skipping) while the step's token budget (`max_num_batched_tokens`),
    `max_num_seqs` and free KV blocks allow; with chunked prefill an admitted prompt takes what
    budget is left, without it (`chunked_prefill=False`) a prompt must fit whole (or run
    alone). A prefill therefore delays a running decode by at most one step of the budget.
    Decodes are never starved: `max_num_seqs` must not exceed the token budget.
  - "prefill_priority" (vLLM before chunked prefill, DistServe's vLLM baseline): when a waiting
    prompt fits (FCFS, whole prompts, budget / max_num_seqs / KV), the step runs only prompts,
    batched up to the budget, and the running decodes stall for it (no token); a step runs the
    decodes only when no waiting prompt fits. A prompt larger than the budget runs alone.
  - "decode_priority" (the router of Hugging Face text-generation-inference, non-chunked):
    prompts run as in prefill_priority (whole, their own step, decodes stall), but while
    decodes run, waiting prompts join only after at least one decode round since the last
    prefill and only when at least floor(DECODE_PRIORITY_WAITING_SERVED_RATIO x running
    decodes) of them fit, or once DECODE_PRIORITY_MAX_WAITING_STEPS rounds have passed since
    the last prefill (TGI's --waiting-served-ratio 1.2 and --max-waiting-tokens 20; its
    `waiting_tokens` counter is 1 after a prefill and +1 per decode round). With an infinite
    ratio this is request-level batching (FasterTransformer's, Sarathi-Serve's
    "decode-prioritizing" extreme).
  Running decodes advance together: in every step that runs them ("decode round") each makes
  one token.
- KV (`InstanceConfig.kv_alloc`; blocks of `block_size` tokens; capacity in tokens from the
  config, else the instance's latency model (`kv_capacity_tokens`), None = unlimited):
  - "on_demand" (the bundled engine's scheduler + block_manager, prefix caching aside): a
    request takes blocks for the tokens it holds when admitted (its prompt; prompt + generated
    after a preemption; a transferred request: prompt + its first token), and one more block
    whenever a decode's next token crosses a block boundary. When a round's decodes need more
    blocks than are free, they are served in admission order and one that finds none preempts
    the most recently admitted running request (possibly itself) by recompute: its blocks
    are freed and it goes back to the FRONT of the waiting queue, to prefill its prompt +
    generated tokens again (that prefill yields its next token); no admission in a step that
    preempted. `SimResult.preemptions` counts them per request. A request whose prompt +
    output - 1 tokens exceed the pool fails ("exceeds KV capacity"). Unlike the engine, a
    recompute never hits the prefix cache (the simulator does not model prefix caching).
  - "reserve": a request reserves blocks for all its tokens (n_input + n_output) when
    admitted, so there is no preemption; a request that can never fit fails.
- Token times: a prompt's last prefill chunk ends with its first token; every later step it runs
  in yields one more token at the step's end.
- Pipeline parallelism (the instance's latency model has `pp` = k > 1 stages): vLLM's design
  (v0 "virtual engines"; DistServe's simulator chains one worker per stage the same way): the
  instance runs k schedulers ("virtual engines"), each with its own requests, waiting queue and
  1/k of the KV blocks (vLLM v0 divides its GPU blocks by the pipeline size per scheduler); an
  arrival goes to the virtual engine with the fewest outstanding requests. A virtual engine's
  step is one micro-batch: its model time T (the fit's step time: the latency of one batch
  through all stages, as a PP engine's step row measures it) splits into k equal stage times
  T/k, and stage j of the micro-batch starts when stage j-1 of it has ended and stage j has
  finished the previous micro-batch. So a step's latency is k x its stage time (more when a
  stage is busy) while the instance completes up to one micro-batch per stage time: up to k
  micro-batches in flight. A virtual engine has one micro-batch in flight (its requests' next
  tokens depend on it). Co-location slowdown applies to an instance, not to its virtual
  engines overlapping in its own pipeline.
- mono: `num_instances` identical instances behind a router that sends each arrival to the
  instance with the fewest outstanding requests.
- disagg (xPyD): at arrival the router picks the decode instance with the fewest outstanding
  requests and reserves the request there; the decode instance handles the reservation between
  two of its steps, so the prompt reaches the prefill instance (the one with the fewest
  outstanding requests) only when the decode step running at arrival has ended (the reference
  engine's router; capacity waits at reservation are not modelled). Prefill instances run
  prefill only; when a prompt's prefill ends, its KV
  (n_input * kv_bytes_per_token) crosses that prefill instance's link (FIFO, `bandwidth_gbps`
  and `latency_s`): whole after prefill (exposed time = bytes/bandwidth + latency), or layer-wise,
  overlapped with the prefill compute, so only the last layer's share is exposed (exposed =
  bytes/(L*bandwidth) + latency when the link keeps up; the transfer cannot finish sooner than
  the first layer's compute + bytes/bandwidth). The prefill instance holds the KV until the
  transfer ends. The decode instance admits transferred requests FCFS (max_num_seqs, KV blocks)
  and batches their decodes. First token (`Deployment.first_token_from_prefill`): False (the
  default, the bundled engine: the prefill worker hands its first token to the decode worker
  with "kv_done", and the decode worker emits it when it commits the import into its running
  batch, between two of its steps; disagg/worker.py `commit_import`) -> the client sees it
  when the decode instance admits the request (TTFT = queue + prefill + transfer +
  admission); True (engines that stream the prefill side's token straight to the client) ->
  at the end of the prefill (TTFT = queue + prefill), and the transfer and admission then
  lengthen the first inter-token gap (and TPOT) instead.
- conditional disaggregation: `conditional_threshold` > 0 sends prompts with n_input below it
  straight to a decode instance, which prefills them itself (mixed batches, as mono).
- Closed-loop (`ArrivalSpec(kind="concurrency")`): C clients, each sends its next request when
  the previous one finishes.

Per-token chunk times for 100k requests are heavy; `per_token=False` keeps only the first/last
token times and counts (records get two chunks: 1 token, then n_output-1 tokens), which keeps
TTFT, TPOT, E2E and throughput exact; ITL then equals each request's TPOT.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

import numpy as np

from .latency_model import LatencyModel
from .sim_model import (SCHEDULING_POLICIES, Deployment, InstanceConfig, SimRequests, SimResult,
                        requests_from_spec)
from ..spec import ArrivalSpec, WorkloadSpec

# decode_priority's rule for adding waiting prompts to a running batch: the router of Hugging
# Face text-generation-inference (its launcher's --waiting-served-ratio and --max-waiting-tokens,
# defaults 1.2 and 20)
DECODE_PRIORITY_WAITING_SERVED_RATIO = 1.2
DECODE_PRIORITY_MAX_WAITING_STEPS = 20


# ---------------------------------------------------------------------------- the engine model

_ARRIVE, _STEP, _XFER, _KICK, _RESERVED = 0, 1, 2, 3, 4


def step_time_fn(lm: LatencyModel):
    """`lm.step_time` as a fast closure f(P, D, C, N, Q) (the simulator calls it once per step;
    Q: the sum of the step's squared prefill chunk lengths)."""
    a, b, c, d, e, f = lm.a, lm.b, lm.c, lm.d, lm.e, lm.f
    if not lm.decode_knots:
        return lambda p, dd, cc, nn, q: a + b * p + c * q / 1e3 + d * dd + e * cc + f * nn
    dec = [lm.decode_cost(i) for i in range(4097)]   # piecewise linear: a table
    dcost = lm.decode_cost
    return (lambda p, dd, cc, nn, q: a + b * p + c * q / 1e3 + e * cc + f * nn
            + (dec[dd] if dd < 4097 else dcost(dd)))


class _Pipeline:
    """The k stages of one pipeline-parallel instance, shared by its virtual engines: when each
    stage is next free."""

    __slots__ = ("free", "active")

    def __init__(self, stages: int):
        self.free = [-math.inf] * stages
        self.active = 0                   # micro-batches in flight

    def run(self, t: float, dur: float) -> float:
        """A micro-batch of model time `dur` enters at t: the time it leaves the last stage."""
        free = self.free
        st = dur / len(free)
        e = t
        for j in range(len(free)):
            e = (e if e >= free[j] else free[j]) + st
            free[j] = e
        return e


class _Instance:
    """One simulated engine instance (or one virtual engine of a pipeline-parallel instance:
    `pipe` is then its instance's shared `_Pipeline`). `role`: "mono", "prefill" or "decode".

    Decodes are not tracked one by one: all running decodes advance together, one token per
    decode round (a step that runs them), so a decode that starts at round k0 with T tokens
    (prompt + generated) ends at a known round (`finish_at`); `ctx_sum` is the KV tokens they
    attend next round. With on-demand KV, `grow[r % block_size]` counts the decodes that need a
    new block at round r (their phase), so a round's block demand is one lookup."""

    __slots__ = ("sim", "idx", "role", "cfg", "budget", "max_seqs", "bs", "free_blocks",
                 "waiting", "prefilling", "n_decode", "ctx_sum", "finish_at", "step_no",
                 "step_ends", "busy", "outstanding", "cur_prefill", "cur_admit_dec",
                 "cur_start", "cur_end", "link_free", "cap_blocks", "lm_step", "pol",
                 "ondemand", "running", "grow", "cur_ndec", "wait_rounds", "inner_prefilled",
                 "whole", "pipe")

    def __init__(self, sim: "_Sim", idx: int, role: str, cfg: InstanceConfig, cap_tokens,
                 pipe: "_Pipeline | None" = None):
        self.sim, self.idx, self.role, self.cfg = sim, idx, role, cfg
        self.budget = cfg.max_num_batched_tokens
        self.max_seqs = cfg.max_num_seqs
        self.bs = cfg.block_size
        self.free_blocks = math.inf if cap_tokens is None else cap_tokens // cfg.block_size
        self.cap_blocks = self.free_blocks
        self.lm_step = step_time_fn(cfg.latency_model or sim.lm)
        self.pol = SCHEDULING_POLICIES.index(cfg.policy)   # 0 chunked, 1 prefill-, 2 decode-priority
        # prompts run whole (not chunked): chunked_prefill=False, and both priority policies
        self.whole = self.pol != 0 or not cfg.chunked_prefill
        # on-demand blocks (and preemption) only where decodes grow: not on a prefill instance
        self.ondemand = cfg.kv_alloc == "on_demand" and role != "prefill"
        self.running: dict = {}           # on-demand: rid -> prefill item | None (decoding), admission order
        self.grow = [0] * cfg.block_size  # on-demand: decodes by the phase of their block growth
        self.waiting: deque = deque()     # request ids (prefill needed, or transferred)
        self.prefilling: deque = deque()  # [rid, tokens_left, tokens_done]
        self.n_decode = 0
        self.ctx_sum = 0
        self.finish_at: dict[int, list] = {}
        self.step_no = 0                  # decode rounds completed (= index of the next one)
        self.step_ends: list[float] = []  # per_token: end time of each decode round
        self.busy = False
        self.outstanding = 0              # requests routed here and not done with it
        self.cur_prefill: list = []       # (item, n) prefill chunks of the running step
        self.cur_admit_dec: list = []     # transferred requests admitted in the running step
        self.cur_ndec = 0                 # running decodes that run in the running step
        self.cur_start = 0.0
        self.cur_end = -math.inf          # end of the step running now (or of the last one)
        self.link_free = 0.0              # prefill role: when its link is next free
        self.wait_rounds = 0              # decode_priority: TGI's `waiting_tokens`
        self.inner_prefilled = False      # decode_priority: the last step added prompts to a batch
        self.pipe = pipe                  # pipeline-parallel: the instance's stages

    def blocks_for(self, rid: int) -> int:
        """Blocks `rid` takes when admitted here: reserve: all its tokens (the prompt only on a
        prefill instance); on demand: its prompt (+ the first token for a transferred one,
        which decodes in the step that admits it)."""
        s = self.sim
        if self.role == "prefill":
            n = s.n_in[rid]
        elif self.ondemand:
            n = s.n_in[rid] + (1 if s.xfer_done[rid] >= 0 else 0)
        else:
            n = s.n_in[rid] + s.n_out[rid]
        return -(-n // self.bs)

    def max_blocks(self, rid: int) -> int:
        """The most blocks `rid` ever holds here (more than the pool: it can never run)."""
        s = self.sim
        if self.role == "prefill":
            n = s.n_in[rid]
        elif self.ondemand:   # the last token's K/V is never computed
            n = s.n_in[rid] + max(s.n_out[rid], 1) - 1
        else:
            n = s.n_in[rid] + s.n_out[rid]
        return -(-n // self.bs)

    def kick(self, t: float) -> None:
        """Start a step at t if idle (as an event, so that everything else happening at t --
        simultaneous arrivals -- is in the queue when the step is scheduled)."""
        if not self.busy:
            self.busy = True
            self.sim.push(t + self.cfg.wake_s, _KICK, self)

    # -- on-demand KV: growth and preemption (the bundled engine's scheduler + block manager)
    def grow_slow(self) -> None:
        """This round's decodes need more blocks than are free: walk the running requests in
        admission order; a decode that needs a block when none is free preempts the most
        recently admitted running request (possibly itself) until one is."""
        s = self.sim
        run = self.running
        r = self.step_no
        bs = self.bs
        for rid in list(run):
            if rid not in run or run[rid] is not None:
                continue                        # preempted meanwhile, or still prefilling
            if (s.tok_base[rid] + r - s.dec_start[rid] - 1) % bs:
                continue                        # its next token fits the blocks it holds
            while self.free_blocks < 1:
                victim = next(reversed(run))
                self.preempt(victim)
                if victim == rid:
                    break
            if rid in run:
                self.free_blocks -= 1

    def preempt(self, rid: int) -> None:
        """Preempt by recompute: free rid's blocks; it goes back to the front of the waiting
        queue and will prefill its prompt + the tokens generated so far."""
        s = self.sim
        item = self.running.pop(rid)
        if item is None:                        # decoding
            r, k0, T = self.step_no, s.dec_start[rid], s.tok_base[rid]
            ntok = T + r - k0                   # prompt + generated tokens now
            self.free_blocks += -(-(ntok - 1) // self.bs)
            self.n_decode -= 1
            self.ctx_sum -= ntok - 1
            self.finish_at[k0 + s.n_in[rid] + s.n_out[rid] - T - 1].remove(rid)
            self.grow[(k0 + 1 - T) % self.bs] -= 1
            if s.tok is not None:
                s.tok[rid].extend(self.step_ends[k0:r])
            s.pf_len[rid] = ntok
        else:                                   # part-way through its prefill: progress lost
            self.prefilling.remove(item)
            self.free_blocks += s.blocks[rid]
        s.blocks[rid] = -(-s.pf_len[rid] // self.bs)
        s.n_preempt[rid] += 1
        self.waiting.appendleft(rid)

    def start_decoding(self, rid: int, T: int, k0: int) -> None:
        """rid decodes from round k0 on, with T tokens (prompt + generated) at that round."""
        s = self.sim
        self.n_decode += 1
        self.ctx_sum += T - 1                   # its first decode attends all but the last
        self.finish_at.setdefault(k0 + s.n_in[rid] + s.n_out[rid] - T - 1, []).append(rid)
        s.dec_start[rid] = k0
        if self.ondemand:
            s.tok_base[rid] = T
            self.grow[(k0 + 1 - T) % self.bs] += 1
            self.running[rid] = None

    # -- steps
    def grow_decodes(self, n_dec: int) -> tuple[bool, int]:
        """On-demand KV: the blocks the running decodes cross into this step, or a preemption
        when none are free. Returns (may admit this step, decodes left); no admission in a step
        that preempted."""
        if self.ondemand and n_dec:
            need = self.grow[self.step_no % self.bs]
            if need:
                if need <= self.free_blocks:
                    self.free_blocks -= need
                else:
                    self.grow_slow()
                    return False, self.n_decode
        return True, n_dec

    def transferred(self, rid: int) -> bool:
        """A decode instance's waiting request whose KV arrived (not a preempted one to recompute)."""
        s = self.sim
        return s.xfer_done[rid] >= 0 and self.role == "decode" and not s.n_preempt[rid]

    def admit_transferred(self, rid: int, t: float, admitted_dec: list) -> int:
        """Admit the transferred request at the head of the queue into this step's decodes (its
        blocks are known to fit); returns its context tokens."""
        s = self.sim
        self.waiting.popleft()
        self.free_blocks -= s.blocks[rid]
        s.admit_s[rid] = t
        admitted_dec.append(rid)
        if self.ondemand:
            self.running[rid] = None
        return s.n_in[rid]

    def start_step(self, t: float) -> None:
        if self.pol:
            self.start_step_priority(t)
            return
        s = self.sim
        n_dec = self.n_decode
        admit, n_dec = self.grow_decodes(n_dec)
        budget = self.budget - n_dec
        chunks = []
        p_tok = 0
        ctx = self.ctx_sum
        for item in self.prefilling:
            if budget < 1:
                break
            n = item[1] if item[1] <= budget else budget
            chunks.append((item, n))
            ctx += item[2]
            p_tok += n
            budget -= n
        admitted_dec = []
        running = n_dec + len(self.prefilling)
        wq = self.waiting
        while admit and wq and budget > 0 and running < self.max_seqs:
            rid = wq[0]
            need = s.blocks[rid]
            if need > self.free_blocks:
                break
            if self.transferred(rid):
                # transferred: joins the decodes of this step
                ctx += self.admit_transferred(rid, t, admitted_dec)
                budget -= 1
                running += 1
                continue
            n_left = s.pf_len[rid]
            if self.whole and n_left > budget and budget < self.budget:
                break
            wq.popleft()
            self.free_blocks -= need
            if s.sched_s[rid] != s.sched_s[rid]:   # NaN: first time scheduled
                s.sched_s[rid] = t
            n = n_left if (n_left <= budget or self.whole) else budget
            item = [rid, n_left, 0]
            self.prefilling.append(item)
            if self.ondemand:
                self.running[rid] = item
            chunks.append((item, n))
            p_tok += n
            budget -= n
            running += 1
        if not chunks and not n_dec and not admitted_dec:
            self.busy = False
            return
        self.run_step(t, chunks, p_tok, n_dec, admitted_dec, ctx)

    def start_step_priority(self, t: float) -> None:
        """prefill_priority / decode_priority: a step runs either whole prompts only (running
        decodes stall) or the running decodes only."""
        s = self.sim
        n_dec = self.n_decode
        wq = self.waiting
        # the whole prompts that would be admitted now (FCFS, no skipping; a transferred
        # request at the head of the queue is not a prompt: it joins the next decode round)
        fits = []
        budget = self.budget
        free = self.free_blocks
        running = n_dec
        for rid in wq:
            if running >= self.max_seqs or budget < 1:
                break
            if self.transferred(rid):
                break
            need = s.blocks[rid]
            n = s.pf_len[rid]
            if need > free or (n > budget and budget < self.budget):
                break
            fits.append(rid)
            free -= need
            budget -= n
            running += 1
        prefill = bool(fits)
        if prefill and self.pol == 2 and n_dec:
            # decode_priority (TGI's router): prompts join a running batch only after a decode
            # round, and only when enough of them fit, or the batch ran max_waiting rounds
            if self.inner_prefilled:
                prefill = False
            elif self.wait_rounds < DECODE_PRIORITY_MAX_WAITING_STEPS:
                prefill = len(fits) >= int(n_dec * DECODE_PRIORITY_WAITING_SERVED_RATIO)
        if prefill:
            chunks = []
            p_tok = 0
            for rid in fits:
                wq.popleft()
                self.free_blocks -= s.blocks[rid]
                if s.sched_s[rid] != s.sched_s[rid]:
                    s.sched_s[rid] = t
                n = s.pf_len[rid]
                item = [rid, n, 0]
                self.prefilling.append(item)
                if self.ondemand:
                    self.running[rid] = item
                chunks.append((item, n))
                p_tok += n
            if self.pol == 2:
                self.wait_rounds = 1
                self.inner_prefilled = n_dec > 0
            self.run_step(t, chunks, p_tok, 0, [], 0)
            return
        # a decode round
        admit, n_dec = self.grow_decodes(n_dec)
        admitted_dec = []
        ctx = self.ctx_sum
        running = n_dec
        budget = self.budget - n_dec
        while admit and wq and budget > 0 and running < self.max_seqs:
            rid = wq[0]
            if not self.transferred(rid) or s.blocks[rid] > self.free_blocks:
                break
            ctx += self.admit_transferred(rid, t, admitted_dec)
            budget -= 1
            running += 1
        if not n_dec and not admitted_dec:
            self.busy = False
            return
        if self.pol == 2:
            self.wait_rounds += 1
            self.inner_prefilled = False
        self.run_step(t, [], 0, n_dec, admitted_dec, ctx)

    def run_step(self, t: float, chunks: list, p_tok: int, n_dec: int, admitted_dec: list,
                 ctx: int) -> None:
        s = self.sim
        self.busy = True
        self.cur_prefill = chunks
        self.cur_admit_dec = admitted_dec
        self.cur_ndec = n_dec
        self.cur_start = t
        q = 0
        for _, n in chunks:
            q += n * n
        dur = self.lm_step(p_tok, n_dec + len(admitted_dec), ctx, len(chunks), q)
        pipe = self.pipe
        if pipe is None or not pipe.active:   # the instance starts working
            if s.n_stepping and s.g:
                dur *= 1.0 + s.g      # another co-located instance is in a step now
            s.n_stepping += 1
        if pipe is None:
            self.cur_end = t + dur
        else:
            pipe.active += 1
            self.cur_end = pipe.run(t, dur)
        for rid in admitted_dec:
            # first token delivered when the decode instance takes the request
            if not s.ftp and s.first[rid] != s.first[rid]:
                s.first[rid] = t
                if s.tok is not None:
                    s.tok[rid].append(t)
        s.n_steps += 1
        s.push(self.cur_end, _STEP, self)

    def end_step(self, t: float) -> None:
        s = self.sim
        pipe = self.pipe
        if pipe is None:
            s.n_stepping -= 1
        else:
            pipe.active -= 1
            if not pipe.active:
                s.n_stepping -= 1
        n_dec_ran = self.cur_ndec
        adm = self.cur_admit_dec
        k = self.step_no            # this step's round, if it ran decodes
        is_round = n_dec_ran or adm
        if is_round:
            self.step_no = k + 1
            if s.tok is not None:
                self.step_ends.append(t)
        # decodes: every running decode produced a token; admitted transferred ones too
        self.ctx_sum += n_dec_ran
        for rid in adm:
            # tokens 2..n_out come from rounds k .. k + n_out - 2
            self.start_decoding(rid, s.n_in[rid] + 1, k)
            self.ctx_sum += 1                   # and attended n_in + 1 tokens next round
        # prefill chunks
        done_prefill = []
        for item, n in self.cur_prefill:
            item[1] -= n
            item[2] += n
            if item[1] <= 0:
                done_prefill.append(item[0])
        if done_prefill:
            pf = self.prefilling
            while pf and pf[0][1] <= 0:
                pf.popleft()
            if any(it[1] <= 0 for it in pf):   # out-of-order completion (rare)
                self.prefilling = deque(it for it in pf if it[1] > 0)
        k_next = self.step_no
        for rid in done_prefill:
            if s.prefill_end[rid] != s.prefill_end[rid]:
                s.prefill_end[rid] = t
            if self.role == "prefill":
                s.prefill_done_on_p(self, rid, t)
                continue
            # the prefill's last position yields the next token (the first, or after a
            # recompute the one after those generated so far)
            if s.first[rid] != s.first[rid]:
                s.first[rid] = t
            if s.tok is not None:
                s.tok[rid].append(t)
            T = s.pf_len[rid] + 1
            if T >= s.n_in[rid] + s.n_out[rid]:
                self.finish(rid, t)
            else:
                self.start_decoding(rid, T, k_next)
        if is_round:
            fin = self.finish_at.pop(k, None)
            if fin:
                for rid in fin:
                    self.n_decode -= 1
                    self.ctx_sum -= s.n_in[rid] + s.n_out[rid] - 1
                    if self.ondemand:
                        self.grow[(s.dec_start[rid] + 1 - s.tok_base[rid]) % self.bs] -= 1
                    if s.tok is not None:
                        s.tok[rid].extend(self.step_ends[s.dec_start[rid]:k + 1])
                    self.finish(rid, t)
        self.start_step(t)

    def finish(self, rid: int, t: float) -> None:
        s = self.sim
        s.last[rid] = t
        if self.ondemand:
            self.running.pop(rid, None)
            self.free_blocks += self.max_blocks(rid)
        else:
            self.free_blocks += s.blocks[rid]
        self.outstanding -= 1
        s.request_done(rid, t)


class _Sim:
    def __init__(self, dep: Deployment, lm: LatencyModel, reqs: SimRequests, per_token: bool):
        self.dep, self.lm = dep, lm
        n = len(reqs)
        self.n = n
        self.n_in = [int(x) for x in reqs.n_input]
        self.n_out = [int(x) for x in reqs.n_output]
        nan = float("nan")
        self.send = [float(x) for x in reqs.arrival_s]
        self.first = [nan] * n
        self.last = [nan] * n
        self.sched_s = [nan] * n
        self.prefill_end = [nan] * n
        self.xfer_done = [-1.0] * n
        self.xfer_exposed = [nan] * n
        self.xfer_bytes = [nan] * n
        self.admit_s = [nan] * n
        self.dec_of: list = [None] * n    # disagg: the decode instance reserved at arrival
        self.dec_start = [0] * n
        self.blocks = [0] * n             # blocks taken at the next admission
        self.pf_len = list(self.n_in)     # tokens a (re)admission prefills: prompt + generated
        self.tok_base = [0] * n           # on-demand: tokens when its current decode run began
        self.n_preempt = [0] * n
        self.failed = [False] * n
        self.tok = [[] for _ in range(n)] if per_token else None
        self.ftp = dep.first_token_from_prefill
        self.heap: list = []
        self.seq = 0
        self.n_steps = 0
        def insts(role: str, cfg: InstanceConfig, n: int) -> list:
            """n instances; a pipeline-parallel one as its virtual engines (module docstring),
            each with 1/pp of its KV"""
            cap = (cfg.kv_capacity_tokens if cfg.kv_capacity_tokens is not None
                   else (cfg.latency_model or lm).kv_capacity_tokens)
            pp = (cfg.latency_model or lm).pp
            if pp == 1:
                return [_Instance(self, i, role, cfg, cap) for i in range(n)]
            cap = None if cap is None else cap // pp
            out = []
            for i in range(n):
                pipe = _Pipeline(pp)
                out += [_Instance(self, i * pp + v, role, cfg, cap, pipe) for v in range(pp)]
            return out

        if dep.mode == "mono":
            self.mono = insts("mono", dep.instance, dep.num_instances)
            self.pre, self.dec = [], []
        else:
            self.mono = []
            self.pre = insts("prefill", dep.p_cfg, dep.num_prefill)
            self.dec = insts("decode", dep.d_cfg, dep.num_decode)
        p_lm = dep.p_cfg.latency_model or lm     # the KV that crosses the link: the prefill side's
        self.kv_per_tok = p_lm.kv_bytes_per_token
        self.num_layers = p_lm.num_layers
        self.intake = float(dep.intake_s)
        self.n_stepping = 0   # instances in a step now
        n_inst = (dep.num_instances if dep.mode == "mono"
                  else dep.num_prefill + dep.num_decode)
        self.g = lm.colocated_slowdown if n_inst > 1 else 0.0
        self.link = dep.link
        self.concurrency = reqs.concurrency
        self.next_closed = 0

    def push(self, t: float, kind: int, obj) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, obj))

    # -- routing
    @staticmethod
    def _least(insts):
        best = insts[0]
        for x in insts:
            if x.outstanding < best.outstanding:
                best = x
        return best

    def arrive(self, rid: int, t: float) -> None:
        self.send[rid] = t - self.intake
        dep = self.dep
        if dep.mode == "mono":
            inst = self._least(self.mono)
        elif dep.conditional_threshold and self.n_in[rid] < dep.conditional_threshold:
            inst = self._least(self.dec)
        else:
            inst = self._least(self.pre)
        self.blocks[rid] = inst.blocks_for(rid)
        too_big = inst.max_blocks(rid) > inst.cap_blocks
        if dep.mode == "disagg" and not too_big:
            d0 = self.dec[0]
            too_big = -(-(self.n_in[rid] + self.n_out[rid] - d0.ondemand) // d0.bs) > d0.cap_blocks
        if too_big:
            self.failed[rid] = True
            self.request_done(rid, t)
            return
        inst.outstanding += 1
        if dep.mode == "disagg" and inst.role == "prefill":
            # the router reserves the prompt's blocks on a decode instance first; that instance
            # handles the reservation between two of its steps, so the prompt reaches the
            # prefill instance only when the decode step running now has ended
            d = self._least(self.dec)
            d.outstanding += 1
            self.dec_of[rid] = d
            t_res = d.cur_end if (d.busy and d.cur_end > t) else t + d.cfg.wake_s
            if t_res > t:
                self.push(t_res, _RESERVED, (inst, rid))
                return
        inst.waiting.append(rid)
        inst.kick(t)

    def reserved(self, inst: "_Instance", rid: int, t: float) -> None:
        inst.waiting.append(rid)
        inst.kick(t)

    def prefill_done_on_p(self, p: _Instance, rid: int, t: float) -> None:
        """Prefill of rid ended on prefill instance p at t: send its KV to a decode instance."""
        nbytes = self.n_in[rid] * self.kv_per_tok
        link = self.link
        full = nbytes / link.bytes_per_s
        if link.layerwise:
            L = self.num_layers
            t0 = self.sched_s[rid] if self.sched_s[rid] == self.sched_s[rid] else t
            first_layer_ready = t0 + (t - t0) / L
            done = max(t + full / L, max(first_layer_ready, p.link_free) + full) + link.latency_s
        else:
            done = max(t, p.link_free) + full + link.latency_s
        p.link_free = done - link.latency_s
        self.xfer_bytes[rid] = nbytes
        self.xfer_exposed[rid] = done - t
        if self.ftp:
            self.first[rid] = t
            if self.tok is not None:
                self.tok[rid].append(t)
        self.push(done, _XFER, (p, rid))

    def xfer_done_ev(self, p: _Instance, rid: int, t: float) -> None:
        p.free_blocks += p.blocks_for(rid)
        p.outstanding -= 1
        p.kick(t)                 # blocks freed: maybe admit more
        self.xfer_done[rid] = t
        if self.n_out[rid] <= 1:
            if self.first[rid] != self.first[rid]:
                self.first[rid] = t
                if self.tok is not None:
                    self.tok[rid].append(t)
            self.last[rid] = self.first[rid]
            self.admit_s[rid] = t
            if self.dec_of[rid] is not None:
                self.dec_of[rid].outstanding -= 1
            self.request_done(rid, t)
            return
        d = self.dec_of[rid]
        if d is None:
            d = self._least(self.dec)
            d.outstanding += 1
        self.blocks[rid] = d.blocks_for(rid)
        d.waiting.append(rid)
        d.kick(t)

    def request_done(self, rid: int, t: float) -> None:
        if self.concurrency is not None and self.next_closed < self.n:
            nxt = self.next_closed
            self.next_closed += 1
            self.push(t + self.intake, _ARRIVE, nxt)

    def run(self) -> None:
        heap = self.heap
        if self.concurrency is not None:
            c = min(self.concurrency, self.n)
            self.next_closed = c
            for rid in range(c):
                self.push(self.intake, _ARRIVE, rid)
            arr_t, ai, n_arr = [], 0, 0
        else:
            order = sorted(range(self.n), key=self.send.__getitem__)
            arr_t = [self.send[i] + self.intake for i in order]
            ai, n_arr = 0, self.n
        pop = heapq.heappop
        inf = math.inf
        while True:
            ta = arr_t[ai] if ai < n_arr else inf
            if heap and heap[0][0] < ta:
                t, _, kind, obj = pop(heap)
                if kind == _STEP:
                    obj.end_step(t)
                elif kind == _XFER:
                    self.xfer_done_ev(obj[0], obj[1], t)
                elif kind == _KICK:
                    obj.start_step(t)
                elif kind == _RESERVED:
                    self.reserved(obj[0], obj[1], t)
                else:
                    self.arrive(obj, t)
            elif ai < n_arr:
                self.arrive(order[ai], ta)
                ai += 1
            else:
                break


def simulate(deployment: Deployment, latency_model: LatencyModel, requests: SimRequests,
             *, per_token: bool = True) -> SimResult:
    """Simulate `requests` on `deployment`; see the module docstring for the model."""
    import time

    t0 = time.perf_counter()
    sim = _Sim(deployment, latency_model, requests, per_token)
    sim.run()
    nan = np.nan
    f = lambda x: np.asarray(x, dtype=float)  # noqa: E731
    first, last = f(sim.first), f(sim.last)
    sched, pend = f(sim.sched_s), f(sim.prefill_end)
    send = f(sim.send)
    xdone = f(sim.xfer_done)
    xdone[xdone < 0] = nan
    admit = f(sim.admit_s)
    failed = np.asarray(sim.failed, dtype=bool)
    if deployment.mode == "disagg":
        adm = admit - xdone
    else:
        adm = np.full(len(send), nan)
    res = SimResult(
        deployment=deployment, n_input=np.asarray(requests.n_input, dtype=np.int64),
        n_output=np.asarray(requests.n_output, dtype=np.int64), send_s=send,
        first_token_s=first, last_token_s=last, queue_s=sched - send, prefill_s=pend - sched,
        transfer_s=f(sim.xfer_exposed), transfer_bytes=f(sim.xfer_bytes), admission_s=adm,
        failed=failed, token_times=sim.tok, n_steps=sim.n_steps,
        preemptions=np.asarray(sim.n_preempt, dtype=np.int64))
    res.sim_wall_s = time.perf_counter() - t0
    return res


def simulate_spec(deployment: Deployment, latency_model: LatencyModel, workload: WorkloadSpec,
                  arrival: ArrivalSpec, *, per_token: bool = True) -> SimResult:
    """`simulate` on the requests a real run of (workload, arrival) would send."""
    return simulate(deployment, latency_model, requests_from_spec(workload, arrival),
                    per_token=per_token)
