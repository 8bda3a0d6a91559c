//! Placement of one invocation: the scheduling policy, as a pure function of
//! a function's load, and the per-function tracker that measures that load.
//!
//! Called for every invocation by `Pools::place` (pool.rs) through the
//! per-function queue of [`crate::placement`]; `thaw serve --scaling
//! eager` hides measured durations from it (start whenever under the
//! limit: the behaviour before the autoscaler, kept for comparison).
//!
//! Owns the decision only. Must not do I/O, read clocks, take locks or know
//! about sandboxes: the caller (`pool.rs`) gathers the inputs, applies the
//! decision and times what happens.
//!
//! # The scheduling policy on one screen
//!
//! For one arriving (or re-checking) request of one function, [`decide`]:
//!
//! 1. **Rejects** (429) only when nothing can ever serve it: the function may
//!    have no instance at all (`max_instances == 0`) or its concurrency cap
//!    is 0; or when it is at a limit and the input says to reject at once
//!    (`reject_when_full`).
//! 2. **Waits** when the concurrency cap (if any) is reached: requests being
//!    served (busy + starting) never exceed it.
//! 3. **Warm** when an instance is idle.
//! 4. **Waits** when no new instance fits: instances (idle + busy +
//!    starting) never exceed `max_instances`, new ones never exceed the memory
//!    left (bytes free / bytes per instance) nor the concurrency cap. The wait
//!    is bounded by the caller's queue timeout (10 s, then 429).
//! 5. Otherwise it may **start** one, of the cheapest kind available:
//!    `NewWorker` (clone from a template into a ready standby sandbox)
//!    only when both exist, else `NewSandbox` (restore, cold start, or a
//!    clone that must build its sandbox first). Starts share the host's
//!    cores: with `n` starts in progress each takes `c x max(1, n / cores)`
//!    (`c`: its measured mean), so a start also delays the others.
//! 6. It **starts** when nothing was measured yet (no invocation duration):
//!    exactly today's behaviour, start whenever under the limit and nothing is
//!    idle; and when no instance is busy or starting (nothing to wait for).
//! 7. Else **queue or scale**: it starts only while the function has fewer
//!    instances (busy + starting) than the number `n` that serves the
//!    requests now in the system, `D = busy + starting + queued + 1`,
//!    soonest: `n` minimises `T(n) = r(n) + ceil(D / n) x d`, where `r(n)` is
//!    when the `n - busy` instances that must start are ready (rule 5, with
//!    the other functions' starts) and `d` the mean duration. This is
//!    OpenWhisk's rule (start when the queue would take longer to drain than
//!    a start costs: `T(b + 1) < T(b)`) made to count what a start costs the
//!    starts in progress, and Knative's desired scale (instances for the
//!    observed demand) made to count start cost: `n` grows like
//!    `sqrt(D x d x cores / c)`, so a burst of short requests gets a few
//!    instances (100 restores at once on 2 cores gave a p99 of 880 ms) and a
//!    burst of long ones one each. `d` is the larger of the mean and the
//!    longest invocation still running: a function that became slower is
//!    not waited for on a stale mean (Knative's panic mode in spirit: what
//!    happens now beats the stable average).
//!
//! The measurements (`pool.rs` feeds them): start costs by kind; the
//! duration of *warm* invocations only (a new instance's first one pays its
//! page faults, and in a burst shares the cores with the other starts, which
//! made every later decision start yet another instance), seeded by the
//! snapshot's test invocation until one is measured; all carried over to
//! the function's next revision and across retirement, so the first burst
//! after a deploy or a quiet spell is decided on data.
//!
//! Each waiting request is decided again when its expected wait has passed
//! ([`recheck_after`]) unless a released instance was handed to it first;
//! with no measurement the rules reduce to "start while under the limit,
//! else wait", so the policy is never more eager to queue than the data say.

use std::collections::BTreeMap;
use std::time::Duration;

/// Start cost assumed for a new sandbox (restore or cold start) until one
/// was measured.
pub const DEFAULT_NEW_SANDBOX: Duration = Duration::from_millis(25);
/// Start cost assumed for a new worker (clone of a template) until one was
/// measured.
pub const DEFAULT_NEW_WORKER: Duration = Duration::from_millis(3);
/// Weight of the newest sample in the moving averages.
pub const EWMA_WEIGHT: f64 = 0.2;
/// A waiting request is decided again at least this often...
pub const MAX_RECHECK: Duration = Duration::from_millis(100);
/// ...and at most this often.
pub const MIN_RECHECK: Duration = Duration::from_millis(1);

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Run it on an idle instance.
    Warm,
    /// Queue it for a busy (or starting) instance; `expected` is the
    /// modelled wait when there is one.
    Wait {
        /// The expected wait, when durations were measured.
        expected: Option<Duration>,
    },
    /// Start a new instance by cloning the function's template.
    NewWorker,
    /// Start a new instance in a new sandbox (restore, else cold start).
    NewSandbox,
    /// Refuse it now (429).
    Reject(RejectReason),
}

impl Decision {
    /// The decision's metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Warm => "warm",
            Decision::Wait { .. } => "wait",
            Decision::NewWorker => "new_worker",
            Decision::NewSandbox => "new_sandbox",
            Decision::Reject(_) => "reject",
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The function may have no instance at all.
    NoInstancesAllowed,
    /// The function's concurrency cap is 0.
    ZeroConcurrency,
    /// At the concurrency cap, and the caller asked not to queue.
    ConcurrencyLimit,
    /// At the instance or memory limit, and the caller asked not to queue.
    InstanceLimit,
}

