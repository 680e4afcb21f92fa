//! Claims on the search outbox: committed at once (no lock held while documents travel), fenced by their
//! token (a claim whose lease ran out settles nothing), and given back whole when a round cannot finish.

mod common;

use std::time::Duration;

use auscult_store::{Settlement, claim_outbox, release_outbox, settle_outbox};

async fn outbox_ids(client: &tokio_postgres::Client) -> Vec<i64> {
    client
        .query("SELECT id FROM search_outbox ORDER BY id", &[])
        .await
        .expect("outbox")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_claim_holds_no_lock_and_only_its_token_settles_its_rows() {
    let (pg, mut client) = common::migrated().await;
    client
        .batch_execute(
            "INSERT INTO search_outbox (kind, ref_id) SELECT 'frame', g FROM generate_series(1, 6) g",
        )
        .await
        .expect("queue");

    let first = claim_outbox(&client, 4, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(first.entries.len(), 4);
    // Committed and unlocked: another session can lock the claimed rows without waiting…
    let other = common::connect(&pg).await;
    other
        .batch_execute("BEGIN; SELECT id FROM search_outbox FOR UPDATE NOWAIT; ROLLBACK")
        .await
        .expect("no lock is held on claimed rows");
    // …and another indexer claims only what is left.
    let second = claim_outbox(&other, 10, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(second.entries.len(), 2);
    assert!(
        second
            .entries
            .iter()
            .all(|e| !first.entries.iter().any(|f| f.id == e.id))
    );

    // A claim that outlived its lease: its rows are due again, and its late settlement touches nothing.
    let ids: Vec<i64> = second.entries.iter().map(|e| e.id).collect();
    client
        .execute(
            "UPDATE search_outbox SET not_before = now() WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .expect("expire the lease");
    let third = claim_outbox(&client, 10, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(third.entries.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    let done: Vec<(i64, Settlement)> = ids.iter().map(|id| (*id, Settlement::Done)).collect();
    settle_outbox(&mut client, second.token, &done)
        .await
        .expect("stale settlement");
    assert_eq!(
        outbox_ids(&client).await.len(),
        6,
        "a stale claim settles nothing"
    );
    settle_outbox(&mut client, third.token, &done)
        .await
        .expect("settlement");
    assert_eq!(outbox_ids(&client).await.len(), 4);

    // A round that cannot reach the cluster gives its rows back, due at once, attempts unchanged.
    let first_ids: Vec<i64> = first.entries.iter().map(|e| e.id).collect();
    assert_eq!(
        release_outbox(&client, first.token, &first_ids)
            .await
            .expect("release"),
        4
    );
    let again = claim_outbox(&client, 10, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(again.entries.len(), 4);
    assert!(again.entries.iter().all(|e| e.attempts == 0));
}
