//! Admission control: Lambda's concurrency limits, decided before an
//! invocation goes anywhere near an instance.
//!
//! Owns: counting the invocations in flight per function and in the
//! account's unreserved pool, and the decision to throttle. Must not: wait,
//! queue or place invocations (that is the pool, which calls
//! [`Admission::admit`] once at the top of an invocation and holds the
//! returned [`Admitted`] until it ends).
//!
//! The rules, as Lambda applies them to synchronous invocations:
//!
//! - a function with reserved concurrency `N` never has more than `N`
//!   invocations in flight; the next one is throttled **at once**
//!   (`TooManyRequestsException`, `Reason:
//!   ReservedFunctionConcurrentInvocationLimitExceeded`). `N = 0` throttles
//!   every invocation: the function is switched off;
//! - functions without a reservation share the account's unreserved pool:
//!   the account limit (`thaw serve --account-concurrency`) minus every
//!   reservation minus the provisioned concurrency of functions without a
//!   reservation. Such a function's first `P` concurrent invocations (its
//!   provisioned concurrency) do not take from the pool; beyond the pool the
//!   invocation is throttled at once (`Reason:
//!   ConcurrentInvocationLimitExceeded`).
//!
//! Every account has its own limit and its own unreserved pool (as every
//! AWS account has its own): functions are counted in their account's
//! ([`crate::accounts`]), so one account's load never throttles another's.
//!
//! An admitted invocation may still queue afterwards: the pool's per-function
//! instance limit (`--max-instances`) makes it wait up to 10 s for a slot
//! and then throttles it, as before. That queue is thaw's host capacity, not
//! a Lambda limit, and it is unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use thaw_api::concurrency::{REASON_ACCOUNT_LIMIT, REASON_RESERVED_LIMIT};

use crate::registry::ConcurrencyConfig;

/// Why an invocation was throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Throttle {
    /// The function's reserved concurrency is in use (or is 0).
    #[error("Rate Exceeded.")]
    Reserved {
        /// The function's reserved concurrency.
        limit: u32,
    },
    /// The account's unreserved concurrency is in use.
    #[error("Rate Exceeded.")]
    Account {
        /// The unreserved pool's size when the invocation came.
        limit: u32,
    },
}

impl Throttle {
    /// Lambda's `Reason` field.
    pub fn reason(&self) -> &'static str {
        match self {
            Throttle::Reserved { .. } => REASON_RESERVED_LIMIT,
            Throttle::Account { .. } => REASON_ACCOUNT_LIMIT,
        }
    }
}

/// What admission knows of one function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Limits {
    reserved: Option<u32>,
    provisioned: u32,
}

#[derive(Debug, Default)]
struct State {
    limits: HashMap<String, Limits>,
    in_flight: HashMap<String, u32>,
    /// Invocations that took a slot of their account's unreserved pool,
    /// by account.
    unreserved_in_flight: HashMap<String, u32>,
}

impl State {
    /// Everything of `account`'s that is not in its unreserved pool.
    fn set_aside(&self, account: &str) -> u64 {
        self.limits
            .iter()
            .filter(|(name, _)| account_of(name) == account)
            .map(|(_, l)| u64::from(l.reserved.unwrap_or(l.provisioned)))
            .sum()
    }
}

fn account_of(function: &str) -> &str {
    crate::accounts::split_key(function).0
}

/// The daemon's admission control (one per daemon, shared by every
/// invocation).
#[derive(Debug)]
pub struct Admission {
    account_limit: u32,
    state: Arc<Mutex<State>>,
}

/// An admitted invocation: its slot is given back when this is dropped.
#[derive(Debug)]
pub struct Admitted {
    state: Arc<Mutex<State>>,
    function: String,
    unreserved: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        if let Some(n) = s.in_flight.get_mut(&self.function) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.in_flight.remove(&self.function);
            }
        }
        if self.unreserved {
            let account = account_of(&self.function);
            if let Some(n) = s.unreserved_in_flight.get_mut(account) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    s.unreserved_in_flight.remove(account);
                }
            }
        }
    }
}

impl Admission {
    /// Admission for accounts of `account_limit` concurrent executions each.
    pub fn new(account_limit: u32) -> Self {
        Admission {
            account_limit: account_limit.max(1),
            state: Arc::default(),
        }
    }

    /// An account's concurrent executions.
    pub fn account_limit(&self) -> u32 {
        self.account_limit
    }

    /// Sets a function's limits (after a change, and for every function
    /// when the daemon starts).
    pub fn set_function(&self, name: &str, c: &ConcurrencyConfig) {
        let limits = Limits {
            reserved: c.reserved,
            provisioned: c.total_provisioned(),
        };
        let mut s = lock(&self.state);
        if limits == Limits::default() {
            s.limits.remove(name);
        } else {
            s.limits.insert(name.to_string(), limits);
        }
    }

    /// Forgets a deleted function's limits (invocations in flight still
    /// give their slots back).
    pub fn forget(&self, name: &str) {
        lock(&self.state).limits.remove(name);
    }

    /// The size of `account`'s unreserved pool now.
    pub fn unreserved_limit(&self, account: &str) -> u32 {
        let s = lock(&self.state);
        self.unreserved_of(&s, account)
    }

    fn unreserved_of(&self, s: &State, account: &str) -> u32 {
        let left = u64::from(self.account_limit).saturating_sub(s.set_aside(account));
        u32::try_from(left).unwrap_or(u32::MAX)
    }

    /// Invocations of `name` in flight (admitted and not finished).
    pub fn in_flight(&self, name: &str) -> u32 {
        lock(&self.state).in_flight.get(name).copied().unwrap_or(0)
    }

