//! The job store: every job's state by id, its cancel flag and a watch channel that the SSE
//! stream follows, plus the bounded queue to the GPU worker (which waits on it), the places
//! requests take in it before they are read, the worker's health and the TTL sweep.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use image::{GrayImage, RgbImage};
use sd_core::params::GenerationParams;
use tokio::sync::watch;

use crate::api::{ErrorBody, JobResult, JobState, Progress, Status};
use crate::inputs::Decoded;
use sd_wgsl::ImageFormat as Format;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the worker needs to run a job.
#[derive(Debug)]
pub struct Work {
    pub id: String,
    pub params: GenerationParams,
    pub format: Format,
    /// img2img and inpainting: the input image, decoded (any size; the pipeline resizes it).
    pub init_image: Option<RgbImage>,
    /// Inpainting: white = repaint (needs `init_image`).
    pub mask: Option<GrayImage>,
    pub cancel: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Entry {
    state: JobState,
    cancel: Arc<AtomicBool>,
    updates: watch::Sender<JobState>,
    finished: Option<Instant>,
    /// The steps the request asked for.
    steps: u32,
    /// The last progress report, kept when the final state drops it.
    last_progress: Option<Progress>,
    /// A pending job's work (with its decoded images), until the worker takes it or the job
    /// ends.
    work: Option<Work>,
}

/// A job as the dialects that show more than [`JobState`] read it.
#[derive(Debug, Clone)]
pub struct JobInfo {
    pub state: JobState,
    /// The steps the request asked for (img2img runs about `steps * strength` of them).
    pub steps: u32,
    /// The latest progress report, also after the job has ended (where it stopped); `None`
    /// before the worker took the job.
    pub last_progress: Option<Progress>,
}

/// A new job id in the UUID v4 text form (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`), as the job
/// and task APIs' clients expect.
pub fn uuid_v4() -> String {
    let bits: u128 = rand::random();
    // Version 4, variant 10.
    let bits = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The queue is full.
    Busy,
    /// The worker is gone (shutting down).
    Closed,
    /// The worker cannot run jobs now (it died or the GPU was lost, and it is being
    /// re-created): the reason.
    Down(String),
}

/// The queue and the jobs by id, under one lock.
#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Pending jobs' ids, oldest first. Each one's [`Work`] (with its images) is in its entry.
    queue: VecDeque<String>,
    /// Places taken by requests still being read or decoded ([`Place`]).
    reserved: usize,
    /// A job runs.
    running: bool,
    /// No more jobs: the worker ends once the queue is empty.
    closed: bool,
    /// Why the worker cannot run jobs now (`GET /health` answers 503 with it).
    down: Option<String>,
}

/// Jobs by id and the queue to the worker. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Store {
    inner: Arc<(Mutex<State>, Condvar)>,
}

/// The store with the queue's bound: what the handlers hold. The bound counts every job that
/// holds request memory: pending jobs (their decoded images) and requests still being read and
/// decoded ([`Jobs::reserve`]). A cancelled job gives back its place and its images at once.
#[derive(Debug, Clone)]
pub struct Jobs {
    pub store: Store,
    capacity: usize,
}

impl std::ops::Deref for Jobs {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

/// A place in the queue, taken before a creating request's body is read; given back when
/// dropped unless a job took it ([`Jobs::submit`]).
#[derive(Debug)]
pub struct Place {
    store: Store,
    taken: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        if !self.taken {
            self.store.lock().reserved -= 1;
        }
    }
}

