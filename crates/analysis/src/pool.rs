//! The scoring pool: worker threads, a bounded queue, and the model they share.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, RwLock},
};

use auscult_model::{Assessment, Detector, MachineKey, WindowSummary};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

/// Why a job was not scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreError {
    /// The queue is full: the caller should back off and retry (gRPC RESOURCE_EXHAUSTED).
    #[error("the scoring queue is full ({0} jobs waiting)")]
    Busy(usize),
    /// The audio cannot be judged (no profile for the machine, scoring failed…).
    #[error("{0}")]
    Unscorable(String),
    /// The audio is shorter than one window: no model will judge it, retrying cannot help.
    #[error("{0}")]
    TooShort(String),
    /// The pool is shutting down.
    #[error("the scoring pool has stopped")]
    Stopped,
}

/// A verdict and the model version that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub model_version: String,
    pub assessment: Assessment,
    /// Class probabilities, in the model's class order (`Detector::info.classes`).
    pub probabilities: Vec<f32>,
    /// What the stream should remember of this audio for the frames after it.
    pub summary: WindowSummary,
}

/// Audio to score and what is known about it.
#[derive(Debug, Clone, Default)]
pub struct ScoreInput {
    /// Mono samples at the model's sample rate.
    pub samples: Vec<f32>,
    /// The machine recorded; `None`: the one the model recognises.
    pub machine: Option<MachineKey>,
    /// Summaries of the stream's preceding frames, oldest first.
    pub history: Vec<WindowSummary>,
}

impl ScoreInput {
    /// Audio judged on its own.
    pub fn new(samples: Vec<f32>, machine: Option<MachineKey>) -> Self {
        Self {
            samples,
            machine,
            history: Vec::new(),
        }
    }
}

struct Job {
    input: ScoreInput,
    reply: oneshot::Sender<Result<Scored, ScoreError>>,
}

/// What a scoring thread runs for one job: [`score`] in service, something else in tests.
pub type Scorer = dyn Fn(&Detector, &ScoreInput) -> Result<Scored, ScoreError> + Send + Sync;

/// Counts scoring threads that panicked (each was replaced and its job failed as unscorable).
pub const SCORING_PANICS_TOTAL: &str = "auscult_analysis_scoring_panics_total";

/// Scoring threads behind a bounded queue, sharing the current model.
#[derive(Debug)]
pub struct ScoringPool {
    queue: mpsc::Sender<Job>,
    /// Kept here as well as in the workers, so the queue stays open (and bounded) even with none.
    _receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
    depth: usize,
    model: Arc<RwLock<Arc<Detector>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("samples", &self.input.samples.len())
            .finish_non_exhaustive()
    }
}

impl ScoringPool {
    /// Starts `workers` threads with a queue of `depth` waiting jobs. The threads end when the pool
    /// is dropped and the queue is empty.
    ///
    /// The scoring threads only take jobs and answer: each job runs in one compute pool of
    /// `workers` threads, which also splits a job's network pass across threads when fewer jobs
    /// than threads are running. So at most `workers` threads compute at any time, however many
    /// jobs are in flight — scoring and the network's own parallelism never oversubscribe the
    /// cores they were sized for.
    pub fn start(model: Detector, workers: usize, depth: usize) -> Self {
        Self::start_with(model, workers, depth, Arc::new(score))
    }

