//! A thread started to work beside its spawner, put on another CPU than the
//! spawner's. Left to the scheduler, such a thread can be queued on the spawner's own
//! CPU, behind it, and run only once the spawner waits for it: on the two-vCPU VM of
//! docs/benchmarks.md the inventory's opening did, every time, and a create took
//! 0.24 ms longer.

use std::mem::{size_of, zeroed};
use std::os::unix::thread::JoinHandleExt;
use std::thread::JoinHandle;

/// A thread kept off its spawner's CPU by [`elsewhere`].
pub struct Moved {
    thread: libc::pthread_t,
    /// The CPUs the spawner may use, which the thread had.
    allowed: libc::cpu_set_t,
}

/// Keeps `thread` off the CPU this thread runs on, when it may use another. None where
/// there is no other CPU, or the CPUs cannot be read or set.
pub fn elsewhere<T>(thread: &JoinHandle<T>) -> Option<Moved> {
    // SAFETY: plain calls on a zeroed cpu_set_t of the size given, and on a thread
    // that is not joined (the handle is borrowed), so its pthread_t is valid.
    unsafe {
        let cpu = usize::try_from(libc::sched_getcpu()).ok()?;
        let mut allowed: libc::cpu_set_t = zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return None;
        }
        let mut others = allowed;
        libc::CPU_CLR(cpu, &mut others);
        if libc::CPU_COUNT(&others) == 0 {
            return None;
        }
        let thread = thread.as_pthread_t() as usize as libc::pthread_t;
        (libc::pthread_setaffinity_np(thread, size_of::<libc::cpu_set_t>(), &others) == 0)
            .then_some(Moved { thread, allowed })
    }
}

impl Moved {
    /// Gives the thread every CPU back, before the spawner waits for it: once the
    /// spawner sleeps, its CPU is free for the thread. Called before the join. Where
    /// the thread has already exited, the C library applies the call to the caller,
    /// whose CPUs `allowed` are: no change.
    pub fn back(self) {
        // SAFETY: the thread is not joined yet (see above); `allowed` is a full
        // cpu_set_t read by sched_getaffinity.
        unsafe {
            libc::pthread_setaffinity_np(self.thread, size_of::<libc::cpu_set_t>(), &self.allowed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus_of<T>(thread: &JoinHandle<T>) -> Vec<usize> {
        // SAFETY: as in `elsewhere`.
        unsafe {
            let mut set: libc::cpu_set_t = zeroed();
            let t = thread.as_pthread_t() as usize as libc::pthread_t;
            assert_eq!(
                libc::pthread_getaffinity_np(t, size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    #[test]
    fn off_one_cpu_until_given_back() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || rx.recv().ok());
        let before = cpus_of(&thread);
        let moved = elsewhere(&thread);
        if before.len() < 2 {
            // One CPU: nowhere else to go, and nothing changed.
            assert!(moved.is_none());
            assert_eq!(cpus_of(&thread), before);
        } else {
            // Every CPU but one: the one this thread ran on as it asked (it may have
            // moved since, so which one is not checked).
            let moved = moved.expect("moved off this CPU");
            let now = cpus_of(&thread);
            assert_eq!(now.len(), before.len() - 1, "{now:?} of {before:?}");
            assert!(
                now.iter().all(|c| before.contains(c)),
                "{now:?} of {before:?}"
            );
            moved.back();
            assert_eq!(cpus_of(&thread), before);
        }
        tx.send(()).unwrap();
        thread.join().unwrap();
    }
}
