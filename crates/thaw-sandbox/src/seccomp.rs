//! The seccomp policy of a function instance. Owns: turning the policy data in
//! `seccomp/default.json` (seccompiler's JSON format) into one BPF program,
//! and installing it. Must not: hard-code syscall rules; the rules live in the
//! JSON file so they can be reviewed and tested as data.
//!
//! seccompiler gives every filter a single match action, but the policy needs
//! two (`EPERM` for the denylist, `ENOSYS` for `clone3` so that glibc falls
//! back to `clone`, whose flags a filter can inspect). The JSON file therefore
//! holds one filter per action, called *stages*, and [`seccomp_filter`] chains
//! them into one program: the stages run in [`STAGES`] order and the first one
//! that does not allow the call decides. Chaining replaces each "allow" return
//! of a non-final stage with a forward jump to the start of the next stage.
//!
//! ```text
//! [x32 guard] [stage instance_enosys: allow -> jump] [stage instance: allow -> allow]
//! ```

use std::collections::HashMap;
use std::io;

use seccompiler::{sock_filter, BpfProgram, TargetArch};

/// The policy as shipped, in seccompiler's JSON format.
pub const DEFAULT_POLICY_JSON: &str = include_str!("../seccomp/default.json");

/// Stage names of the policy, in evaluation order. A policy with any other
/// stage is rejected so that a filter cannot be silently ignored.
pub const STAGES: [&str; 2] = ["instance_enosys", "instance"];

/// The kernel's limit on the length of one classic BPF program.
const BPF_MAXINSNS: usize = 4096;

// Classic BPF opcodes used by the hand-written parts (linux/bpf_common.h).
/// BPF_LD | BPF_W | BPF_ABS (0x00 | 0x00 | 0x20).
const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JA.
const BPF_JMP_JA: u16 = 0x05;
/// BPF_JMP | BPF_JGE | BPF_K.
const BPF_JMP_JGE_K: u16 = 0x35;
/// BPF_RET | BPF_K.
const BPF_RET_K: u16 = 0x06;
/// Offset of `nr` in `struct seccomp_data`.
const SECCOMP_DATA_NR_OFFSET: u32 = 0;
/// x32 system calls are x86_64 calls with this bit set in `nr`; they would
/// slip past rules that match x86_64 numbers exactly.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Why the seccomp policy could not be turned into a program.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("Cannot compile the seccomp policy")]
    Compile(#[source] seccompiler::Error),
    #[error("Seccomp policy lacks the stage {0}")]
    MissingStage(&'static str),
    #[error("Seccomp policy has an unknown stage {0}")]
    UnknownStage(String),
    #[error("Seccomp program has {0} instructions, more than the kernel accepts")]
    TooLong(usize),
}

/// Compile the default instance policy for the architecture we run on.
pub fn seccomp_filter() -> Result<BpfProgram, SeccompError> {
    compile_policy(DEFAULT_POLICY_JSON)
}

/// Compile a policy in the same format as `seccomp/default.json` (stages named
/// in [`STAGES`]) into one chained program.
pub fn compile_policy(json: &str) -> Result<BpfProgram, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SeccompError::Compile(seccompiler::Error::Backend(e)))?;
    let mut stages: HashMap<String, BpfProgram> =
        seccompiler::compile_from_json(json.as_bytes(), arch).map_err(SeccompError::Compile)?;
    let mut program = x32_guard();
    for (i, name) in STAGES.iter().enumerate() {
        let mut stage = stages
            .remove(*name)
            .ok_or(SeccompError::MissingStage(name))?;
        if i + 1 < STAGES.len() {
            fall_through_on_allow(&mut stage);
        }
        program.extend(stage);
    }
    if let Some(name) = stages.into_keys().next() {
        return Err(SeccompError::UnknownStage(name));
    }
    if program.len() > BPF_MAXINSNS {
        return Err(SeccompError::TooLong(program.len()));
    }
    Ok(program)
}

/// Install `program` on the calling thread. Sets no_new_privs (the kernel
/// requires it for unprivileged filters).
pub(crate) fn install(program: &BpfProgram) -> io::Result<()> {
    seccompiler::apply_filter(program).map_err(|e| match e {
        seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
        other => io::Error::other(other.to_string()),
    })
}

