//! The parent-death signal of step processes (Linux): a step process gets SIGKILL when the
//! service that started it dies, even by SIGKILL, so a crashed worker leaves no step running.
//! The one place Chorus runs code between fork and exec, hence its own module allowed `unsafe`.
#![allow(unsafe_code)]

use tokio::process::Command;

/// Makes `command`'s child set PR_SET_PDEATHSIG to SIGKILL before it execs (prctl(2)), and exit
/// at once if the service already died between the fork and that call.
#[cfg(target_os = "linux")]
pub fn set_on(command: &mut Command) {
    use rustix::process::{getpid, getppid, set_parent_process_death_signal, Signal};
    let service = getpid();
    // SAFETY: the closure runs in the forked child before exec. It makes two syscalls through
    // rustix (no allocation, no lock, nothing shared with other threads of the parent), which
    // is what is allowed there (async-signal-safe work only).
    unsafe {
        command.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::KILL))?;
            if getppid() != Some(service) {
                return Err(std::io::Error::other(
                    "the service ended while starting the step",
                ));
            }
            Ok(())
        });
    }
}

/// Other systems have no parent-death signal: a step outlives a SIGKILLed service there.
#[cfg(not(target_os = "linux"))]
pub fn set_on(_command: &mut Command) {}
