//! The executor every shard runs must not park while it has runnable tasks.
//!
//! The bug: one shard (`--cores 0`), on a two-core machine with a build running beside it,
//! stopped answering all 50 connections of a keel-loadgen GET run for over 5 s, and SIGTERM
//! then ended in "shutdown took over 10s". glommio 0.9.0's run loop polls I/O (arming the
//! preemption timer, 1 ms while the raft or flush queue is active), then runs the task queues,
//! and parks if none ran. A preemption seen before the first queue ran (the thread was
//! descheduled for longer than the timer in between) counted as "none ran": the executor parked
//! in io_uring_enter with every task runnable, and once its last timers had fired nothing woke
//! it. vendor/glommio/KEEL-PATCH.md has the fix.
//!
//! A preemption timer of 1 ns makes that race certain: every poll of I/O arms a timer that has
//! fired by the time the queues are looked at. With 0.9.0 unpatched the first `run` never
//! returns.

use std::sync::mpsc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

/// Runs given to one executor; each one parks once its future is done.
const RUNS: u32 = 1000;

#[test]
fn an_executor_preempted_before_its_first_task_queue_runs_it_anyway() {
    let (tx, rx) = mpsc::channel();
    // A thread of its own: a parked executor never returns, and the test must fail, not hang.
    std::thread::spawn(move || {
        let ex = LocalExecutorBuilder::new(Placement::Unbound)
            .preempt_timer(Duration::from_nanos(1))
            .make()
            .expect("an executor (glommio needs io_uring and 512 KiB of RLIMIT_MEMLOCK)");
        for i in 0..RUNS {
            let got = ex.run(async move {
                // A spawned task too: it runs in the default queue, behind the same check.
                glommio::spawn_local(async move { i + 1 }).await
            });
            if tx.send(got).is_err() {
                return;
            }
        }
    });
    for i in 0..RUNS {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(got) => assert_eq!(got, i + 1),
            Err(_) => panic!(
                "the executor parked with runnable tasks: run {i} of {RUNS} did not finish in 10 s"
            ),
        }
    }
}