    /// Admits one invocation of `name`, or says why it is throttled. Never
    /// waits.
    pub fn admit(&self, name: &str) -> Result<Admitted, Throttle> {
        let mut s = lock(&self.state);
        let limits = s.limits.get(name).copied().unwrap_or_default();
        let running = s.in_flight.get(name).copied().unwrap_or(0);
        let unreserved = match limits.reserved {
            Some(limit) if running >= limit => return Err(Throttle::Reserved { limit }),
            Some(_) => false,
            // Its provisioned concurrency is its own.
            None if running < limits.provisioned => false,
            None => {
                let account = account_of(name);
                let limit = self.unreserved_of(&s, account);
                let used = s.unreserved_in_flight.get(account).copied().unwrap_or(0);
                if used >= limit {
                    return Err(Throttle::Account { limit });
                }
                true
            }
        };
        *s.in_flight.entry(name.to_string()).or_insert(0) += 1;
        if unreserved {
            *s.unreserved_in_flight
                .entry(account_of(name).to_string())
                .or_insert(0) += 1;
        }
        Ok(Admitted {
            state: self.state.clone(),
            function: name.to_string(),
            unreserved,
        })
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every change is a few counter updates; a panic cannot leave them torn.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ProvisionedSetting;

    fn conc(reserved: Option<u32>, provisioned: u32) -> ConcurrencyConfig {
        ConcurrencyConfig {
            reserved,
            provisioned: (provisioned > 0)
                .then(|| {
                    (
                        thaw_api::function::LATEST.to_string(),
                        ProvisionedSetting {
                            requested: provisioned,
                            last_modified: String::new(),
                        },
                    )
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn reserved_limit_throttles_at_once_and_frees_on_drop() {
        let a = Admission::new(1000);
        a.set_function("f", &conc(Some(2), 0));
        let one = a.admit("f").unwrap();
        let two = a.admit("f").unwrap();
        let e = a.admit("f").unwrap_err();
        assert_eq!(e, Throttle::Reserved { limit: 2 });
        assert_eq!(
            e.reason(),
            "ReservedFunctionConcurrentInvocationLimitExceeded"
        );
        assert_eq!(a.in_flight("f"), 2);
        drop(one);
        let three = a.admit("f").unwrap();
        drop((two, three));
        assert_eq!(a.in_flight("f"), 0);
        // Reserved 0: the function is off.
        a.set_function("off", &conc(Some(0), 0));
        assert_eq!(a.admit("off").unwrap_err(), Throttle::Reserved { limit: 0 });
        assert_eq!(a.unreserved_limit(thaw_auth::ROOT_ACCOUNT), 998);
    }

    #[test]
    fn unreserved_pool_is_shared_and_excludes_reservations() {
        let a = Admission::new(3);
        a.set_function("r", &conc(Some(1), 0));
        assert_eq!(a.unreserved_limit(thaw_auth::ROOT_ACCOUNT), 2);
        let x = a.admit("x").unwrap();
        let y = a.admit("y").unwrap();
        let e = a.admit("x").unwrap_err();
        assert_eq!(e, Throttle::Account { limit: 2 });
        assert_eq!(e.reason(), "ConcurrentInvocationLimitExceeded");
        // The reserved function has its own slot.
        let r = a.admit("r").unwrap();
        drop(x);
        let x2 = a.admit("x").unwrap();
        drop((y, r, x2));
        a.forget("r");
        assert_eq!(a.unreserved_limit(thaw_auth::ROOT_ACCOUNT), 3);
    }

    #[test]
    fn provisioned_concurrency_of_an_unreserved_function_is_its_own() {
        let a = Admission::new(3);
        a.set_function("p", &conc(None, 2));
        assert_eq!(a.unreserved_limit(thaw_auth::ROOT_ACCOUNT), 1);
        let p1 = a.admit("p").unwrap();
        let p2 = a.admit("p").unwrap();
        // Spill-over takes the one unreserved slot...
        let p3 = a.admit("p").unwrap();
        // ...which is then gone for everybody.
        assert_eq!(a.admit("q").unwrap_err(), Throttle::Account { limit: 1 });
        drop(p3);
        let q = a.admit("q").unwrap();
        drop((p1, p2, q));
        a.set_function("p", &ConcurrencyConfig::default());
        assert_eq!(a.unreserved_limit(thaw_auth::ROOT_ACCOUNT), 3);
    }

    #[test]
    fn every_account_has_its_own_limit_and_pool() {
        let a = Admission::new(2);
        let (b1, b2) = ("123456789012.f", "123456789012.g");
        a.set_function(b2, &conc(Some(1), 0));
        assert_eq!(a.unreserved_limit("123456789012"), 1);
        assert_eq!(a.unreserved_limit(thaw_auth::ROOT_ACCOUNT), 2);
        // Root fills its pool; the other account still has its own.
        let r1 = a.admit("f").unwrap();
        let r2 = a.admit("g").unwrap();
        assert_eq!(a.admit("f").unwrap_err(), Throttle::Account { limit: 2 });
        let o = a.admit(b1).unwrap();
        assert_eq!(a.admit(b1).unwrap_err(), Throttle::Account { limit: 1 });
        let reserved = a.admit(b2).unwrap();
        drop((r1, o));
        let r3 = a.admit("f").unwrap();
        let o2 = a.admit(b1).unwrap();
        drop((r2, r3, o2, reserved));
        assert!(lock(&a.state).unreserved_in_flight.is_empty());
    }
}
