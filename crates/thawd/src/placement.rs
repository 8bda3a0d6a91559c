//! One function's queue: the state [`crate::scheduler::decide`] reads and
//! the requests waiting for an instance.
//!
//! `pool.rs` keeps one [`Queue`] per function pool behind a mutex and, for
//! each request, asks it for a decision ([`Queue::decide`]), applies it,
//! and reports back where the request stands. A request that waits is
//! registered in arrival order; an instance released by a finished
//! invocation goes to the oldest waiting request ([`Queue::hand_off`])
//! before it would go idle, so a queued request never loses its instance
//! to one that arrived later. Generic over the instance type so that the
//! hand-off rules are tested without sandboxes.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::scheduler::{
    self, Decision, DecisionInput, FunctionLoad, HostLoad, Limits, Measurements, RequestState,
    StartChoice,
};

/// Weight of the newest sample in the instance-memory average when it is
/// below the average (a larger sample replaces the average at once: the
/// estimate rises fast and falls slowly, erring on the side of the host).
const MEMORY_DECAY: f64 = 0.2;

/// One function's load, measurements and waiting requests.
#[derive(Debug)]
pub struct Queue<T> {
    load: FunctionLoad,
    waiters: VecDeque<(u64, oneshot::Sender<T>)>,
    instance_bytes: Option<f64>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self {
            load: FunctionLoad::default(),
            waiters: VecDeque::new(),
            instance_bytes: None,
        }
    }
}

/// What a request learns from one [`Queue::decide`].
#[derive(Debug)]
pub enum Placement<T> {
    /// An instance was handed to it while it was deciding: use it.
    HandedOver(T),
    /// The scheduler's decision (its queue state already updated: waiting
    /// requests are registered, starting ones counted as starting).
    Decided(Decision),
}

/// What a [`Queue`] measured, carried to the function's next queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    load: Measurements,
    instance_bytes: Option<f64>,
}

impl Measured {
    /// Takes `d` as the invocation duration while none was measured.
    pub fn seed_duration(&mut self, d: Duration) {
        self.load.seed_duration(d);
    }
}

impl<T> Queue<T> {
    /// An empty queue that starts from `m`'s measurements.
    pub fn with_measurements(m: Measured) -> Self {
        Self {
            load: FunctionLoad::with_measurements(m.load),
            waiters: VecDeque::new(),
            instance_bytes: m.instance_bytes,
        }
    }

    /// Takes `d` as the invocation duration while none was measured.
    pub fn seed_duration(&mut self, d: Duration) {
        self.load.seed_duration(d);
    }

    /// Its measurements (start costs, durations, instance memory).
    pub fn measurements(&self) -> Measured {
        Measured {
            load: self.load.measurements(),
            instance_bytes: self.instance_bytes,
        }
    }

    /// A new id for one request (see [`FunctionLoad::register`]).
    pub fn register(&mut self) -> u64 {
        self.load.register()
    }