    /// Like [`ScoringPool::start`], with the threads running `scorer` for each job.
    pub fn start_with(model: Detector, workers: usize, depth: usize, scorer: Arc<Scorer>) -> Self {
        let (queue, receiver) = mpsc::channel::<Job>(depth.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let model = Arc::new(RwLock::new(Arc::new(model)));
        let compute = match rayon::ThreadPoolBuilder::new()
            .num_threads(workers.max(1))
            .thread_name(|i| format!("scoring-compute-{i}"))
            .build()
        {
            Ok(pool) => Some(Arc::new(pool)),
            Err(e) => {
                tracing::error!("cannot start the compute pool, scoring on the process's: {e}");
                None
            }
        };
        for worker in 0..workers {
            spawn_worker(
                format!("scoring-{worker}"),
                Worker {
                    receiver: Arc::clone(&receiver),
                    model: Arc::clone(&model),
                    scorer: Arc::clone(&scorer),
                    compute: compute.clone(),
                },
            );
        }
        Self {
            queue,
            _receiver: receiver,
            depth: depth.max(1),
            model,
        }
    }

    /// The model jobs starting now will use.
    pub fn model(&self) -> Arc<Detector> {
        match self.model.read() {
            Ok(model) => Arc::clone(&model),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Serves every job that starts from now on with `model`.
    pub fn replace_model(&self, model: Detector) {
        let model = Arc::new(model);
        match self.model.write() {
            Ok(mut slot) => *slot = model,
            Err(poisoned) => *poisoned.into_inner() = model,
        }
    }

    /// Jobs waiting for a thread.
    pub fn waiting(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Queues mono audio at the model's sample rate; refuses at once when the queue is full.
    pub fn submit(
        &self,
        input: ScoreInput,
    ) -> Result<oneshot::Receiver<Result<Scored, ScoreError>>, ScoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Job { input, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ScoreError::Busy(self.depth),
                mpsc::error::TrySendError::Closed(_) => ScoreError::Stopped,
            })?;
        Ok(answer)
    }

    /// Queues and waits for the verdict.
    pub async fn score(&self, input: ScoreInput) -> Result<Scored, ScoreError> {
        self.submit(input)?.await.map_err(|_| ScoreError::Stopped)?
    }
}

/// What a scoring thread needs: the queue, the current model, what to run.
#[derive(Clone)]
struct Worker {
    receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
    model: Arc<RwLock<Arc<Detector>>>,
    scorer: Arc<Scorer>,
    /// Where the work of a job runs (see [`ScoringPool::start`]).
    compute: Option<Arc<rayon::ThreadPool>>,
}

fn spawn_worker(name: String, worker: Worker) {
    let spawned = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || work(&worker));
    if let Err(e) = spawned {
        tracing::error!("cannot start scoring thread {name}: {e}");
    }
}

fn work(worker: &Worker) {
    loop {
        // Hold the lock only to take a job, never while scoring.
        let job = match worker.receiver.lock() {
            Ok(mut receiver) => receiver.blocking_recv(),
            Err(_) => None,
        };
        let Some(job) = job else { return };
        let detector = match worker.model.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        // A panic while scoring one job (a bug meeting unusual audio) fails that job alone: the caller
        // hears UNSCORABLE, and a fresh thread takes this one's place, since a thread that unwound
        // through the model's code may have left its thread-local state half-done.
        let run = || (worker.scorer)(&detector, &job.input);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| match &worker.compute {
            Some(pool) => pool.install(run),
            None => run(),
        }));
        match outcome {
            Ok(result) => {
                debug!(version = %detector.info.version, ok = result.is_ok(), "scored");
                let _ = job.reply.send(result);
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                metrics::counter!(SCORING_PANICS_TOTAL).increment(1);
                let name = std::thread::current()
                    .name()
                    .unwrap_or("scoring")
                    .to_owned();
                tracing::error!(thread = %name, "scoring panicked, replacing the thread: {why}");
                let _ = job.reply.send(Err(ScoreError::Unscorable(format!(
                    "scoring failed: {why}"
                ))));
                spawn_worker(name, worker.clone());
                return;
            }
        }
    }
}

/// Scores one job with `detector`.
pub fn score(detector: &Detector, input: &ScoreInput) -> Result<Scored, ScoreError> {
    let inference = detector.hear(&input.samples);
    let assessment = detector
        .assess_in_stream(&inference, input.machine.as_ref(), &input.history)
        .map_err(|e| match e {
            auscult_model::ModelError::NoWindows => ScoreError::TooShort(e.to_string()),
            other => ScoreError::Unscorable(other.to_string()),
        })?;
    let classes = detector.info.network.classes.max(1);
    let mut probabilities = vec![0.0_f32; classes];
    for row in inference.probabilities.chunks_exact(classes) {
        for (p, v) in probabilities.iter_mut().zip(row) {
            *p += v / inference.windows as f32;
        }
    }
    Ok(Scored {
        model_version: detector.info.version.clone(),
        summary: detector.summarise(&inference, &assessment),
        assessment,
        probabilities,
    })
}
