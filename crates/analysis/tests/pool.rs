//! The scoring pool with the shipped model and real recordings.

use std::path::PathBuf;

use auscult_analysis::{FrameAudio, ScoreError, ScoreInput, ScoringPool, model_audio};
use auscult_audio::{AudioLimits, ChannelChoice};
use auscult_frame::{SampleEncoding, encode_pcm_s16le};
use auscult_model::{Detector, MachineKey, Verdict};

fn shipped() -> Detector {
    let bytes = auscult_model::shipped::bytes().expect("this build ships a model");
    Detector::from_bytes(bytes, &auscult_model::default_device()).expect("shipped model")
}

fn recording(name: &str) -> Vec<f32> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/recordings")
        .join(name);
    auscult_audio::load(&path, ChannelChoice::First, 16_000, AudioLimits::default())
        .expect("sample")
        .samples
}

fn valve() -> Option<MachineKey> {
    Some(MachineKey {
        machine_type: "valve".into(),
        machine_id: "section_00".into(),
    })
}

#[tokio::test]
async fn frames_and_clips_are_judged_by_the_current_model() {
    let pool = ScoringPool::start(shipped(), 2, 8);
    let clip = recording("section_00_source_test_anomaly_0028_pat_00.wav");

    // One second, sent as a gateway sends it: PCM16 bytes.
    let pcm = encode_pcm_s16le(&clip[..16_000]);
    let frame = FrameAudio {
        sample_rate_hz: 16_000,
        channels: 1,
        encoding: SampleEncoding::PcmS16le,
        samples: &pcm,
    };
    let second = model_audio(&frame, auscult_audio::ChannelChoice::First, 16_000).expect("decode");
    let scored = pool
        .score(ScoreInput::new(second, valve()))
        .await
        .expect("score a frame");
    assert_eq!(scored.assessment.window_scores.len(), 1);
    assert_eq!(scored.model_version, pool.model().info.version);
    let total: f32 = scored.probabilities.iter().sum();
    assert!((total - 1.0).abs() < 1e-3, "probabilities sum to {total}");

    // The whole faulty clip is judged as a clip, and heard as faulty.
    let scored = pool
        .score(ScoreInput::new(clip, valve()))
        .await
        .expect("score a clip");
    assert_eq!(scored.assessment.verdict, Verdict::Anomalous);

    let short = pool.score(ScoreInput::new(vec![0.0; 8_000], valve())).await;
    assert!(matches!(short, Err(ScoreError::TooShort(_))), "{short:?}");

    // A swapped model serves the next job.
    let mut renamed = shipped();
    renamed.info.version = "test-version".into();
    pool.replace_model(renamed);
    let scored = pool
        .score(ScoreInput::new(vec![0.01; 16_000], valve()))
        .await
        .expect("score");
    assert_eq!(scored.model_version, "test-version");
}

#[tokio::test]
async fn a_full_queue_refuses_instead_of_buffering() {
    // No workers: nothing drains, so the queue's capacity is exactly what it accepts.
    let pool = ScoringPool::start(shipped(), 0, 3);
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            pool.submit(ScoreInput::new(vec![0.0; 16_000], valve()))
                .expect("room in the queue")
        })
        .collect();
    assert_eq!(pool.waiting(), 3);
    assert_eq!(
        pool.submit(ScoreInput::new(vec![0.0; 16_000], valve()))
            .err(),
        Some(ScoreError::Busy(3))
    );
    drop(waiting);
}

#[tokio::test]
async fn a_panic_while_scoring_fails_that_job_alone_and_the_thread_is_replaced() {
    // One thread, whose scorer panics on one particular input (a bug meeting unusual audio).
    let scorer: std::sync::Arc<auscult_analysis::Scorer> =
        std::sync::Arc::new(|detector: &Detector, input: &ScoreInput| {
            assert!(input.samples.len() != 12_345, "a bug met unusual audio");
            auscult_analysis::score(detector, input)
        });
    let pool = ScoringPool::start_with(shipped(), 1, 4, scorer);
    let poison = ScoreInput::new(vec![0.0; 12_345], valve());
    match pool.score(poison).await {
        Err(ScoreError::Unscorable(why)) => {
            assert!(why.contains("a bug met unusual audio"), "{why}");
        }
        other => panic!("expected UNSCORABLE, got {other:?}"),
    }
    // The only thread died with that job; its replacement scores the next ones.
    let clip = recording("section_00_source_test_normal_0033_pat_00.wav");
    for _ in 0..2 {
        let scored = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            pool.score(ScoreInput::new(clip[..16_000].to_vec(), valve())),
        )
        .await
        .expect("a thread took the job")
        .expect("scored after the panic");
        assert!(!scored.model_version.is_empty());
    }
}

#[tokio::test]
async fn jobs_compute_in_one_pool_of_as_many_threads_as_scoring_threads() {
    // Where each job ran, and how many threads its network pass could spread over.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    let scorer: std::sync::Arc<auscult_analysis::Scorer> =
        std::sync::Arc::new(move |detector: &Detector, input: &ScoreInput| {
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            record
                .lock()
                .expect("record")
                .push((thread, rayon::current_num_threads()));
            auscult_analysis::score(detector, input)
        });
    let pool = ScoringPool::start_with(shipped(), 3, 16, scorer);
    let clip = recording("section_00_source_test_normal_0033_pat_00.wav");
    let jobs = (0..6).map(|_| pool.score(ScoreInput::new(clip[..16_000].to_vec(), valve())));
    for scored in futures_util::future::join_all(jobs).await {
        scored.expect("scored");
    }
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.len(), 6);
    for (thread, threads) in seen.iter() {
        assert!(
            thread.starts_with("scoring-compute-"),
            "a job computed on {thread:?}, outside the compute pool"
        );
        assert_eq!(
            *threads, 3,
            "the network pass could spread over {threads} threads"
        );
    }
}
