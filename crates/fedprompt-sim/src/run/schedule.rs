//! Several runs at once: the experiment's runs (every run of every seed, and the
//! data-efficiency reruns) are independent, so `jobs` of them run side by side, each on its
//! own rayon pool of `threads` compute threads, sharing the one frozen backbone.
//!
//! Why: on the small products of the default model (a few hundred rows), one thread runs the
//! `gemm` kernel at about 90% of a core's FMA peak, while one product split over two threads
//! runs each at about 65%, and a run's serial parts (optimizer, batching, evaluation
//! bookkeeping) leave the second core idle. Two single-threaded runs side by side did the work
//! of two two-threaded runs one after the other in 0.75 of the time (docs/performance.md).
//!
//! The numbers do not depend on the schedule: a run's results are the same bit for bit with
//! one compute thread or several (the products split rows and columns, never the sum), and
//! every run has its own seed, files and outcome slot; results are assembled in the file's
//! order (tested: `tests/sim.rs`, `runs_side_by_side_give_the_same_numbers`).

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Result, SimError};

/// Default cap on runs at once: each holds its own activations and optimizer state, so the
/// default stays modest on many-core machines (`--jobs` overrides it).
pub const MAX_AUTO_JOBS: usize = 4;

/// How many runs go side by side and with how many compute threads each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Runs at once.
    pub jobs: usize,
    /// Compute threads of each run.
    pub threads: usize,
}

impl Schedule {
    /// `jobs` runs at once (default: one per compute thread, at most [`MAX_AUTO_JOBS`]), never
    /// more than `runs`; the compute threads (`RAYON_NUM_THREADS`, else the cores) are shared
    /// out evenly, at least one each.
    pub fn new(jobs: Option<NonZeroUsize>, runs: usize, threads: usize) -> Self {
        let threads = threads.max(1);
        let jobs = jobs
            .map_or(threads.min(MAX_AUTO_JOBS), NonZeroUsize::get)
            .min(runs.max(1));
        Schedule {
            jobs,
            threads: (threads / jobs).max(1),
        }
    }
}

/// Runs `work(i)` for every `i` in `0..costs.len()` and returns the outcomes in index order.
/// With one job, in index order on the caller's thread pool; with more, the costliest first
/// (so that a long run does not start last), each on a pool of `schedule.threads`. After a
/// failure no further run starts; the runs under way finish (their outcomes are saved for
/// `--resume`), and the error of the first failed run in index order is returned.
pub fn run_all<T, F>(costs: &[f64], schedule: Schedule, work: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(usize) -> Result<T> + Sync,
{
    if schedule.jobs <= 1 {
        return (0..costs.len()).map(&work).collect();
    }
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<Result<T>>>> = costs.iter().map(|_| Mutex::new(None)).collect();
    let pool_error: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..schedule.jobs {
            s.spawn(|| {
                let pool = match rayon::ThreadPoolBuilder::new()
                    .num_threads(schedule.threads)
                    .build()
                {
                    Ok(p) => p,
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        *pool_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        return;
                    }
                };
                while !failed.load(Ordering::SeqCst) {
                    let Some(&i) = order.get(next.fetch_add(1, Ordering::SeqCst)) else {
                        break;
                    };
                    let r = pool.install(|| work(i));
                    if r.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(costs.len());
    for slot in slots {
        match slot.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(Ok(o)) => out.push(o),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    if let Some(e) = pool_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(SimError::Schedule(format!(
            "cannot start a compute thread pool: {e}; run with --jobs 1"
        )));
    }
    if out.len() != costs.len() {
        return Err(SimError::Schedule(
            "a run ended without an outcome (this is a bug; run with --jobs 1)".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: usize) -> Option<NonZeroUsize> {
        NonZeroUsize::new(n)
    }

    fn sched(jobs: usize, threads: usize) -> Schedule {
        Schedule { jobs, threads }
    }

    #[test]
    fn default_is_one_single_threaded_run_per_thread_up_to_the_cap() {
        assert_eq!(Schedule::new(None, 12, 2), sched(2, 1));
        assert_eq!(Schedule::new(None, 12, 16), sched(4, 4));
        assert_eq!(Schedule::new(None, 1, 2), sched(1, 2));
        assert_eq!(Schedule::new(None, 12, 1), sched(1, 1));
    }

    #[test]
    fn asked_jobs_share_the_threads_and_never_exceed_the_runs() {
        assert_eq!(Schedule::new(nz(1), 12, 2), sched(1, 2));
        assert_eq!(Schedule::new(nz(3), 12, 8), sched(3, 2));
        assert_eq!(Schedule::new(nz(8), 2, 2), sched(2, 1));
        assert_eq!(Schedule::new(nz(3), 12, 2), sched(3, 1));
    }

    #[test]
    fn outcomes_come_back_in_index_order_on_pools_of_the_asked_size() {
        let costs = [1.0, 5.0, 3.0, 2.0, 4.0];
        for schedule in [Schedule::new(nz(1), 5, 2), Schedule::new(nz(2), 5, 2)] {
            let out = run_all(&costs, schedule, |i| {
                Ok((i * 10, rayon::current_num_threads()))
            })
            .unwrap();
            let idx: Vec<usize> = out.iter().map(|o| o.0).collect();
            assert_eq!(idx, vec![0, 10, 20, 30, 40]);
            if schedule.jobs > 1 {
                assert!(out.iter().all(|o| o.1 == schedule.threads), "{out:?}");
            }
        }
    }

    #[test]
    fn the_first_failed_run_in_index_order_is_reported_and_no_run_starts_after_it() {
        let started = AtomicUsize::new(0);
        let costs = [1.0; 40];
        let err = run_all(&costs, Schedule::new(nz(2), 40, 2), |i| {
            started.fetch_add(1, Ordering::SeqCst);
            if i >= 3 {
                Err(SimError::DataMsg(format!("run {i} failed")))
            } else {
                Ok(i)
            }
        })
        .unwrap_err();
        // Equal costs keep index order, so runs 3 and (at most) 4 fail and nothing later starts.
        assert_eq!(err.to_string(), "data: run 3 failed");
        assert!(started.load(Ordering::SeqCst) <= 6, "{started:?}");
    }
}
