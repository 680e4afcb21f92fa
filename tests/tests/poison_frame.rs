//! One frame that makes every analysis call carrying it fail costs no other frame an attempt:
//! the listener splits the failed call until that frame is alone.

use std::time::Duration;

use auscult_e2e::{Stack, activate_shipped_model, scoring_progress, start_listener};
use auscult_proto::analysis::v1 as pb;
use auscult_testkit::{free_port, wait_for};

/// An analysis replica that answers every frame but one, and fails any call that carries that one
/// as a whole — as a replica does when a frame crashes it or overruns the deadline.
struct PoisonedAnalysis {
    poison: i64,
    model_version: String,
}

#[tonic::async_trait]
impl pb::analysis_server::Analysis for PoisonedAnalysis {
    async fn score(
        &self,
        request: tonic::Request<pb::ScoreRequest>,
    ) -> Result<tonic::Response<pb::ScoreResponse>, tonic::Status> {
        let items = request.into_inner().items;
        let poisoned = items.iter().any(|item| {
            matches!(item.source, Some(pb::score_item::Source::FrameId(id)) if id == self.poison)
        });
        if poisoned {
            return Err(tonic::Status::internal(format!(
                "analysis crashed on frame {}",
                self.poison
            )));
        }
        let verdict = pb::Verdict {
            model_version: self.model_version.clone(),
            class: "valve/section_00/normal".into(),
            class_probability: 1.0,
            windows: 1,
            summary: Some(pb::WindowSummary {
                model_version: self.model_version.clone(),
                windows: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let results = items
            .iter()
            .map(|_| pb::ScoreResult {
                outcome: Some(pb::score_result::Outcome::Verdict(verdict.clone())),
            })
            .collect();
        Ok(tonic::Response::new(pb::ScoreResponse { results }))
    }
}

#[tokio::test]
async fn a_frame_that_fails_whole_calls_fails_alone() {
    let stack = Stack::start(&[]).await;
    let mut db = stack.db().await;
    let version = activate_shipped_model(&mut db).await;
    // Two devices, ten frames each: every round of the listener holds one frame of each.
    for device in ["gw-bad", "gw-good"] {
        let token = stack.add_device(device).await;
        let args = ["--sensors", "1", "--frames", "10", "--rate", "0"];
        stack.simulate(device, &token, &args).await;
    }
    let poison: i64 = db
        .query_one(
            "SELECT id FROM frames WHERE device_id = 'gw-bad' ORDER BY seq OFFSET 3 LIMIT 1",
            &[],
        )
        .await
        .expect("the fourth frame of gw-bad")
        .get(0);

    let port = free_port().expect("port");
    // A replica that is up (its health check says so) and fails calls: the frame's fault, not an outage.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::analysis_server::AnalysisServer<PoisonedAnalysis>>()
        .await;
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(pb::analysis_server::AnalysisServer::new(PoisonedAnalysis {
            poison,
            model_version: version,
        }))
        .serve(([127, 0, 0, 1], port).into());
    let server = tokio::spawn(server);
    let listener = start_listener(
        &stack.postgres.url(),
        "listener",
        &[format!("http://127.0.0.1:{port}")],
        &[
            // One worker claiming everything at once: the poisoned frame then shares its score
            // call with the other device's frame of the same round, the case under test.
            ("AUSCULT__JOBS__CONCURRENCY", "1"),
            ("AUSCULT__JOBS__BATCH", "64"),
            ("AUSCULT__JOBS__MAX_ATTEMPTS", "2"),
            ("AUSCULT__JOBS__RETRY_BACKOFF", "50ms"),
            ("AUSCULT__ANALYSIS__RETRIES", "1"),
            ("AUSCULT__ANALYSIS__BACKOFF", "10ms"),
        ],
    );

    let settled = wait_for(Duration::from_secs(60), || async {
        let depth = auscult_store::queue_depth(&db).await.ok()?;
        (depth.open() == 0).then_some(())
    })
    .await;
    assert!(settled.is_some(), "jobs never settled:\n{}", listener.log());
    let (done, jobs, results, _) = scoring_progress(&db).await;
    assert_eq!((done, jobs, results), (19, 20, 19), "{}", listener.log());

    let dead = db
        .query(
            "SELECT frame_id, attempts, last_error FROM analysis_jobs WHERE state = 'dead'",
            &[],
        )
        .await
        .expect("dead jobs");
    assert_eq!(dead.len(), 1);
    let (frame, attempts, error): (i64, i32, String) =
        (dead[0].get(0), dead[0].get(1), dead[0].get(2));
    assert_eq!(frame, poison, "the poisoned frame is the one that died");
    assert_eq!(attempts, 2, "dead after max_attempts");
    assert!(
        error.contains(&format!("analysis crashed on frame {poison}")),
        "its last error names the cause: {error}"
    );
    // The innocent frames never lost an attempt, the other device's least of all.
    let retried: i64 = db
        .query_one(
            "SELECT count(*) FROM analysis_jobs WHERE frame_id <> $1 AND attempts <> 1",
            &[&poison],
        )
        .await
        .expect("attempts")
        .get(0);
    assert_eq!(
        retried,
        0,
        "innocent frames were retried:\n{}",
        listener.log()
    );
    server.abort();
}
