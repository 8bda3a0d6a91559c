//! Templates: per function revision and host, the snapshot restored once
//! and never resumed; new instances are cloned from it copy-on-write
//! ([`thaw_snapshot::template`]) instead of each restoring the snapshot.
//!
//! Owns: the templates and the one thread that traces them (ptrace belongs
//! to the thread that attached), making a template on the first clone of a
//! revision (in the mount namespace of the sandbox it clones into, so the
//! snapshot's files resolve as they do for a restore; in a cgroup of its
//! own, so its memory is counted once), cloning into a prepared sandbox,
//! rebuilding a template that died, and dropping a function's templates.
//!
//! Must not: decide when an instance is made (the pools and the scheduler
//! do), or touch a sandbox other than through the namespaces and
//! descriptors of its PID 1, which waits in its standby state meanwhile.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use nix::sched::CloneFlags;
use thaw_sandbox::{Cgroup, CgroupParent, Limits};
use thaw_snapshot::image::{PageSource, Snapshot};
use thaw_snapshot::template::{CloneOptions, Parent, PendingClone, Template, TemplateOptions};
use tokio::sync::oneshot;

use thaw_runtime::error_chain;

/// Which template: a function's revision and the snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TemplateKey {
    /// The function.
    pub function: String,
    /// Its revision.
    pub revision: String,
    /// The snapshot's directory on the host.
    pub dir: PathBuf,
}

/// Where a clone goes: a sandbox waiting in its standby state.
#[derive(Debug)]
pub struct CloneTarget {
    /// The sandbox's PID 1, by its pid in the daemon's namespace.
    pub pid1: u32,
    /// The runtime's descriptors: `(number in the runtime, number in PID 1)`.
    pub fds: Vec<(i32, i32)>,
    /// The instance cgroup's `cgroup.procs` files.
    pub cgroup_procs: Vec<PathBuf>,
    /// The template's limits, if one must be made (the function's).
    pub limits: Limits,
}

/// A made clone.
#[derive(Debug, Clone, Copy)]
pub struct Cloned {
    /// Microseconds the clone took (the engine's part).
    pub clone_us: u64,
    /// Microseconds making the template took, when this clone made it.
    pub template_us: Option<u64>,
}

/// Supplies a template's memory image when one must be made: `None` reads
/// the snapshot directory's own `memory.thaw`. Runs on the templates'
/// thread (off the async runtime).
pub type ImageSource = Box<dyn FnOnce() -> Result<Option<Box<dyn PageSource>>, String> + Send>;

/// A clone made ahead (in a standby sandbox), held stopped by the
/// templates' thread until it is released or discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PendingId(u64);

enum Job {
    Prepare {
        key: TemplateKey,
        image: ImageSource,
        target: CloneTarget,
        reply: oneshot::Sender<Result<(PendingId, Cloned), String>>,
    },
    Release {
        id: PendingId,
        reply: oneshot::Sender<Result<Cloned, String>>,
    },
    Discard(PendingId),
    Forget {
        function: String,
        keep_revision: Option<String>,
    },
    Count(oneshot::Sender<usize>),
    ForgetAll(oneshot::Sender<()>),
}

/// The templates of this host, held by one thread.
#[derive(Debug, Clone)]
pub struct Templates {
    tx: mpsc::Sender<Job>,
}

/// A template and what it was made from; dropped in this order: the
/// template (killed and reaped), then its cgroup.
struct Entry {
    template: Template,
    snap: Snapshot,
    _cgroup: CgroupGuard,
}

/// Removes a template's cgroup when dropped.
struct CgroupGuard(Cgroup);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.destroy() {
            tracing::warn!(error = %error_chain(&e), "cannot remove a template's cgroup");
        }
    }
}

