//! Provisioned concurrency: keeping the requested number of instances of a
//! function's version (or of the version an alias points to) started and
//! ready in its idle pool.
//!
//! Owns: one keeper task per provisioned concurrency configuration (a
//! function and a qualifier), and the configuration's `Status` (`IN_PROGRESS`, `READY`,
//! `FAILED` with a reason). Must not: start instances itself or decide where
//! invocations run; it asks the pools ([`Pools::provision_one`]) for one
//! more instance at a time, and the pools keep that many idle instances
//! through idle reaping ([`Pools::set_provisioned_floor`]).
//!
//! The keeper reads the function from the registry on every round, so it
//! follows updates: an update of `$LATEST` retires the old revision's
//! instances, and an alias may move to another version; the keeper then
//! starts the new revision's or version's (restored from its snapshot once
//! there is one, else cold). Instances that die or time out are replaced the same
//! way. A start that fails three times in a row marks the configuration
//! `FAILED` with the reason, and the keeper retries every 10 s. Deleting
//! the configuration stops the keeper; the instances it started then idle
//! out like any others. `Status` is `READY` only while as many instances as
//! requested exist ([`Pools::live_instances`]).
//!
//! [`Pools::provision_one`]: crate::pool::Pools::provision_one
//! [`Pools::set_provisioned_floor`]: crate::pool::Pools::set_provisioned_floor
//! [`Pools::live_instances`]: crate::pool::Pools::live_instances

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use thaw_api::ProvisionedConcurrencyStatus;
use tokio::sync::Notify;
use tracing::Instrument;

use thaw_api::versions::Qualifier;

use crate::registry::FunctionRecord;
use crate::server::Platform;

/// How often a keeper checks its instances when nothing wakes it.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Consecutive failed starts before the configuration is `FAILED`.
const FAILURES_BEFORE_FAILED: u32 = 3;
/// Wait between starts after a failure.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// Wait between starts once `FAILED`.
const RETRY_WHEN_FAILED: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Keeper {
    generation: u64,
    failed: Option<String>,
    wake: Arc<Notify>,
}

/// The keepers of every function with provisioned concurrency.
#[derive(Debug, Default)]
pub struct Provisioner {
    keepers: Mutex<HashMap<String, Keeper>>,
    next_generation: std::sync::atomic::AtomicU64,
}

/// A configuration's state as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionedView {
    /// Instances that exist (idle or running an invocation), at most the
    /// requested number.
    pub available: u32,
    /// `READY` only when `available` is the requested number.
    pub status: ProvisionedConcurrencyStatus,
    /// Why it failed.
    pub reason: Option<String>,
}

impl Provisioner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Keeper>> {
        self.keepers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state of `name`'s configuration of `requested` instances, `live`
    /// of which exist.
    pub fn view(&self, name: &str, requested: u32, live: usize) -> ProvisionedView {
        let available = u32::try_from(live).unwrap_or(u32::MAX).min(requested);
        let failed = self.lock().get(name).and_then(|k| k.failed.clone());
        let status = if available >= requested {
            ProvisionedConcurrencyStatus::Ready
        } else if failed.is_some() {
            ProvisionedConcurrencyStatus::Failed
        } else {
            ProvisionedConcurrencyStatus::InProgress
        };
        ProvisionedView {
            available,
            status,
            reason: if status == ProvisionedConcurrencyStatus::Ready {
                None
            } else {
                failed
            },
        }
    }

    fn is_current(&self, name: &str, generation: u64) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|k| k.generation == generation)
    }

    fn set_failed(&self, name: &str, generation: u64, why: Option<String>) {
        if let Some(k) = self.lock().get_mut(name) {
            if k.generation == generation {
                k.failed = why;
            }
        }
    }
}

/// The keeper of `function`'s configuration on `qualifier`.
fn keeper_key(function: &str, qualifier: &str) -> String {
    format!("{function}\u{0}{qualifier}")
}

impl Platform {
    /// The function's concurrency controls changed (or the daemon started
    /// with them), or one of its versions or aliases did: update admission
    /// control, and start, wake or stop a keeper per provisioned
    /// concurrency configuration (one per qualifier).
    pub fn concurrency_changed(self: &Arc<Self>, f: &FunctionRecord) {
        self.pools.admission().set_function(&f.name, &f.concurrency);
        let provisioner = &self.provisioner;
        let prefix = keeper_key(&f.name, "");
        let mut keepers = provisioner.lock();
        // Configurations deleted: their keepers stop (and drop their floors).
        keepers.retain(|k, _| {
            k.strip_prefix(&prefix)
                .is_none_or(|q| f.concurrency.provisioned.contains_key(q))
        });
        for qualifier in f.concurrency.provisioned.keys() {
            let key = keeper_key(&f.name, qualifier);
            if let Some(k) = keepers.get_mut(&key) {
                // A new request (or an alias that moved) starts afresh.
                k.failed = None;
                k.wake.notify_one();
                continue;
            }
            let generation = provisioner
                .next_generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let wake = Arc::new(Notify::new());
            keepers.insert(
                key,
                Keeper {
                    generation,
                    failed: None,
                    wake: wake.clone(),
                },
            );
            let span =
                tracing::info_span!("provisioned", function = %f.name, qualifier = %qualifier);
            tokio::spawn(
                keep(
                    self.clone(),
                    f.name.clone(),
                    qualifier.clone(),
                    generation,
                    wake,
                )
                .instrument(span),
            );
        }
    }

