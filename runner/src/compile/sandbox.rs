//! The compile worker's boundary. Untrusted bytes go through Cranelift in the worker, so the
//! worker starts with an empty environment, no descriptors but stdin, stdout and stderr, and
//! `no_new_privs` and death with the server (set between fork and exec by [`prepare_child`]); then, before it builds its
//! engine, it confines itself with Landlock to its scratch directory ([`confine`]): no other
//! file can be read or written, no TCP port bound or connected, no signal sent and no abstract
//! socket reached outside. On a kernel without Landlock the confinement is skipped and the
//! worker says so in its report; the other bounds still hold.

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};
use std::path::Path;

/// The newest Landlock ABI this code knows; older kernels get what they support.
const LANDLOCK_ABI: ABI = ABI::V6;

/// Runs in the child between fork and exec: no new privileges, and every descriptor above
/// stderr is marked close-on-exec, so nothing the server holds open (its database, sockets,
/// the admin key) reaches the worker. Only async-signal-safe system calls.
///
/// # Safety
/// To be called only from `pre_exec`.
pub unsafe fn prepare_child() -> std::io::Result<()> {
    // SAFETY: plain system calls with constant arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The worker dies with the server, even a server killed with SIGKILL. (Workers are
        // spawned from the runtime's long-lived threads, whose exit is the process's exit.)
        let parent = libc::getppid();
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            // The server died before the line above took effect.
            libc::_exit(1);
        }
        // CLOSE_RANGE_CLOEXEC: std's own exec-error pipe stays usable until exec.
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
            // Kernels before 5.11: mark them one by one, up to the descriptor limit.
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur.min(1 << 20) as libc::c_int
            } else {
                1024
            };
            for fd in 3..top {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// How far the worker could confine itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Confinement {
    /// Every Landlock restriction asked for is enforced.
    Full,
    /// The kernel enforces only some of them (an older Landlock ABI).
    Partial,
    /// The kernel has no Landlock.
    None,
}

/// Confines this process to reading and writing files beneath `dir`; everything else on the
/// filesystem, TCP, signals to other processes and abstract sockets are denied from now on.
pub fn confine(dir: &Path) -> Result<Confinement, String> {
    let abi = LANDLOCK_ABI;
    let files = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::ReadDir;
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules([dir], files)))
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("cannot confine the compile worker: {e}"))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Confinement::Full,
        RulesetStatus::PartiallyEnforced => Confinement::Partial,
        RulesetStatus::NotEnforced => Confinement::None,
    })
}