/// A kind of instance start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartChoice {
    /// Clone of a template (~1-3 ms).
    NewWorker,
    /// Restore into, or cold start in, a new sandbox (~10-25 ms of CPU).
    NewSandbox,
}

impl StartChoice {
    fn decision(self) -> Decision {
        match self {
            StartChoice::NewWorker => Decision::NewWorker,
            StartChoice::NewSandbox => Decision::NewSandbox,
        }
    }
}

/// Memory left for new instances, from memory admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRoom {
    /// Bytes still free for instances.
    pub free_bytes: u64,
    /// Bytes one new instance takes (0: memory does not limit).
    pub instance_bytes: u64,
}

/// The limits a decision must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Instances of the function (idle + busy + starting), at most.
    pub max_instances: usize,
    /// Memory admission's room; `None`: not limited by memory.
    pub memory: Option<MemoryRoom>,
    /// Requests served at once (busy + starting), at most, as set by
    /// someone else's admission (reserved concurrency); `None`: no cap.
    pub concurrency: Option<usize>,
    /// At a limit, reject at once instead of queueing.
    pub reject_when_full: bool,
}

impl Limits {
    /// Only an instance limit, queueing at it (today's semantics).
    pub fn instances(max_instances: usize) -> Self {
        Limits {
            max_instances,
            memory: None,
            concurrency: None,
            reject_when_full: false,
        }
    }
}

/// Everything one decision depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionInput {
    /// Instances of the function idle now.
    pub idle: usize,
    /// Instances running an invocation.
    pub busy: usize,
    /// Instances being created.
    pub starting: usize,
    /// Requests queued ahead of this one.
    pub queued: usize,
    /// The limits.
    pub limits: Limits,
    /// Mean start cost of a new worker (measured, else the default).
    pub new_worker_cost: Duration,
    /// Mean start cost of a new sandbox (measured, else the default).
    pub new_sandbox_cost: Duration,
    /// Mean invocation duration; `None` when none was measured yet.
    pub mean_duration: Option<Duration>,
    /// How long the longest invocation still running has run.
    pub longest_running: Duration,
    /// A template exists to clone new workers from.
    pub template_available: bool,
    /// Starts in progress on the host.
    pub host: HostLoad,
}

/// Instance starts on the host, every function's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLoad {
    /// Starts in progress.
    pub starting: usize,
    /// Starts the host runs at once without slowing each other (its cores).
    pub parallelism: usize,
}

/// The policy: what to do with one request (see the module doc).
pub fn decide(i: &DecisionInput) -> Decision {
    let l = &i.limits;
    // 1. Limits nothing can satisfy.
    if l.max_instances == 0 {
        return Decision::Reject(RejectReason::NoInstancesAllowed);
    }
    if l.concurrency == Some(0) {
        return Decision::Reject(RejectReason::ZeroConcurrency);
    }
    let serving = i.busy + i.starting;
    let duration = i.mean_duration.map(|d| ms(d).max(ms(i.longest_running)));
    let (kind, cost) = cheapest(i);
    let parallelism = i.host.parallelism.max(1) as f64;
    // A start's cost with `n` starts sharing the host's cores.
    let cost_with = |n: usize| cost * (n as f64 / parallelism).max(1.0);
    let p = i.queued + 1;
    // The expected wait if it queues (for the caller's recheck).
    let wait =
        duration.and_then(|d| expected_wait(p, i.busy, i.starting, d, cost_with(i.host.starting)));
    let full = |reason| {
        if l.reject_when_full {
            Decision::Reject(reason)
        } else {
            Decision::Wait {
                expected: wait.map(duration_ms),
            }
        }
    };
    // 2. The concurrency cap counts requests being served.
    if l.concurrency.is_some_and(|cap| serving >= cap) {
        return full(RejectReason::ConcurrencyLimit);
    }
    // 3. Warm.
    if i.idle > 0 {
        return Decision::Warm;
    }
    // 4. Room for one more instance.
    if room(i) == 0 {
        return full(RejectReason::InstanceLimit);
    }
    // 6. Nothing measured, or nothing to wait for: start.
    let (Some(d), Some(wait)) = (duration, wait) else {
        return kind.decision();
    };
    // 7. Queue or scale: the instance count that serves the demand soonest.
    let demand = serving + p;
    let others_starting = i.host.starting.saturating_sub(i.starting);
    // More new instances than queued requests serve nobody.
    let most = serving + room(i).min(p);
    let finish = |n: usize| {
        let ready = if n > i.busy {
            cost_with(others_starting + n - i.busy)
        } else {
            0.0
        };
        ready + demand.div_ceil(n) as f64 * d
    };
    let best = (i.busy.max(1)..=most)
        .map(|n| (n, finish(n)))
        .fold(
            (0, f64::INFINITY),
            |a, b| if b.1 + 1e-9 < a.1 { b } else { a },
        );
    if best.0 > serving {
        kind.decision()
    } else {
        Decision::Wait {
            expected: Some(duration_ms(wait)),
        }
    }
}

/// How long a waiting request sleeps before it is decided again (unless
/// an instance is handed to it first).
pub fn recheck_after(expected: Option<Duration>) -> Duration {
    expected
        .unwrap_or(MAX_RECHECK)
        .clamp(MIN_RECHECK, MAX_RECHECK)
}