impl Templates {
    /// Starts the templates' thread. Template cgroups are made under
    /// `cgroups` (the daemon's parent, so a restarted daemon removes
    /// leftovers with the instances').
    pub fn start(cgroups: &CgroupParent, gauge: prometheus::IntGaugeVec) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let parent = CgroupParent::open(&cgroups.path().to_string_lossy())
            .map_err(|e| std::io::Error::other(error_chain(&e)))?;
        std::thread::Builder::new()
            .name("thaw-templates".into())
            .spawn(move || keeper(rx, parent, gauge))?;
        Ok(Self { tx })
    }

    /// Clones `key`'s template (made first if there is none, or if the one
    /// there died) into the sandbox `target`, complete but stopped: it runs
    /// once [`Templates::release`]d. The slow parts of a clone happen here,
    /// while the sandbox waits as a standby.
    pub async fn prepare(
        &self,
        key: TemplateKey,
        image: ImageSource,
        target: CloneTarget,
    ) -> Result<(PendingId, Cloned), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Prepare {
                key,
                image,
                target,
                reply,
            })
            .map_err(|_| GONE.to_string())?;
        rx.await.map_err(|_| GONE.to_string())?
    }

    /// Lets a prepared clone run; returns how long that took.
    pub async fn release(&self, id: PendingId) -> Result<Cloned, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Release { id, reply })
            .map_err(|_| GONE.to_string())?;
        rx.await.map_err(|_| GONE.to_string())?
    }

    /// Kills a prepared clone that will never run (its sandbox goes).
    pub fn discard(&self, id: PendingId) {
        let _ = self.tx.send(Job::Discard(id));
    }

    /// Drops `function`'s templates (but the one of `keep_revision`).
    pub fn forget(&self, function: &str, keep_revision: Option<&str>) {
        let _ = self.tx.send(Job::Forget {
            function: function.to_string(),
            keep_revision: keep_revision.map(str::to_string),
        });
    }

    /// Drops every template (shutdown); returns once they are gone.
    pub async fn forget_all(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job::ForgetAll(reply)).is_ok() {
            let _ = rx.await;
        }
    }

    /// How many templates exist.
    pub async fn count(&self) -> usize {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job::Count(reply)).is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }
}

const GONE: &str = "the templates' thread is gone";

fn keeper(rx: mpsc::Receiver<Job>, cgroups: CgroupParent, gauge: prometheus::IntGaugeVec) {
    let mut templates: HashMap<(String, String), Entry> = HashMap::new();
    let mut pending: HashMap<PendingId, PendingClone> = HashMap::new();
    let mut next_id = 0u64;
    let mut counted: std::collections::HashSet<String> = Default::default();
    while let Ok(job) = rx.recv() {
        match job {
            Job::Prepare {
                key,
                image,
                target,
                reply,
            } => {
                let r = clone_job(&mut templates, &cgroups, &key, image, &target).map(
                    |(clone, made)| {
                        next_id += 1;
                        let id = PendingId(next_id);
                        pending.insert(id, clone);
                        (id, made)
                    },
                );
                let _ = reply.send(r);
            }
            Job::Release { id, reply } => {
                let r = match pending.remove(&id) {
                    None => Err("no such prepared clone".to_string()),
                    Some(clone) => {
                        let t0 = Instant::now();
                        clone
                            .release()
                            .map(|_| Cloned {
                                clone_us: t0.elapsed().as_micros() as u64,
                                template_us: None,
                            })
                            .map_err(|e| format!("releasing the clone: {}", error_chain(&e)))
                    }
                };
                let _ = reply.send(r);
            }
            Job::Discard(id) => {
                pending.remove(&id);
            }
            Job::Forget {
                function,
                keep_revision,
            } => {
                templates.retain(|(f, rev), _| {
                    f != &function || keep_revision.as_deref() == Some(rev.as_str())
                });
            }
            Job::Count(reply) => {
                let _ = reply.send(templates.len());
            }
            Job::ForgetAll(reply) => {
                pending.clear();
                templates.clear();
                let _ = reply.send(());
            }
        }
        // The gauge: every function that has or had a template.
        counted.extend(templates.keys().map(|(f, _)| f.clone()));
        for f in &counted {
            let n = templates.keys().filter(|(g, _)| g == f).count();
            gauge.with_label_values(&[f.as_str()]).set(n as i64);
        }
    }
}