impl Jobs {
    /// A store whose queue holds `capacity` waiting jobs (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            store: Store::default(),
            capacity: capacity.max(1),
        }
    }

    /// Takes a place for a job about to be read, or says why there is none.
    pub fn reserve(&self) -> Result<Place, Rejected> {
        let mut state = self.lock();
        Self::check_open(&state)?;
        if state.queue.len() + state.reserved >= self.capacity {
            return Err(Rejected::Busy);
        }
        state.reserved += 1;
        Ok(Place {
            store: self.store.clone(),
            taken: false,
        })
    }

    fn check_open(state: &State) -> Result<(), Rejected> {
        if state.closed {
            return Err(Rejected::Closed);
        }
        if let Some(reason) = &state.down {
            return Err(Rejected::Down(reason.clone()));
        }
        Ok(())
    }

    /// Creates a job (id `gen_<ms>_<hex>`) in `place` and queues it, or says why not (the job
    /// is then forgotten).
    pub fn submit(
        &self,
        place: Place,
        params: GenerationParams,
        format: Format,
        inputs: Decoded,
    ) -> Result<JobState, Rejected> {
        let id = format!(
            "gen_{}_{:09x}",
            now_ms(),
            rand::random::<u64>() & 0xf_ffff_ffff
        );
        self.submit_as(place, id, params, format, inputs)
    }

    /// [`Jobs::submit`] under the given (new, unique) id.
    pub fn submit_as(
        &self,
        mut place: Place,
        id: String,
        params: GenerationParams,
        format: Format,
        inputs: Decoded,
    ) -> Result<JobState, Rejected> {
        let now = now_ms();
        let steps = u32::try_from(params.steps).unwrap_or(u32::MAX);
        let state = JobState {
            id: id.clone(),
            status: Status::Pending,
            created_at: now,
            updated_at: now,
            progress: None,
            result: None,
            error: None,
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let (updates, _) = watch::channel(state.clone());
        let work = Work {
            id: id.clone(),
            params,
            format,
            init_image: inputs.init_image,
            mask: inputs.mask,
            cancel: Arc::clone(&cancel),
        };
        let mut jobs = self.lock();
        // The place becomes the job's (or is given back on refusal).
        place.taken = true;
        jobs.reserved -= 1;
        Self::check_open(&jobs)?;
        jobs.entries.insert(
            id.clone(),
            Entry {
                state: state.clone(),
                cancel,
                updates,
                finished: None,
                steps,
                last_progress: None,
                work: Some(work),
            },
        );
        jobs.queue.push_back(id);
        drop(jobs);
        self.inner.1.notify_all();
        Ok(state)
    }
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A job's state.
    pub fn get(&self, id: &str) -> Option<JobState> {
        self.lock().entries.get(id).map(|e| e.state.clone())
    }

    /// A job's state with what the store knows besides.
    pub fn info(&self, id: &str) -> Option<JobInfo> {
        self.lock().entries.get(id).map(|e| JobInfo {
            state: e.state.clone(),
            steps: e.steps,
            last_progress: e.state.progress.clone().or_else(|| e.last_progress.clone()),
        })
    }

    /// Follows a job's state changes.
    pub fn subscribe(&self, id: &str) -> Option<watch::Receiver<JobState>> {
        self.lock().entries.get(id).map(|e| e.updates.subscribe())
    }

    /// Asks a job to stop: a pending one is cancelled now (its place and images freed), a
    /// running one at its next step.
    pub fn cancel(&self, id: &str) -> Option<JobState> {
        let mut state = self.lock();
        let entry = state.entries.get_mut(id)?;
        entry.cancel.store(true, Ordering::SeqCst);
        let pending = entry.state.status == Status::Pending;
        if pending {
            Self::finish_entry(entry, Status::Cancelled, None, None);
        }
        let answer = entry.state.clone();
        if pending {
            state.queue.retain(|queued| queued != id);
        }
        Some(answer)
    }

    /// Whether a job runs or waits.
    pub fn busy(&self) -> bool {
        let state = self.lock();
        state.running || !state.queue.is_empty()
    }

    /// The next pending job, now `in_progress` with its first progress report (so an
    /// `in_progress` state always has progress); waits for one. `None` once the store is
    /// closed and the queue empty.
    pub fn next_job(&self, first_progress: impl Fn(&Work) -> Progress) -> Option<Work> {
        let mut state = self.lock();
        loop {
            while let Some(id) = state.queue.pop_front() {
                let Some(entry) = state.entries.get_mut(&id) else {
                    continue;
                };
                let Some(work) = entry.work.take() else {
                    continue;
                };
                entry.state.status = Status::InProgress;
                entry.state.progress = Some(first_progress(&work));
                Self::touch(entry);
                state.running = true;
                return Some(work);
            }
            if state.closed {
                return None;
            }
            state = self.inner.1.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// No more jobs: the worker ends when the queue is empty.
    pub fn close(&self) {
        self.shutdown(false);
    }

    /// Closes the queue and, with `cancel`, cancels every unfinished job, under one lock (a job
    /// submitted in between would otherwise run to its end).
    pub fn shutdown(&self, cancel: bool) {
        let mut state = self.lock();
        state.closed = true;
        if cancel {
            state.queue.clear();
            for entry in state.entries.values_mut() {
                entry.cancel.store(true, Ordering::SeqCst);
                if entry.state.status == Status::Pending {
                    Self::finish_entry(entry, Status::Cancelled, None, None);
                }
            }
        }
        drop(state);
        self.inner.1.notify_all();
    }

    /// Whether [`Store::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Waits up to `timeout` for [`Store::close`]; whether it came.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .inner
            .1
            .wait_timeout_while(state, timeout, |s| !s.closed)
            .unwrap_or_else(|e| e.into_inner());
        state.closed
    }

    /// Says why the worker cannot run jobs (new jobs are refused with it, `/health` answers
    /// 503), or that it can again.
    pub fn set_down(&self, reason: Option<String>) {
        self.lock().down = reason;
    }

    /// Why the worker cannot run jobs now, if it cannot.
    pub fn down(&self) -> Option<String> {
        self.lock().down.clone()
    }

    /// The worker reports progress.
    pub fn progress(&self, id: &str, progress: Progress) {
        if let Some(entry) = self.lock().entries.get_mut(id)
            && entry.state.progress.as_ref() != Some(&progress)
        {
            entry.state.progress = Some(progress);
            Self::touch(entry);
        }
    }

    /// The worker is done with a job.
    pub fn finish(
        &self,
        id: &str,
        status: Status,
        result: Option<JobResult>,
        error: Option<ErrorBody>,
    ) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.get_mut(id) {
            Self::finish_entry(entry, status, result, error);
        }
        state.running = false;
    }

    /// Fails every running and pending job with `error` (the worker died or lost the GPU):
    /// their event streams end with it.
    pub fn fail_unfinished(&self, error: &ErrorBody) {
        let mut state = self.lock();
        state.queue.clear();
        state.running = false;
        for entry in state.entries.values_mut() {
            if !entry.state.status.is_final() {
                entry.cancel.store(true, Ordering::SeqCst);
                Self::finish_entry(entry, Status::Error, None, Some(error.clone()));
            }
        }
    }

    fn finish_entry(
        entry: &mut Entry,
        status: Status,
        result: Option<JobResult>,
        error: Option<ErrorBody>,
    ) {
        entry.state.status = status;
        // A pending job's images go now, not when the worker would have reached it.
        entry.work = None;
        // The final state carries the outcome, not the last progress report.
        if let Some(progress) = entry.state.progress.take() {
            entry.last_progress = Some(progress);
        }
        entry.state.result = result;
        entry.state.error = error;
        entry.finished = Some(Instant::now());
        Self::touch(entry);
    }

    fn touch(entry: &mut Entry) {
        entry.state.updated_at = now_ms();
        entry.updates.send_replace(entry.state.clone());
    }

    /// Forgets finished jobs older than `ttl`; returns how many.
    pub fn sweep(&self, ttl: Duration) -> usize {
        let mut state = self.lock();
        let before = state.entries.len();
        state
            .entries
            .retain(|_, e| e.finished.is_none_or(|t| t.elapsed() < ttl));
        before - state.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::uuid_v4;

    #[test]
    fn uuids_are_version_4() {
        let id = uuid_v4();
        let groups: Vec<&str> = id.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        assert_eq!(lengths, [8, 4, 4, 4, 12], "{id}");
        assert!(groups[2].starts_with('4'), "{id}");
        assert!(groups[3].starts_with(['8', '9', 'a', 'b']), "{id}");
        assert!(
            id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
            "{id}"
        );
        assert_ne!(id, uuid_v4());
    }
}