/// New instances that fit the limits.
fn room(i: &DecisionInput) -> usize {
    let l = &i.limits;
    let total = i.idle + i.busy + i.starting;
    let mut room = l.max_instances.saturating_sub(total);
    if let Some(m) = l.memory {
        if let Some(n) = m.free_bytes.checked_div(m.instance_bytes) {
            room = room.min(usize::try_from(n).unwrap_or(usize::MAX));
        }
    }
    if let Some(cap) = l.concurrency {
        room = room.min(cap.saturating_sub(i.busy + i.starting));
    }
    room
}

/// 5. The cheapest start kind available, and its mean cost in ms.
fn cheapest(i: &DecisionInput) -> (StartChoice, f64) {
    let sandbox = (StartChoice::NewSandbox, ms(i.new_sandbox_cost));
    if i.template_available && ms(i.new_worker_cost) <= sandbox.1 {
        (StartChoice::NewWorker, ms(i.new_worker_cost))
    } else {
        sandbox
    }
}

/// Rule 7: when the `position`-th queued request gets a freed instance (ms
/// from now): the `position`-th earliest of the times the `busy` instances
/// free up (`d, 2d, ...`) and the `starting` ones do (`ready + d,
/// ready + 2d, ...`: each first serves the request that started it);
/// `None` when no instance will.
fn expected_wait(position: usize, busy: usize, starting: usize, d: f64, ready: f64) -> Option<f64> {
    if position == 0 {
        return Some(0.0);
    }
    if busy + starting == 0 {
        return None;
    }
    let (mut left, mut round_busy, mut round_starting) = (position, 1.0, 1.0);
    loop {
        let at_busy = if busy > 0 {
            round_busy * d
        } else {
            f64::INFINITY
        };
        let at_starting = if starting > 0 {
            ready + round_starting * d
        } else {
            f64::INFINITY
        };
        let (at, n) = if at_busy <= at_starting {
            round_busy += 1.0;
            (at_busy, busy)
        } else {
            round_starting += 1.0;
            (at_starting, starting)
        };
        if left <= n {
            return Some(at);
        }
        left -= n;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn duration_ms(ms: f64) -> Duration {
    Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 3600.0))
}

/// The time a start would have taken alone, from the time it took while
/// up to `sharing` starts (itself included) shared the host's
/// `parallelism` cores: [`decide`] stretches start costs by the starts in
/// progress, so the averages must not already contain that.
pub fn uncontended(took: Duration, sharing: usize, parallelism: usize) -> Duration {
    let factor = (sharing as f64 / parallelism.max(1) as f64).max(1.0);
    took.div_f64(factor)
}

/// An exponentially weighted moving average of durations; empty until
/// the first sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ewma {
    ms: Option<f64>,
}

impl Ewma {
    /// Adds one sample.
    pub fn record(&mut self, sample: Duration) {
        let s = ms(sample);
        self.ms = Some(match self.ms {
            None => s,
            Some(v) => v + EWMA_WEIGHT * (s - v),
        });
    }

    /// The average, if anything was recorded.
    pub fn get(&self) -> Option<Duration> {
        self.ms.map(duration_ms)
    }
}

/// Where one request of a function stands, for [`FunctionLoad`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    /// Queued for an instance.
    Queued,
    /// Its instance is being created.
    Starting,
    /// Its invocation runs; since when (on the caller's clock).
    Busy {
        /// When the invocation began (time since the caller's epoch).
        since: Duration,
    },
}

/// One function's load: where its requests stand and the moving averages
/// of its start costs and invocation durations. Plain data: the caller
/// keeps it behind its own lock and passes every timestamp in (as time
/// since an epoch of its choosing), so tests can drive it in virtual time.
#[derive(Debug, Clone, Default)]
pub struct FunctionLoad {
    requests: BTreeMap<u64, RequestState>,
    next_id: u64,
    queued: usize,
    starting: usize,
    busy: usize,
    measured: Measurements,
}

/// The moving averages a [`FunctionLoad`] keeps: start costs and
/// invocation duration. They outlive the load they were measured in (the
/// next revision of the function starts from them, and so does the first
/// burst after its instances were retired) so that a burst is never
/// decided on no data when the function ran before.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measurements {
    new_worker: Ewma,
    new_sandbox: Ewma,
    duration: Ewma,
}

impl Measurements {
    /// Takes `d` as the invocation duration while none was measured.
    pub fn seed_duration(&mut self, d: Duration) {
        if self.duration.get().is_none() {
            self.duration.record(d);
        }
    }
}

impl FunctionLoad {
    /// A load with no request and `measured` as its averages.
    pub fn with_measurements(measured: Measurements) -> Self {
        FunctionLoad {
            measured,
            ..Default::default()
        }
    }

    /// Its averages, to carry to the function's next load.
    pub fn measurements(&self) -> Measurements {
        self.measured
    }

    /// A new id for a request to report its states under.
    pub fn register(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sets where request `id` stands; `None` forgets it (idempotent).
    pub fn set(&mut self, id: u64, state: Option<RequestState>) {
        if let Some(old) = self.requests.remove(&id) {
            *self.counter(old) -= 1;
        }
        if let Some(new) = state {
            *self.counter(new) += 1;
            self.requests.insert(id, new);
        }
    }

    fn counter(&mut self, s: RequestState) -> &mut usize {
        match s {
            RequestState::Queued => &mut self.queued,
            RequestState::Starting => &mut self.starting,
            RequestState::Busy { .. } => &mut self.busy,
        }
    }

    /// Where request `id` stands.
    pub fn state(&self, id: u64) -> Option<RequestState> {
        self.requests.get(&id).copied()
    }

    /// Requests queued, busy, starting.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.queued, self.busy, self.starting)
    }

