//! Keeps a worker running. The worker ([`crate::worker::run`]) returns when the GPU device is
//! lost, and its thread unwinds if it panics outside a job. Either way the supervisor:
//!
//! 1. marks the store down with the reason (new jobs are refused with it, `/health` is 503),
//! 2. fails the running and queued jobs with it (their event streams end),
//! 3. drops the model and loads it anew with the [`Reloader`] (a new GPU context), retrying with
//!    a growing pause, then marks the store up again,
//!
//! or, with `--exit-on-device-loss`, exits the process for a supervisor of its own to restart.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use crate::api::ErrorBody;
use crate::jobs::Store;
use crate::worker::{self, Exit, WorkerOptions, panic_message};
use crate::{Model, Reloader};

/// The process's exit status after a device loss or a dead worker with
/// `--exit-on-device-loss` (EX_TEMPFAIL: try again).
pub const EXIT_DEVICE_LOST: i32 = 75;

/// The pause before the first new try at loading the model, and the longest one.
const RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// How the worker is kept running.
#[derive(Debug, Clone, Default)]
pub struct Supervision {
    pub reload: Option<Reloader>,
    pub exit_on_device_loss: bool,
    pub worker: WorkerOptions,
}

/// Tells the operator, never panicking (`eprintln!` panics when stderr is gone).
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// If the supervisor itself unwinds, no worker is left: say so and end every job, so that
/// nothing waits forever on a store that looks up.
struct LastWord<'a>(&'a Store);

impl Drop for LastWord<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let reason = "the GPU worker's supervisor died; restart the server";
            self.0.set_down(Some(reason.into()));
            self.0.fail_unfinished(&ErrorBody {
                message: format!("{reason} (this job was lost with it)"),
                code: "BACKEND_ERROR".into(),
                field: None,
            });
        }
    }
}

/// Runs the worker with `model`, and again with a new model after each loss, until the store
/// closes.
pub fn supervise(model: Model, jobs: &Store, supervision: &Supervision) {
    let _last_word = LastWord(jobs);
    let mut model = Some(model);
    loop {
        let Some(current) = model.take().or_else(|| reload(jobs, supervision)) else {
            return; // closed while down
        };
        let exit = catch_unwind(AssertUnwindSafe(|| {
            worker::run(&current, jobs, &supervision.worker)
        }));
        let (code, reason) = match exit {
            Ok(Exit::Closed) => return,
            Ok(Exit::DeviceLost(reason)) => {
                ("DEVICE_LOST", format!("the GPU device was lost ({reason})"))
            }
            Err(panic) => (
                "BACKEND_ERROR",
                format!("the GPU worker died ({})", panic_message(panic.as_ref())),
            ),
        };
        // Down first, so that no job is queued between the two.
        jobs.set_down(Some(format!("{reason}; the model is being loaded again")));
        jobs.fail_unfinished(&ErrorBody {
            message: format!("{reason} before this job finished; submit it again"),
            code: code.into(),
            field: None,
        });
        // Dropping a model whose device is gone must not take the supervisor with it.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(current)));
        if supervision.exit_on_device_loss {
            say(&format!("{reason}: exiting (--exit-on-device-loss)"));
            // A moment for the failed jobs' event streams to carry their error.
            std::thread::sleep(Duration::from_millis(500));
            std::process::exit(EXIT_DEVICE_LOST);
        }
        say(&format!("{reason}: loading the model again"));
    }
}

/// Loads the model anew, retrying until it loads or the store closes; `None` if it closed.
fn reload(jobs: &Store, supervision: &Supervision) -> Option<Model> {
    let down = jobs.down().unwrap_or_default();
    let Some(reloader) = &supervision.reload else {
        jobs.set_down(Some(format!(
            "{down}; this server cannot load its model again: restart it"
        )));
        while !jobs.wait_closed(Duration::from_secs(3600)) {}
        return None;
    };
    let mut pause = RETRY.0;
    loop {
        if jobs.is_closed() {
            return None;
        }
        let loaded = catch_unwind(AssertUnwindSafe(|| reloader.load()))
            .unwrap_or_else(|panic| Err(panic_message(panic.as_ref())));
        match loaded {
            Ok(model) => {
                jobs.set_down(None);
                say("the model is loaded again; serving");
                return Some(model);
            }
            Err(e) => {
                jobs.set_down(Some(format!(
                    "{down}; loading it again failed ({e}); next try in {} s",
                    pause.as_secs()
                )));
                if jobs.wait_closed(pause) {
                    return None;
                }
                pause = (pause * 2).min(RETRY.1);
            }
        }
    }
}