    /// The function was deleted: forget its limits and stop its keepers.
    pub fn function_removed(&self, name: &str) {
        self.pools.admission().forget(name);
        let prefix = keeper_key(name, "");
        self.provisioner
            .lock()
            .retain(|k, _| !k.starts_with(&prefix));
    }

    /// The state of the configuration of `f` (`$LATEST`'s record) on
    /// `qualifier`, if it has one.
    pub fn provisioned_view(&self, f: &FunctionRecord, qualifier: &str) -> Option<ProvisionedView> {
        let p = f.concurrency.provisioned.get(qualifier)?;
        let live = Qualifier::parse(qualifier)
            .ok()
            .and_then(|q| self.registry.resolve(&f.name, &q).ok())
            .map_or(0, |r| self.pools.live_instances(&r.instance_key()));
        Some(
            self.provisioner
                .view(&keeper_key(&f.name, qualifier), p.requested, live),
        )
    }
}

/// One configuration's keeper: starts instances of the version its
/// qualifier names (an alias: its primary version, followed as it moves)
/// until the requested number exists, then watches. Keeps that version's
/// idle instances from being reaped while it runs.
async fn keep(
    platform: Arc<Platform>,
    name: String,
    qualifier: String,
    generation: u64,
    wake: Arc<Notify>,
) {
    let key = keeper_key(&name, &qualifier);
    let mut failures = 0u32;
    // The instance key whose idle instances this keeper holds.
    let mut held: Option<String> = None;
    let release = |held: &mut Option<String>| {
        if let Some(k) = held.take() {
            platform.pools.set_provisioned_floor(&k, 0);
        }
    };
    loop {
        if platform.pools.is_shutting_down() || !platform.provisioner.is_current(&key, generation) {
            break;
        }
        let Some(latest) = platform.registry.get(&name) else {
            break;
        };
        let Some(target) = latest
            .concurrency
            .provisioned
            .get(&qualifier)
            .map(|p| p.requested)
        else {
            break;
        };
        let Ok(f) = Qualifier::parse(&qualifier)
            .map_err(drop)
            .and_then(|q| platform.registry.resolve(&name, &q).map_err(drop))
        else {
            break;
        };
        let instance_key = f.instance_key();
        if held.as_deref() != Some(instance_key.as_str()) {
            // An alias moved: the old version's instances idle out.
            release(&mut held);
            held = Some(instance_key.clone());
        }
        platform
            .pools
            .set_provisioned_floor(&instance_key, target as usize);
        let live = platform.pools.live_instances(&instance_key);
        if live >= target as usize {
            failures = 0;
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
            continue;
        }
        tracing::debug!(live, target, version = %f.version_label(), "starting a provisioned instance");
        match platform.pools.provision_one(&f).await {
            Ok(_) => {
                failures = 0;
                platform.provisioner.set_failed(&key, generation, None);
            }
            Err(_) if platform.pools.is_shutting_down() => break,
            Err(why) => {
                failures += 1;
                tracing::warn!(error = %why, failures, "cannot start a provisioned instance");
                let wait = if failures >= FAILURES_BEFORE_FAILED {
                    platform.provisioner.set_failed(&key, generation, Some(why));
                    RETRY_WHEN_FAILED
                } else {
                    RETRY_AFTER_FAILURE
                };
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    release(&mut held);
    tracing::debug!("provisioned concurrency keeper stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_instance_exists() {
        let p = Provisioner::default();
        let v = p.view("f", 2, 0);
        assert_eq!(v.status, ProvisionedConcurrencyStatus::InProgress);
        assert_eq!(p.view("f", 2, 1).available, 1);
        let v = p.view("f", 2, 5);
        assert_eq!(
            (v.available, v.status),
            (2, ProvisionedConcurrencyStatus::Ready)
        );
        p.lock().insert(
            "f".into(),
            Keeper {
                generation: 7,
                failed: None,
                wake: Arc::default(),
            },
        );
        p.set_failed("f", 6, Some("stale keeper".into()));
        assert_eq!(
            p.view("f", 2, 1).status,
            ProvisionedConcurrencyStatus::InProgress
        );
        p.set_failed("f", 7, Some("init failed".into()));
        let v = p.view("f", 2, 1);
        assert_eq!(v.status, ProvisionedConcurrencyStatus::Failed);
        assert_eq!(v.reason.as_deref(), Some("init failed"));
        // Instances that exist are never reported as failed.
        assert_eq!(
            p.view("f", 2, 2).status,
            ProvisionedConcurrencyStatus::Ready
        );
        assert!(p.is_current("f", 7) && !p.is_current("f", 6));
    }
}