/// Rewrite every "allow" return of `stage` into a jump to the instruction just
/// past its end, where the next stage starts. Jumps only go forward and each
/// rewritten return stays one instruction, so the stage's own jumps still land
/// where they did.
fn fall_through_on_allow(stage: &mut [sock_filter]) {
    let len = stage.len();
    for (idx, insn) in stage.iter_mut().enumerate() {
        if insn.code == BPF_RET_K && insn.k == libc::SECCOMP_RET_ALLOW {
            // len - idx - 1 < 4096, so it fits in k.
            let skip = u32::try_from(len - idx - 1).unwrap_or(u32::MAX);
            *insn = sock_filter {
                code: BPF_JMP_JA,
                jt: 0,
                jf: 0,
                k: skip,
            };
        }
    }
}

/// `nr >= X32_SYSCALL_BIT` returns ENOSYS; everything else falls through.
fn x32_guard() -> BpfProgram {
    if std::env::consts::ARCH != "x86_64" {
        return Vec::new();
    }
    vec![
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: SECCOMP_DATA_NR_OFFSET,
        },
        sock_filter {
            code: BPF_JMP_JGE_K,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS.unsigned_abs(),
        },
    ]
}

#[cfg(test)]
mod tests {
    //! The compiled program is checked against the policy data by running it in
    //! a small classic-BPF interpreter over synthetic `seccomp_data`.

    use super::*;

    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;