    /// Decides what request `id` does now, at `now` (time since the
    /// caller's epoch), with `idle` idle instances. `adaptive: false`
    /// hides the measured durations from the policy, which then starts a
    /// new instance whenever one fits (the `eager` scaling). A request
    /// told to wait is registered at the end of the queue the first time
    /// (keeping its place on re-checks) and gets `rx`, the channel an
    /// instance may be handed to it on; any other decision takes it out
    /// of the queue. `Warm` leaves taking an idle instance to the caller.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &mut self,
        id: u64,
        now: Duration,
        idle: usize,
        limits: Limits,
        template_available: bool,
        host: HostLoad,
        adaptive: bool,
        rx: &mut Option<oneshot::Receiver<T>>,
    ) -> Placement<T> {
        if let Some(r) = rx.as_mut() {
            match r.try_recv() {
                Ok(inst) => {
                    *rx = None;
                    return Placement::HandedOver(inst);
                }
                // Its place was dropped ([`Queue::wake_all`]): the receiver
                // is spent (polling it again panics); a new one below if
                // it waits again.
                Err(oneshot::error::TryRecvError::Closed) => *rx = None,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        let ahead = self
            .waiters
            .iter()
            .position(|(w, _)| *w == id)
            .unwrap_or(self.waiters.len());
        let mut input: DecisionInput =
            self.load
                .input(now, idle, ahead, limits, template_available, host);
        if !adaptive {
            input.mean_duration = None;
        }
        let decision = scheduler::decide(&input);
        tracing::trace!(request = id, ?input, ?decision, "placement");
        match decision {
            Decision::Wait { .. } => {
                if rx.is_none() {
                    let (tx, r) = oneshot::channel();
                    self.waiters.push_back((id, tx));
                    *rx = Some(r);
                }
                self.load.set(id, Some(RequestState::Queued));
            }
            Decision::NewWorker | Decision::NewSandbox => {
                self.leave_queue(id, rx);
                self.load.set(id, Some(RequestState::Starting));
            }
            Decision::Warm => {
                // Counted busy from now: the idle instance it is about to
                // take must never be counted nowhere (it would leave room
                // for a start beyond the limit).
                self.leave_queue(id, rx);
                self.load.set(id, Some(RequestState::Busy { since: now }));
            }
            Decision::Reject(_) => self.leave_queue(id, rx),
        }
        Placement::Decided(decision)
    }

    fn leave_queue(&mut self, id: u64, rx: &mut Option<oneshot::Receiver<T>>) {
        self.waiters.retain(|(w, _)| *w != id);
        *rx = None;
    }

    /// Request `id` runs an invocation since `now`.
    pub fn busy(&mut self, id: u64, now: Duration) {
        self.load.set(id, Some(RequestState::Busy { since: now }));
    }

    /// Request `id` is gone (served, failed, refused or abandoned by its
    /// caller): forgets it, in the queue too. Idempotent.
    pub fn forget(&mut self, id: u64) {
        self.waiters.retain(|(w, _)| *w != id);
        self.load.set(id, None);
    }

    /// Gives `inst` to the oldest request still waiting, which counts as
    /// busy from `now` on (an instance in flight to a waiter is never
    /// counted nowhere); back when none waits.
    pub fn hand_off(&mut self, mut inst: T, now: Duration) -> Result<(), T> {
        while let Some((id, tx)) = self.waiters.pop_front() {
            match tx.send(inst) {
                Ok(()) => {
                    self.load.set(id, Some(RequestState::Busy { since: now }));
                    return Ok(());
                }
                Err(back) => inst = back,
            }
        }
        Err(inst)
    }

    /// Wakes every waiting request (it decides again): its function was
    /// retired or the daemon stops.
    pub fn wake_all(&mut self) {
        self.waiters.clear();
    }

    /// Requests (queued, busy, starting).
    pub fn counts(&self) -> (usize, usize, usize) {
        self.load.counts()
    }

    /// Records how long a start of `kind` took while `sharing` starts
    /// (itself included) shared the host's `parallelism` cores.
    pub fn record_start(
        &mut self,
        kind: StartChoice,
        took: Duration,
        sharing: usize,
        parallelism: usize,
    ) {
        self.load
            .record_start(kind, scheduler::uncontended(took, sharing, parallelism));
    }

    /// Records how long an invocation took.
    pub fn record_invocation(&mut self, took: Duration) {
        self.load.record_invocation(took);
    }

    /// Records the host memory one instance was seen to use.
    pub fn record_instance_bytes(&mut self, bytes: u64) {
        let b = bytes as f64;
        self.instance_bytes = Some(match self.instance_bytes {
            Some(avg) if b < avg => avg + MEMORY_DECAY * (b - avg),
            _ => b,
        });
    }

    /// The host memory a new instance is expected to take: the measured
    /// estimate, else `default`.
    pub fn instance_bytes(&self, default: u64) -> u64 {
        self.instance_bytes.map_or(default, |b| b.ceil() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostLoad {
        HostLoad {
            starting: 0,
            parallelism: 2,
        }
    }

    /// A decision at time 0 under a limit of 1 instance.
    fn decide(
        q: &mut Queue<u32>,
        id: u64,
        idle: usize,
        rx: &mut Option<oneshot::Receiver<u32>>,
    ) -> Placement<u32> {
        decide_under(q, id, idle, Limits::instances(1), rx)
    }

    /// A decision at time 0 under `limits`.
    fn decide_under(
        q: &mut Queue<u32>,
        id: u64,
        idle: usize,
        limits: Limits,
        rx: &mut Option<oneshot::Receiver<u32>>,
    ) -> Placement<u32> {
        q.decide(id, Duration::ZERO, idle, limits, false, host(), true, rx)
    }

    #[test]
    fn released_instances_go_to_waiters_in_arrival_order() {
        let mut q = Queue::<u32>::default();
        // One instance exists and is busy: everyone else waits.
        let first = q.register();
        assert!(matches!(
            decide(&mut q, first, 0, &mut None),
            Placement::Decided(Decision::NewSandbox)
        ));
        q.busy(first, Duration::ZERO);
        let (a, b) = (q.register(), q.register());
        let (mut rx_a, mut rx_b) = (None, None);
        assert!(matches!(
            decide(&mut q, a, 0, &mut rx_a),
            Placement::Decided(Decision::Wait { .. })
        ));
        assert!(matches!(
            decide(&mut q, b, 0, &mut rx_b),
            Placement::Decided(Decision::Wait { .. })
        ));
        assert_eq!(q.counts(), (2, 1, 0));
        // A re-check keeps b behind a.
        assert!(matches!(
            decide(&mut q, b, 0, &mut rx_b),
            Placement::Decided(Decision::Wait { .. })
        ));
        q.forget(first);
        assert_eq!(q.hand_off(7, Duration::ZERO), Ok(()));
        // In flight to a: counted busy before a even wakes up, so no
        // decision sees room for another instance meanwhile.
        assert_eq!(q.counts(), (1, 1, 0));
        assert!(matches!(
            decide(&mut q, a, 0, &mut rx_a),
            Placement::HandedOver(7)
        ));
        assert!(rx_a.is_none());
        q.busy(a, Duration::ZERO);
        assert_eq!(q.counts(), (1, 1, 0));
        // b's caller went away: its instance goes idle instead.
        drop(rx_b);
        assert_eq!(q.hand_off(8, Duration::ZERO), Err(8));
    }

    #[test]
    fn a_waiter_woken_by_wake_all_gets_a_new_place_when_it_waits_again() {
        let (mut q, w, mut rx) = one_busy_one_waiting();
        // Retired (or stopping): every place is dropped while w sleeps
        // between re-checks, not polling its receiver.
        q.wake_all();
        assert!(matches!(
            decide(&mut q, w, 0, &mut rx),
            Placement::Decided(Decision::Wait { .. })
        ));
        // A live receiver again (the spent one, polled, panicked).
        let mut r = rx.take().expect("a new place");
        assert_eq!(r.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        rx = Some(r);
        assert_eq!(q.hand_off(5, Duration::ZERO), Ok(()));
        assert!(matches!(
            decide(&mut q, w, 0, &mut rx),
            Placement::HandedOver(5)
        ));
    }

    /// A queue whose only instance is busy and one request `w` waiting
    /// for it on `rx`.
    fn one_busy_one_waiting() -> (Queue<u32>, u64, Option<oneshot::Receiver<u32>>) {
        let mut q = Queue::<u32>::default();
        let busy = q.register();
        decide(&mut q, busy, 0, &mut None);
        q.busy(busy, Duration::ZERO);
        let w = q.register();
        let mut rx = None;
        decide(&mut q, w, 0, &mut rx);
        (q, w, rx)
    }

    /// Decision for a second request while a first one is busy, with room
    /// for 100 instances.
    fn second_request(q: &mut Queue<u32>) -> Decision {
        let limits = Limits::instances(100);
        let first = q.register();
        decide_under(q, first, 0, limits, &mut None);
        q.busy(first, Duration::ZERO);
        let second = q.register();
        match decide_under(q, second, 0, limits, &mut None) {
            Placement::Decided(d) => d,
            Placement::HandedOver(_) => panic!("nothing was released"),
        }
    }

    #[test]
    fn measurements_carry_over_to_the_next_queue() {
        // Nothing measured: start rather than wait (rule 6).
        assert_eq!(second_request(&mut Queue::default()), Decision::NewSandbox);
        // 1 ms invocations, 25 ms restores: waiting for the busy one is
        // quicker than starting another.
        let mut measured = Queue::<u32>::default();
        measured.record_invocation(Duration::from_millis(1));
        measured.record_start(StartChoice::NewSandbox, Duration::from_millis(25), 1, 2);
        measured.record_instance_bytes(3 << 20);
        let m = measured.measurements();
        let mut next = Queue::<u32>::with_measurements(m);
        assert!(matches!(
            second_request(&mut next),
            Decision::Wait { expected: Some(_) }
        ));
        assert_eq!(next.instance_bytes(0), 3 << 20);
        assert_eq!(next.counts(), (1, 1, 0), "no request is carried over");
    }

    #[test]
    fn forgetting_a_waiter_frees_its_place() {
        let (mut q, w, _rx) = one_busy_one_waiting();
        assert_eq!(q.counts(), (1, 1, 0));
        // The caller dropped the invocation (client gone).
        q.forget(w);
        assert_eq!(q.counts(), (0, 1, 0));
        assert_eq!(
            q.hand_off(1, Duration::ZERO),
            Err(1),
            "nobody waits any more"
        );
    }

    #[test]
    fn a_warm_decision_leaves_the_queue_and_counts_busy() {
        let mut q = Queue::<u32>::default();
        let w = q.register();
        let mut rx = None;
        // No room (limit 1 taken by an idle one) but idle: warm, and busy
        // from the decision on (the instance it takes is never uncounted).
        assert!(matches!(
            decide(&mut q, w, 1, &mut rx),
            Placement::Decided(Decision::Warm)
        ));
        assert_eq!(q.counts(), (0, 1, 0));
        assert!(rx.is_none());
        q.forget(w);
        assert_eq!(q.counts(), (0, 0, 0));
    }

    #[test]
    fn wake_all_closes_every_waiters_channel() {
        let (mut q, _w, rx) = one_busy_one_waiting();
        q.wake_all();
        let mut rx = rx.expect("waiting");
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }

    #[test]
    fn instance_memory_rises_at_once_and_falls_slowly() {
        let mut q = Queue::<u32>::default();
        assert_eq!(q.instance_bytes(128), 128);
        q.record_instance_bytes(1000);
        assert_eq!(q.instance_bytes(128), 1000);
        q.record_instance_bytes(4000);
        assert_eq!(q.instance_bytes(128), 4000);
        q.record_instance_bytes(0);
        assert_eq!(q.instance_bytes(128), 3200);
    }
}
