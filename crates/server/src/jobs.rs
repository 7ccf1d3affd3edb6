//! The job store: every job's state by id, its cancel flag and a watch channel that the SSE
//! stream follows, plus the bounded queue to the GPU worker and the TTL sweep.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use image::{GrayImage, RgbImage};
use sd_core::params::GenerationParams;
use tokio::sync::{mpsc, watch};

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
}

/// Jobs by id. Cheap to clone. The worker and the sweeper hold only this, not the queue's
/// sender, so the queue closes (and the worker ends) when the HTTP side is gone.
#[derive(Debug, Clone, Default)]
pub struct Store {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    running: Arc<AtomicBool>,
}

/// The store plus the queue to the worker: what the handlers hold. The queue's bound is the
/// number of *pending* jobs (counted in the store), so a cancelled job frees its place at once.
#[derive(Debug, Clone)]
pub struct Jobs {
    pub store: Store,
    queue: mpsc::UnboundedSender<Work>,
    capacity: usize,
}

impl std::ops::Deref for Jobs {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl Jobs {
    /// A store whose queue holds `capacity` waiting jobs; the receiver goes to the worker.
    pub fn new(capacity: usize) -> (Self, mpsc::UnboundedReceiver<Work>) {
        let (queue, rx) = mpsc::unbounded_channel();
        (
            Self {
                store: Store::default(),
                queue,
                capacity: capacity.max(1),
            },
            rx,
        )
    }

    /// Creates a job (id `gen_<ms>_<hex>`) and queues it, or says why not (the job is then
    /// forgotten).
    pub fn submit(
        &self,
        params: GenerationParams,
        format: Format,
        inputs: Decoded,
    ) -> Result<JobState, Rejected> {
        let id = format!(
            "gen_{}_{:09x}",
            now_ms(),
            rand::random::<u64>() & 0xf_ffff_ffff
        );
        self.submit_as(id, params, format, inputs)
    }

    /// [`Jobs::submit`] under the given (new, unique) id.
    pub fn submit_as(
        &self,
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
        // Count, insert and send under one lock, so two requests cannot take the last place.
        let mut jobs = self.lock();
        let pending = jobs
            .values()
            .filter(|e| e.state.status == Status::Pending)
            .count();
        if pending >= self.capacity {
            return Err(Rejected::Busy);
        }
        let work = Work {
            id: id.clone(),
            params,
            format,
            init_image: inputs.init_image,
            mask: inputs.mask,
            cancel: Arc::clone(&cancel),
        };
        if self.queue.send(work).is_err() {
            return Err(Rejected::Closed);
        }
        jobs.insert(
            id,
            Entry {
                state: state.clone(),
                cancel,
                updates,
                finished: None,
                steps,
                last_progress: None,
            },
        );
        Ok(state)
    }
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A job's state.
    pub fn get(&self, id: &str) -> Option<JobState> {
        self.lock().get(id).map(|e| e.state.clone())
    }

    /// A job's state with what the store knows besides.
    pub fn info(&self, id: &str) -> Option<JobInfo> {
        self.lock().get(id).map(|e| JobInfo {
            state: e.state.clone(),
            steps: e.steps,
            last_progress: e.state.progress.clone().or_else(|| e.last_progress.clone()),
        })
    }

    /// Follows a job's state changes.
    pub fn subscribe(&self, id: &str) -> Option<watch::Receiver<JobState>> {
        self.lock().get(id).map(|e| e.updates.subscribe())
    }

    /// Asks a job to stop: a pending one is cancelled now, a running one at its next step.
    pub fn cancel(&self, id: &str) -> Option<JobState> {
        let mut jobs = self.lock();
        let entry = jobs.get_mut(id)?;
        entry.cancel.store(true, Ordering::SeqCst);
        if entry.state.status == Status::Pending {
            Self::finish_entry(entry, Status::Cancelled, None, None);
        }
        Some(entry.state.clone())
    }

    /// Asks every unfinished job to stop (shutdown).
    pub fn cancel_all(&self) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            self.cancel(&id);
        }
    }

    /// Whether a job runs or waits.
    pub fn busy(&self) -> bool {
        self.running.load(Ordering::SeqCst)
            || self
                .lock()
                .values()
                .any(|e| e.state.status == Status::Pending)
    }

    /// The worker takes a job (its first progress report comes with it, so an `in_progress`
    /// state always has progress): `false` if it was cancelled while waiting.
    pub fn start(&self, id: &str, progress: Progress) -> bool {
        let mut jobs = self.lock();
        let Some(entry) = jobs.get_mut(id) else {
            return false;
        };
        if entry.state.status != Status::Pending {
            return false;
        }
        self.running.store(true, Ordering::SeqCst);
        entry.state.status = Status::InProgress;
        entry.state.progress = Some(progress);
        Self::touch(entry);
        true
    }

    /// The worker reports progress.
    pub fn progress(&self, id: &str, progress: Progress) {
        if let Some(entry) = self.lock().get_mut(id)
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
        if let Some(entry) = self.lock().get_mut(id) {
            Self::finish_entry(entry, status, result, error);
        }
        self.running.store(false, Ordering::SeqCst);
    }

    fn finish_entry(
        entry: &mut Entry,
        status: Status,
        result: Option<JobResult>,
        error: Option<ErrorBody>,
    ) {
        entry.state.status = status;
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
        let mut jobs = self.lock();
        let before = jobs.len();
        jobs.retain(|_, e| e.finished.is_none_or(|t| t.elapsed() < ttl));
        before - jobs.len()
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