    /// Evaluate `prog` the way the kernel does for seccomp (A register,
    /// absolute word loads from `struct seccomp_data`).
    fn run(prog: &[sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&(nr as i32).to_ne_bytes());
        data.extend_from_slice(&arch.to_ne_bytes());
        data.extend_from_slice(&0_u64.to_ne_bytes()); // instruction pointer
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let mut acc: u32 = 0;
        let mut pc = 0_usize;
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                0x20 => {
                    let off = i.k as usize;
                    acc = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap());
                }
                0x54 => acc &= i.k, // ALU AND K
                0x05 => pc += i.k as usize,
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let hit = match i.code {
                        0x15 => acc == i.k,
                        0x25 => acc > i.k,
                        0x35 => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += usize::from(if hit { i.jt } else { i.jf });
                }
                0x06 => return i.k,
                other => panic!("unexpected BPF opcode {other:#x} at {}", pc - 1),
            }
        }
    }

    fn eval(prog: &[sock_filter], nr: i64, args: [u64; 6]) -> u32 {
        run(prog, AUDIT_ARCH_X86_64, nr, args)
    }

    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | 1;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | 38;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

    #[test]
    fn default_policy_compiles_within_kernel_limits() {
        let prog = seccomp_filter().expect("policy compiles");
        assert!(!prog.is_empty());
        assert!(prog.len() <= BPF_MAXINSNS);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn compiled_program_matches_policy_data() {
        let prog = seccomp_filter().unwrap();
        let policy: serde_json::Value = serde_json::from_str(DEFAULT_POLICY_JSON).unwrap();
        // Every syscall listed without argument conditions is denied outright.
        let mut plain = 0;
        for stage in STAGES {
            let expect = match stage {
                "instance" => EPERM,
                _ => ENOSYS,
            };
            for rule in policy[stage]["filter"].as_array().unwrap() {
                if rule.get("args").is_some() {
                    continue;
                }
                let name = rule["syscall"].as_str().unwrap();
                let nr = syscall_number(name);
                assert_eq!(eval(&prog, nr, [0; 6]), expect, "{name}");
                plain += 1;
            }
        }
        assert!(plain > 40, "policy lost its denylist");

        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_mmap,
            libc::SYS_futex,
            libc::SYS_execve,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_exit_group,
        ] {
            assert_eq!(eval(&prog, nr, [0; 6]), ALLOW, "syscall {nr}");
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn clone_is_denied_only_with_namespace_flags() {
        let prog = seccomp_filter().unwrap();
        // What glibc's pthread_create passes.
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(eval(&prog, libc::SYS_clone, [thread, 0, 0, 0, 0, 0]), ALLOW);
        let fork_like =
            (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
        assert_eq!(
            eval(&prog, libc::SYS_clone, [fork_like, 0, 0, 0, 0, 0]),
            ALLOW
        );
        for ns in [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
        ] {
            let flags = fork_like | ns as u64;
            assert_eq!(
                eval(&prog, libc::SYS_clone, [flags, 0, 0, 0, 0, 0]),
                EPERM,
                "{ns:#x}"
            );
        }
        assert_eq!(eval(&prog, libc::SYS_clone3, [0; 6]), ENOSYS);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn personality_allows_only_query_and_default() {
        let prog = seccomp_filter().unwrap();
        let p = libc::SYS_personality;
        assert_eq!(eval(&prog, p, [0, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(eval(&prog, p, [0xffff_ffff, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(eval(&prog, p, [0x0040_0000, 0, 0, 0, 0, 0]), EPERM); // ADDR_NO_RANDOMIZE
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn foreign_abis_are_refused() {
        let prog = seccomp_filter().unwrap();
        // x32 numbering of an allowed call.
        let x32_read = libc::SYS_read | i64::from(X32_SYSCALL_BIT);
        assert_eq!(eval(&prog, x32_read, [0; 6]), ENOSYS);
        // 32-bit (int 0x80) calls are killed by seccompiler's arch check.
        assert_eq!(
            run(&prog, AUDIT_ARCH_I386, 3, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }

    #[test]
    fn policy_with_unknown_stage_is_rejected() {
        let mut policy: serde_json::Value = serde_json::from_str(DEFAULT_POLICY_JSON).unwrap();
        policy["extra"] = policy["instance_enosys"].clone();
        let err = compile_policy(&policy.to_string()).unwrap_err();
        assert!(matches!(err, SeccompError::UnknownStage(ref s) if s == "extra"));
        let mut policy: serde_json::Value = serde_json::from_str(DEFAULT_POLICY_JSON).unwrap();
        policy.as_object_mut().unwrap().remove("instance");
        let err = compile_policy(&policy.to_string()).unwrap_err();
        assert!(matches!(err, SeccompError::MissingStage("instance")));
    }

    fn syscall_number(name: &str) -> i64 {
        match name {
            "mount" => libc::SYS_mount,
            "umount2" => libc::SYS_umount2,
            "pivot_root" => libc::SYS_pivot_root,
            "chroot" => libc::SYS_chroot,
            "fsopen" => libc::SYS_fsopen,
            "fsmount" => libc::SYS_fsmount,
            "fsconfig" => libc::SYS_fsconfig,
            "fspick" => libc::SYS_fspick,
            "move_mount" => libc::SYS_move_mount,
            "open_tree" => libc::SYS_open_tree,
            "mount_setattr" => libc::SYS_mount_setattr,
            "unshare" => libc::SYS_unshare,
            "setns" => libc::SYS_setns,
            "swapon" => libc::SYS_swapon,
            "swapoff" => libc::SYS_swapoff,
            "reboot" => libc::SYS_reboot,
            "kexec_load" => libc::SYS_kexec_load,
            "kexec_file_load" => libc::SYS_kexec_file_load,
            "init_module" => libc::SYS_init_module,
            "finit_module" => libc::SYS_finit_module,
            "delete_module" => libc::SYS_delete_module,
            "bpf" => libc::SYS_bpf,
            "perf_event_open" => libc::SYS_perf_event_open,
            "userfaultfd" => libc::SYS_userfaultfd,
            "io_uring_setup" => libc::SYS_io_uring_setup,
            "io_uring_enter" => libc::SYS_io_uring_enter,
            "io_uring_register" => libc::SYS_io_uring_register,
            "lookup_dcookie" => libc::SYS_lookup_dcookie,
            "ptrace" => libc::SYS_ptrace,
            "process_vm_readv" => libc::SYS_process_vm_readv,
            "process_vm_writev" => libc::SYS_process_vm_writev,
            "pidfd_getfd" => libc::SYS_pidfd_getfd,
            "kcmp" => libc::SYS_kcmp,
            "keyctl" => libc::SYS_keyctl,
            "add_key" => libc::SYS_add_key,
            "request_key" => libc::SYS_request_key,
            "acct" => libc::SYS_acct,
            "quotactl" => libc::SYS_quotactl,
            "syslog" => libc::SYS_syslog,
            "vhangup" => libc::SYS_vhangup,
            "iopl" => libc::SYS_iopl,
            "ioperm" => libc::SYS_ioperm,
            "settimeofday" => libc::SYS_settimeofday,
            "clock_settime" => libc::SYS_clock_settime,
            "clock_adjtime" => libc::SYS_clock_adjtime,
            "adjtimex" => libc::SYS_adjtimex,
            "open_by_handle_at" => libc::SYS_open_by_handle_at,
            "name_to_handle_at" => libc::SYS_name_to_handle_at,
            "sethostname" => libc::SYS_sethostname,
            "setdomainname" => libc::SYS_setdomainname,
            "clone3" => libc::SYS_clone3,
            other => panic!("add {other} to the test's syscall table"),
        }
    }
}