fn clone_job(
    templates: &mut HashMap<(String, String), Entry>,
    cgroups: &CgroupParent,
    key: &TemplateKey,
    image: ImageSource,
    target: &CloneTarget,
) -> Result<(PendingClone, Cloned), String> {
    let id = (key.function.clone(), key.revision.clone());
    // The sandbox's namespaces and the runtime's descriptors, held here.
    let ns = |name: &str| {
        File::open(format!("/proc/{}/ns/{name}", target.pid1))
            .map_err(|e| format!("cannot open the sandbox's {name} namespace: {e}"))
    };
    let mnt = ns("mnt")?;
    let mut namespaces = vec![
        (ns("net")?, CloneFlags::CLONE_NEWNET),
        (ns("uts")?, CloneFlags::CLONE_NEWUTS),
        (ns("ipc")?, CloneFlags::CLONE_NEWIPC),
        (ns("cgroup")?, CloneFlags::CLONE_NEWCGROUP),
    ];
    // The time namespace PID 1 made for its runtime (absent without
    // kernel support, when the runtime shares the host's clocks).
    if let Ok(time) = ns("time_for_children") {
        namespaces.push((time, CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)));
    }
    let pid_ns = ns("pid")?;
    let pidfd = thaw_snapshot::sys::pidfd_open(target.pid1 as i32)
        .map_err(|e| format!("cannot open the sandbox's PID 1: {e}"))?;
    let fds: Vec<(i32, OwnedFd)> = target
        .fds
        .iter()
        .map(|&(number, theirs)| {
            thaw_snapshot::sys::pidfd_getfd(&pidfd, theirs)
                .map(|fd| (number, fd))
                .map_err(|e| format!("cannot take the runtime's descriptor {number}: {e}"))
        })
        .collect::<Result<_, _>>()?;

    let mut template_us = None;
    let mut image = Some(image);
    for attempt in 0..2 {
        if !templates.contains_key(&id) {
            let Some(image) = image.take() else {
                return Err("the template died again".into());
            };
            let t0 = Instant::now();
            let entry = make_template(cgroups, key, image, &mnt, &target.limits)?;
            template_us = Some(t0.elapsed().as_micros() as u64);
            tracing::info!(function = %key.function, revision = %key.revision, pid = entry.template.pid().as_raw(), ms = t0.elapsed().as_secs_f64() * 1000.0, "template ready");
            templates.insert(id.clone(), entry);
        }
        let entry = templates.get_mut(&id).expect("inserted above");
        let mut ns_list: Vec<(std::os::fd::BorrowedFd<'_>, CloneFlags)> =
            namespaces.iter().map(|(f, k)| (f.as_fd(), *k)).collect();
        // The mount namespace last: joining it moves the working directory.
        ns_list.push((mnt.as_fd(), CloneFlags::CLONE_NEWNS));
        let opts = CloneOptions {
            pid_ns: Some(pid_ns.as_fd()),
            namespaces: ns_list,
            fds: fds.iter().map(|(n, fd)| (*n, fd.as_fd())).collect(),
            cgroup_procs: target.cgroup_procs.clone(),
            parent: Parent::NamespaceInit,
        };
        let t0 = Instant::now();
        match entry.template.prepare_clone(&entry.snap, &opts) {
            Ok(clone) => {
                tracing::debug!(function = %key.function, pid = clone.pid().as_raw(), us = t0.elapsed().as_micros() as u64, "clone prepared");
                return Ok((
                    clone,
                    Cloned {
                        clone_us: t0.elapsed().as_micros() as u64,
                        template_us,
                    },
                ));
            }
            Err(e) if attempt == 0 && !entry.template.is_alive() => {
                tracing::warn!(function = %key.function, error = %error_chain(&e), "the template died; making a new one");
                templates.remove(&id);
            }
            Err(e) => return Err(format!("cloning the template: {}", error_chain(&e))),
        }
    }
    Err("cannot clone the template".into())
}

fn make_template(
    cgroups: &CgroupParent,
    key: &TemplateKey,
    image: ImageSource,
    mnt: &File,
    limits: &Limits,
) -> Result<Entry, String> {
    let snap = match image()? {
        Some(source) => Snapshot::open_with(&key.dir, source),
        None => Snapshot::open(&key.dir),
    }
    .map_err(|e| format!("cannot open the snapshot: {}", error_chain(&e)))?;
    let name = format!("template-{}", uuid::Uuid::new_v4().simple());
    let cgroup = cgroups
        .create(&name, limits)
        .map_err(|e| format!("cannot make the template's cgroup: {}", error_chain(&e)))?;
    let opts = TemplateOptions {
        namespaces: vec![(mnt.as_fd(), CloneFlags::CLONE_NEWNS)],
        cgroup_procs: cgroup
            .directories()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect(),
    };
    match Template::create(&snap, &opts) {
        Ok(template) => Ok(Entry {
            template,
            snap,
            _cgroup: CgroupGuard(cgroup),
        }),
        Err(e) => {
            let _ = cgroup.destroy();
            Err(format!("cannot make the template: {}", error_chain(&e)))
        }
    }
}