    /// Records how long a start of `kind` took on an otherwise idle host
    /// (see [`uncontended`]: the policy adds the sharing of cores itself).
    pub fn record_start(&mut self, kind: StartChoice, took: Duration) {
        match kind {
            StartChoice::NewWorker => self.measured.new_worker.record(took),
            StartChoice::NewSandbox => self.measured.new_sandbox.record(took),
        }
    }

    /// Records how long an invocation took.
    pub fn record_invocation(&mut self, took: Duration) {
        self.measured.duration.record(took);
    }

    /// Takes `d` as the invocation duration while none was measured (a
    /// snapshot's test invocation, before any warm one).
    pub fn seed_duration(&mut self, d: Duration) {
        self.measured.seed_duration(d);
    }

    /// The mean invocation duration, if one was measured.
    pub fn mean_duration(&self) -> Option<Duration> {
        self.measured.duration.get()
    }

    /// The input of a decision at `now` for a request with `ahead` requests
    /// queued before it, `idle` idle instances, and the host's state.
    pub fn input(
        &self,
        now: Duration,
        idle: usize,
        ahead: usize,
        limits: Limits,
        template_available: bool,
        host: HostLoad,
    ) -> DecisionInput {
        let longest_running = self
            .requests
            .values()
            .filter_map(|s| match s {
                RequestState::Busy { since } => Some(now.saturating_sub(*since)),
                _ => None,
            })
            .max()
            .unwrap_or_default();
        DecisionInput {
            idle,
            busy: self.busy,
            starting: self.starting,
            queued: ahead,
            limits,
            new_worker_cost: self.measured.new_worker.get().unwrap_or(DEFAULT_NEW_WORKER),
            new_sandbox_cost: self
                .measured
                .new_sandbox
                .get()
                .unwrap_or(DEFAULT_NEW_SANDBOX),
            mean_duration: self.measured.duration.get(),
            longest_running,
            template_available,
            host,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    const EPS: f64 = 1e-9;

    fn d(ms: f64) -> Duration {
        Duration::from_secs_f64(ms / 1000.0)
    }

    /// A decision input with the measurements of a function and nothing
    /// else going on.
    fn input(mean_ms: Option<f64>, sandbox_ms: f64, worker_ms: f64) -> DecisionInput {
        DecisionInput {
            idle: 0,
            busy: 0,
            starting: 0,
            queued: 0,
            limits: Limits::instances(100),
            new_worker_cost: d(worker_ms),
            new_sandbox_cost: d(sandbox_ms),
            mean_duration: mean_ms.map(d),
            longest_running: Duration::ZERO,
            template_available: false,
            host: HostLoad {
                starting: 0,
                parallelism: 2,
            },
        }
    }

    // ---- the discrete-event simulation --------------------------------

    /// One burst: `requests` arriving at once at t = 0.
    #[derive(Debug, Clone, Copy)]
    struct Burst {
        name: &'static str,
        requests: usize,
        /// Every invocation takes this long (it does not compete for CPU).
        duration_ms: f64,
        /// CPU work of a new sandbox (restore).
        restore_ms: f64,
        /// CPU work of a new worker (template clone).
        worker_ms: f64,
        /// Starts share this many cores (processor sharing, as the kernel's
        /// scheduler does): k > cores concurrent starts each run at cores/k.
        cores: usize,
        template: bool,
        /// The function ran before: the tracker starts with one start and
        /// one invocation measured (uncontended).
        measured: bool,
    }

    type Policy = fn(&DecisionInput) -> Decision;

    /// Today: an idle instance, else a new sandbox while under the limit
    /// (the 8 permits), else queue (FIFO).
    fn queue_only(i: &DecisionInput) -> Decision {
        if i.idle > 0 {
            Decision::Warm
        } else if i.idle + i.busy + i.starting < i.limits.max_instances {
            Decision::NewSandbox
        } else {
            Decision::Wait { expected: None }
        }
    }

    /// A new sandbox for every request.
    fn sandbox_per_request(_: &DecisionInput) -> Decision {
        Decision::NewSandbox
    }

    struct Start {
        request: usize,
        kind: StartChoice,
        cpu_left: f64,
        began: f64,
        /// The most starts that ran alongside it, itself included.
        sharing: usize,
    }

    struct Waiter {
        request: usize,
        recheck: f64,
    }

    #[derive(Debug)]
    struct Outcome {
        /// Per request: when it completed (ms after its arrival at 0).
        latency: Vec<f64>,
        /// The first decision for each request, in arrival order.
        first: Vec<Decision>,
        /// Every decision, rechecks included.
        all: Vec<Decision>,
        /// The most instances (idle + busy + starting) at any time.
        max_instances: usize,
        rejected: usize,
    }

    impl Outcome {
        fn percentile(&self, q: f64) -> f64 {
            let mut v = self.latency.clone();
            v.sort_by(f64::total_cmp);
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        }
        fn starts(&self) -> usize {
            self.all
                .iter()
                .filter(|d| matches!(d, Decision::NewSandbox | Decision::NewWorker))
                .count()
        }
    }

    struct Sim {
        b: Burst,
        limits: Limits,
        policy: Policy,
        t: f64,
        load: FunctionLoad,
        ids: Vec<u64>,
        idle: usize,
        starts: Vec<Start>,
        runs: Vec<(usize, f64)>,
        queue: VecDeque<Waiter>,
        out: Outcome,
    }

    impl Sim {
        fn decide(&mut self, request: usize, ahead: usize) -> Decision {
            let i = self.load.input(
                d(self.t),
                self.idle,
                ahead,
                self.limits,
                self.b.template,
                HostLoad {
                    starting: self.starts.len(),
                    parallelism: self.b.cores,
                },
            );
            let decision = (self.policy)(&i);
            self.out.all.push(decision);
            let _ = request;
            decision
        }

        fn begin_run(&mut self, request: usize) {
            self.load.set(
                self.ids[request],
                Some(RequestState::Busy { since: d(self.t) }),
            );
            self.runs.push((request, self.t + self.b.duration_ms));
        }

        /// Applies `decision` to `request` (queued already or not).
        fn apply(&mut self, request: usize, decision: Decision) {
            let queued = self.queue.iter().position(|w| w.request == request);
            if !matches!(decision, Decision::Wait { .. }) {
                if let Some(pos) = queued {
                    self.queue.remove(pos);
                }
            }
            match decision {
                Decision::Warm => {
                    self.idle -= 1;
                    self.begin_run(request);
                }
                Decision::NewWorker | Decision::NewSandbox => {
                    let kind = if decision == Decision::NewWorker {
                        StartChoice::NewWorker
                    } else {
                        StartChoice::NewSandbox
                    };
                    let cpu = match kind {
                        StartChoice::NewWorker => self.b.worker_ms,
                        StartChoice::NewSandbox => self.b.restore_ms,
                    };
                    self.load
                        .set(self.ids[request], Some(RequestState::Starting));
                    self.starts.push(Start {
                        request,
                        kind,
                        cpu_left: cpu,
                        began: self.t,
                        sharing: 0,
                    });
                    let n = self.starts.len();
                    for s in &mut self.starts {
                        s.sharing = s.sharing.max(n);
                    }
                }
                Decision::Wait { expected } => {
                    let recheck = self.t + recheck_after(expected).as_secs_f64() * 1000.0;
                    match queued {
                        Some(pos) => self.queue[pos].recheck = recheck,
                        None => {
                            self.load.set(self.ids[request], Some(RequestState::Queued));
                            self.queue.push_back(Waiter { request, recheck });
                        }
                    }
                }
                Decision::Reject(_) => {
                    self.load.set(self.ids[request], None);
                    self.out.rejected += 1;
                    self.out.latency[request] = self.t;
                }
            }
            let (_, busy, starting) = self.load.counts();
            self.out.max_instances = self.out.max_instances.max(self.idle + busy + starting);
        }

        fn rate(&self) -> f64 {
            (self.b.cores as f64 / self.starts.len().max(1) as f64).min(1.0)
        }

        fn run(mut self) -> Outcome {
            for r in 0..self.b.requests {
                let ahead = self.queue.len();
                let decision = self.decide(r, ahead);
                self.out.first.push(decision);
                self.apply(r, decision);
            }
            while !(self.starts.is_empty() && self.runs.is_empty() && self.queue.is_empty()) {
                let rate = self.rate();
                let next = self
                    .starts
                    .iter()
                    .map(|s| self.t + s.cpu_left / rate)
                    .chain(self.runs.iter().map(|r| r.1))
                    .chain(self.queue.iter().map(|w| w.recheck))
                    .fold(f64::INFINITY, f64::min);
                assert!(next.is_finite(), "the simulation is stuck");
                for s in &mut self.starts {
                    s.cpu_left -= (next - self.t) * rate;
                }
                self.t = next;
                // Starts that finished: their instance serves their request.
                let (done, rest): (Vec<Start>, Vec<Start>) =
                    self.starts.drain(..).partition(|s| s.cpu_left <= EPS);
                self.starts = rest;
                for s in done {
                    let took = uncontended(d(self.t - s.began), s.sharing, self.b.cores);
                    self.load.record_start(s.kind, took);
                    self.begin_run(s.request);
                }
                // Invocations that finished: the instance goes to the head
                // of the queue, else idle.
                let (ended, running): (Vec<_>, Vec<_>) = self
                    .runs
                    .drain(..)
                    .partition(|(_, ends)| *ends <= self.t + EPS);
                self.runs = running;
                for (r, _) in ended {
                    self.out.latency[r] = self.t;
                    self.load.record_invocation(d(self.b.duration_ms));
                    self.load.set(self.ids[r], None);
                    match self.queue.pop_front() {
                        Some(w) => self.begin_run(w.request),
                        None => self.idle += 1,
                    }
                }
                // Waiters whose recheck is due are decided again.
                let due: Vec<usize> = self
                    .queue
                    .iter()
                    .filter(|w| w.recheck <= self.t + EPS)
                    .map(|w| w.request)
                    .collect();
                for r in due {
                    let Some(ahead) = self.queue.iter().position(|w| w.request == r) else {
                        continue;
                    };
                    let decision = self.decide(r, ahead);
                    self.apply(r, decision);
                }
            }
            self.out
        }
    }

    fn simulate(b: Burst, policy: Policy, limits: Limits) -> Outcome {
        let mut load = FunctionLoad::default();
        if b.measured {
            load.record_start(StartChoice::NewSandbox, d(b.restore_ms));
            if b.template {
                load.record_start(StartChoice::NewWorker, d(b.worker_ms));
            }
            load.record_invocation(d(b.duration_ms));
        }
        let ids = (0..b.requests).map(|_| load.register()).collect();
        Sim {
            b,
            limits,
            policy,
            t: 0.0,
            load,
            ids,
            idle: 0,
            starts: Vec::new(),
            runs: Vec::new(),
            queue: VecDeque::new(),
            out: Outcome {
                latency: vec![f64::NAN; b.requests],
                first: Vec::new(),
                all: Vec::new(),
                max_instances: 0,
                rejected: 0,
            },
        }
        .run()
    }

    const HELLO: Burst = Burst {
        name: "hello-world",
        requests: 100,
        duration_ms: 1.0,
        restore_ms: 15.0,
        worker_ms: 2.0,
        cores: 2,
        template: false,
        measured: true,
    };

    const SLOW: Burst = Burst {
        name: "slow",
        duration_ms: 500.0,
        ..HELLO
    };

    const MEDIUM: Burst = Burst {
        name: "medium",
        duration_ms: 20.0,
        ..HELLO
    };

    /// The scheduler's limit in the bursts: room for one instance per request.
    const SCHEDULER_LIMIT: usize = 100;

    #[test]
    fn burst_p99_is_no_worse_than_queueing_or_a_sandbox_per_request() {
        let mut table = String::from(
            "burst                 policy               p50 ms   p99 ms  starts  max inst\n",
        );
        for base in [HELLO, MEDIUM, SLOW] {
            for template in [false, true] {
                let b = Burst { template, ..base };
                let queue = simulate(b, queue_only, Limits::instances(8));
                let fresh = simulate(b, sandbox_per_request, Limits::instances(usize::MAX));
                let sched = simulate(b, decide, Limits::instances(SCHEDULER_LIMIT));
                let name = format!("{}{}", b.name, if template { "+template" } else { "" });
                for (policy, o) in [
                    ("queue-only (8)", &queue),
                    ("sandbox/request", &fresh),
                    ("scheduler", &sched),
                ] {
                    assert_eq!(o.rejected, 0);
                    assert!(o.latency.iter().all(|l| l.is_finite()));
                    table.push_str(&format!(
                        "{name:<21} {policy:<18} {:>8.1} {:>8.1} {:>7} {:>9}\n",
                        o.percentile(0.5),
                        o.percentile(0.99),
                        o.starts(),
                        o.max_instances
                    ));
                }
                let p99 = sched.percentile(0.99);
                assert!(
                    p99 <= queue.percentile(0.99) + EPS && p99 <= fresh.percentile(0.99) + EPS,
                    "{name}: scheduler p99 {p99} vs queue-only {} and sandbox per request {}",
                    queue.percentile(0.99),
                    fresh.percentile(0.99)
                );
                assert!(sched.max_instances <= SCHEDULER_LIMIT);
                assert!(queue.max_instances <= 8);
                if template {
                    assert!(sched.all.iter().all(|d| *d != Decision::NewSandbox));
                    assert!(sched.all.contains(&Decision::NewWorker));
                } else {
                    assert!(!sched.all.contains(&Decision::NewWorker));
                }
            }
        }
        println!("{table}");
    }

    #[test]
    fn without_measurements_it_is_todays_queue() {
        for base in [HELLO, MEDIUM, SLOW] {
            let b = Burst {
                measured: false,
                ..base
            };
            let today = simulate(b, queue_only, Limits::instances(8));
            let sched = simulate(b, decide, Limits::instances(8));
            assert_eq!(sched.latency, today.latency, "{}", b.name);
            assert_eq!(sched.max_instances, 8);
            assert!(sched.first[..8].iter().all(|d| *d == Decision::NewSandbox));
            assert!(sched.first[8..]
                .iter()
                .all(|d| matches!(d, Decision::Wait { .. })));
        }
    }

    #[test]
    fn never_exceeds_a_small_limit() {
        for base in [HELLO, MEDIUM, SLOW] {
            for limit in [1, 2, 3, 5] {
                let o = simulate(base, decide, Limits::instances(limit));
                assert!(o.max_instances <= limit, "{} {limit}", base.name);
                assert_eq!(o.rejected, 0);
            }
        }
    }

    // ---- hand-checked decisions ----------------------------------------

    /// Decisions for `n` requests arriving at once, nothing finishing
    /// meanwhile.
    fn arrivals(n: usize, mut i: DecisionInput) -> Vec<Decision> {
        let mut out = Vec::new();
        for _ in 0..n {
            let decision = decide(&i);
            match decision {
                Decision::NewSandbox | Decision::NewWorker => {
                    i.starting += 1;
                    i.host.starting += 1;
                }
                Decision::Wait { .. } => i.queued += 1,
                Decision::Warm => {
                    i.idle -= 1;
                    i.busy += 1;
                }
                Decision::Reject(_) => {}
            }
            out.push(decision);
        }
        out
    }

    fn labels(ds: &[Decision]) -> Vec<&'static str> {
        ds.iter().map(Decision::label).collect()
    }

    #[test]
    fn hello_world_burst_starts_four_instances() {
        // 1 ms invocations, 15 ms restores, 2 cores; with k of the D
        // requests' instances starting, T(k) = 15 x max(1, k/2) + ceil(D/k).
        // #1: nothing to wait for. #2: T(1) = 17 > T(2) = 16: start.
        // #3: T(2) = 17 < T(3) = 23.5: wait. The third start pays once
        // 22.5 + ceil(D/3) < 15 + ceil(D/2), first at D = 45 (37.5 < 38);
        // the fourth once 30 + ceil(D/4) < 22.5 + ceil(D/3), first at D = 88
        // (52 < 52.5).
        let ds = arrivals(100, input(Some(1.0), 15.0, 2.0));
        let starts: Vec<usize> = (0..ds.len())
            .filter(|&k| ds[k] == Decision::NewSandbox)
            .collect();
        assert_eq!(starts, [0, 1, 44, 87]);
        assert!(ds
            .iter()
            .all(|d| matches!(d, Decision::NewSandbox | Decision::Wait { .. })));
        // #3 queues first behind two instances ready at 15 ms that serve
        // their own requests first: 16 ms; #5 is third: 17 ms.
        for (k, ms) in [(2, 16.0), (3, 16.0), (4, 17.0)] {
            assert_eq!(
                ds[k],
                Decision::Wait {
                    expected: Some(d(ms))
                },
                "#{}",
                k + 1
            );
        }
    }

    #[test]
    fn slow_function_starts_up_to_the_limit_then_waits() {
        // 500 ms invocations: waiting is always dearer than a start.
        let mut i = input(Some(500.0), 15.0, 2.0);
        i.limits = Limits::instances(4);
        let ds = arrivals(6, i);
        assert_eq!(
            labels(&ds),
            [
                "new_sandbox",
                "new_sandbox",
                "new_sandbox",
                "new_sandbox",
                "wait",
                "wait"
            ]
        );
        // #5: 4 starting, ready at 15 x 4 / 2 = 30 ms, free at 530 ms.
        assert_eq!(
            ds[4],
            Decision::Wait {
                expected: Some(d(530.0))
            }
        );
    }

    #[test]
    fn prefers_a_new_worker_when_a_template_exists() {
        let mut i = input(Some(500.0), 15.0, 2.0);
        assert_eq!(decide(&i), Decision::NewSandbox);
        i.template_available = true;
        assert_eq!(decide(&i), Decision::NewWorker);
        // Cheaper starts are worth more often: with a template the
        // hello-world burst starts more instances before queueing.
        let mut hello = input(Some(1.0), 15.0, 2.0);
        hello.template_available = true;
        let ds = arrivals(19, hello);
        assert!(ds.iter().all(|d| *d != Decision::NewSandbox));
        assert_eq!(labels(&ds[..2]), ["new_worker", "new_worker"]);
        // A "template" dearer than a sandbox is not preferred.
        i.new_worker_cost = d(40.0);
        assert_eq!(decide(&i), Decision::NewSandbox);
    }

    #[test]
    fn waits_when_the_queue_drains_faster_than_a_start() {
        let mut i = input(Some(1.0), 15.0, 2.0);
        i.busy = 4;
        i.queued = 3;
        // Position 4 behind 4 instances of 1 ms: 1 ms; all 7 requests
        // are done in T(4) = 2 ms, against T(5) = 15 + 2.
        assert_eq!(
            decide(&i),
            Decision::Wait {
                expected: Some(d(1.0))
            }
        );
        // 60 ahead: T(4) = 16, T(5) = 15 + 13: still wait.
        i.queued = 60;
        assert!(matches!(decide(&i), Decision::Wait { .. }));
        // 200 ahead: T(4) = 51, T(5) = 15 + 41, T(6) = 15 + 34 = 49: start.
        i.queued = 200;
        assert_eq!(decide(&i), Decision::NewSandbox);
        // The same queue with 2 other starts on the host: T(5) = 22.5 + 41,
        // T(6) = 30 + 34: waiting (51) wins again.
        i.host.starting = 2;
        assert!(matches!(decide(&i), Decision::Wait { .. }));
    }

    #[test]
    fn a_function_that_got_slower_is_not_waited_for() {
        let mut i = input(Some(1.0), 15.0, 2.0);
        i.busy = 1;
        assert!(matches!(decide(&i), Decision::Wait { .. }));
        // The running invocation has taken 40 ms: the 1 ms mean is stale.
        i.longest_running = d(40.0);
        assert_eq!(decide(&i), Decision::NewSandbox);
    }

    #[test]
    fn warm_whenever_an_instance_is_idle() {
        let mut i = input(Some(500.0), 15.0, 2.0);
        i.idle = 1;
        i.busy = 7;
        i.queued = 50;
        assert_eq!(decide(&i), Decision::Warm);
        // ...even at the instance limit (an idle instance is within it).
        i.limits = Limits::instances(8);
        assert_eq!(decide(&i), Decision::Warm);
    }

    #[test]
    fn rejects_only_per_the_rules() {
        let base = input(Some(10.0), 15.0, 2.0);
        let mut i = base;
        i.limits.max_instances = 0;
        assert_eq!(
            decide(&i),
            Decision::Reject(RejectReason::NoInstancesAllowed)
        );
        let mut i = base;
        i.limits.concurrency = Some(0);
        assert_eq!(decide(&i), Decision::Reject(RejectReason::ZeroConcurrency));
        // At the concurrency cap: wait, or reject when asked to; an idle
        // instance does not help (it would exceed the cap).
        let mut i = base;
        i.limits.concurrency = Some(2);
        i.busy = 2;
        i.idle = 1;
        assert!(matches!(decide(&i), Decision::Wait { .. }));
        i.limits.reject_when_full = true;
        assert_eq!(decide(&i), Decision::Reject(RejectReason::ConcurrencyLimit));
        // At the instance limit or out of memory: wait, or reject when asked.
        let mut i = base;
        i.limits.max_instances = 3;
        i.busy = 3;
        assert!(matches!(decide(&i), Decision::Wait { .. }));
        i.limits.reject_when_full = true;
        assert_eq!(decide(&i), Decision::Reject(RejectReason::InstanceLimit));
        let mut i = base;
        i.limits.memory = Some(MemoryRoom {
            free_bytes: 100 << 20,
            instance_bytes: 128 << 20,
        });
        assert!(matches!(decide(&i), Decision::Wait { .. }));
        i.limits.memory = Some(MemoryRoom {
            free_bytes: 256 << 20,
            instance_bytes: 128 << 20,
        });
        assert_eq!(decide(&i), Decision::NewSandbox);

        // Over a grid of inputs: a reject always has one of those reasons,
        // a start always fits every limit.
        for idle in 0..3 {
            for busy in 0..4 {
                for starting in 0..3 {
                    for queued in [0, 1, 10] {
                        for max in 0..5 {
                            for cap in [None, Some(0), Some(1), Some(3)] {
                                for free in [None, Some(0u64), Some(1), Some(5)] {
                                    for reject_when_full in [false, true] {
                                        for mean in [None, Some(1.0), Some(500.0)] {
                                            let mut i = input(mean, 15.0, 2.0);
                                            i.idle = idle;
                                            i.busy = busy;
                                            i.starting = starting;
                                            i.queued = queued;
                                            i.limits = Limits {
                                                max_instances: max,
                                                memory: free.map(|f| MemoryRoom {
                                                    free_bytes: f,
                                                    instance_bytes: 1,
                                                }),
                                                concurrency: cap,
                                                reject_when_full,
                                            };
                                            check_limits(&i, decide(&i));
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn check_limits(i: &DecisionInput, decision: Decision) {
        let l = i.limits;
        let serving = i.busy + i.starting;
        let at_cap = l.concurrency.is_some_and(|c| serving >= c);
        match decision {
            Decision::Reject(RejectReason::NoInstancesAllowed) => assert_eq!(l.max_instances, 0),
            Decision::Reject(RejectReason::ZeroConcurrency) => {
                assert_eq!(l.concurrency, Some(0))
            }
            Decision::Reject(RejectReason::ConcurrencyLimit) => {
                assert!(l.reject_when_full && at_cap, "{i:?}")
            }
            Decision::Reject(RejectReason::InstanceLimit) => {
                assert!(l.reject_when_full && room(i) == 0, "{i:?}")
            }
            Decision::NewSandbox | Decision::NewWorker => {
                assert_eq!(i.idle, 0);
                assert!(i.idle + i.busy + i.starting < l.max_instances, "{i:?}");
                assert!(!at_cap && l.concurrency.is_none_or(|c| serving < c));
                assert!(l.memory.is_none_or(|m| m.free_bytes >= m.instance_bytes));
                // Unmeasured: always starts when it can (today's behaviour).
            }
            Decision::Warm => assert!(i.idle > 0 && !at_cap),
            Decision::Wait { .. } => {
                // With nothing measured, waiting means a limit is reached.
                if i.mean_duration.is_none() && l.max_instances > 0 {
                    assert!(i.idle == 0 || at_cap);
                    assert!(at_cap || room(i) == 0, "{i:?}");
                }
            }
        }
    }

    // ---- the tracker ---------------------------------------------------

    #[test]
    fn moving_averages_start_empty_and_follow_samples() {
        let mut e = Ewma::default();
        assert_eq!(e.get(), None);
        e.record(d(10.0));
        assert_eq!(e.get(), Some(d(10.0)));
        e.record(d(20.0));
        assert_eq!(e.get(), Some(d(12.0)));
    }

    #[test]
    fn start_samples_are_made_uncontended() {
        assert_eq!(uncontended(d(30.0), 1, 2), d(30.0));
        assert_eq!(uncontended(d(30.0), 2, 2), d(30.0));
        assert_eq!(uncontended(d(30.0), 4, 2), d(15.0));
        assert_eq!(uncontended(d(30.0), 4, 0), d(7.5));
    }

    #[test]
    fn the_tracker_counts_requests_and_feeds_the_input() {
        let mut load = FunctionLoad::default();
        let (a, b, c) = (load.register(), load.register(), load.register());
        load.set(a, Some(RequestState::Queued));
        load.set(b, Some(RequestState::Starting));
        load.set(c, Some(RequestState::Busy { since: d(5.0) }));
        assert_eq!(load.counts(), (1, 1, 1));
        load.set(b, Some(RequestState::Busy { since: d(8.0) }));
        load.set(a, None);
        load.set(a, None);
        assert_eq!(load.counts(), (0, 2, 0));
        let host = HostLoad {
            starting: 1,
            parallelism: 2,
        };
        let i = load.input(d(20.0), 3, 4, Limits::instances(8), false, host);
        assert_eq!((i.idle, i.busy, i.starting, i.queued), (3, 2, 0, 4));
        assert_eq!(i.longest_running, d(15.0));
        assert_eq!(i.mean_duration, None);
        assert_eq!(i.new_sandbox_cost, DEFAULT_NEW_SANDBOX);
        assert_eq!(i.new_worker_cost, DEFAULT_NEW_WORKER);
        load.record_start(StartChoice::NewSandbox, d(12.0));
        load.record_start(StartChoice::NewWorker, d(1.5));
        load.record_invocation(d(3.0));
        let i = load.input(d(20.0), 0, 0, Limits::instances(8), true, host);
        assert_eq!(i.new_sandbox_cost, d(12.0));
        assert_eq!(i.new_worker_cost, d(1.5));
        assert_eq!(i.mean_duration, Some(d(3.0)));
        load.set(b, None);
        load.set(c, None);
        assert_eq!(load.counts(), (0, 0, 0));
        assert_eq!(load.state(c), None);
    }
}
