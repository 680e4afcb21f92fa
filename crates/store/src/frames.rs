//! Storing frames: one transaction per batch, with the work rows that stored frames create.

use std::{
    collections::{HashMap, HashSet},
    time::SystemTime,
};

use auscult_frame::{Frame, FrameKey};
use futures_util::pin_mut;
use tokio_postgres::{
    binary_copy::BinaryCopyInWriter,
    error::SqlState,
    types::{ToSql, Type},
};
use tracing::instrument;

use crate::StoreError;

/// The NOTIFY channel that wakes listeners when frames (and their jobs) were committed. The payload is the
/// number of new frames; listeners must not rely on it, the jobs table is the truth.
pub const FRAMES_CHANNEL: &str = "auscult_frames";

/// What happened to one frame of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Newly stored by this batch.
    Stored,
    /// The same frame (same key, same samples) was already stored: a resend.
    Duplicate,
    /// A different frame is stored under the same key: the gateway reused a sequence number.
    Conflict,
}

/// Stores a batch of frames in one transaction, together with one analysis job and one search-outbox row per
/// new frame and a single NOTIFY; returns one outcome per input frame, in order. Nothing is durable, and no
/// outcome may be acknowledged, before this returns `Ok`.
#[instrument(skip_all, fields(frames = frames.len()))]
pub async fn insert_frames(
    client: &mut tokio_postgres::Client,
    frames: &[&Frame],
    received_at: SystemTime,
) -> Result<Vec<InsertOutcome>, StoreError> {
    // A key repeated inside one batch is inserted once; the repeats are judged against the first.
    let mut first_of: HashMap<&FrameKey, usize> = HashMap::with_capacity(frames.len());
    let mut unique: Vec<&Frame> = frames
        .iter()
        .enumerate()
        .filter(|(i, f)| *first_of.entry(&f.key).or_insert(*i) == *i)
        .map(|(_, f)| *f)
        .collect();
    // Every transaction takes its keys' index locks in one global order, so a batch and a concurrent
    // resend of some of the same keys (on another stream or replica) wait for each other instead of
    // deadlocking. Outcomes are matched by key below, so the order does not change them.
    unique.sort_unstable_by(|a, b| a.key.cmp(&b.key));

    let (inserted, existing) = match store_by_copy(client, &unique, received_at).await {
        // Another transaction stored one of these keys between our check and our COPY (a gateway resending
        // on a new stream while its old one is still being committed): settle it key by key.
        Err(StoreError::Db(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            store_by_insert(client, &unique, received_at).await?
        }
        other => other?,
    };

    let outcome_of_first = |f: &Frame| {
        if inserted.contains(&f.key) {
            InsertOutcome::Stored
        } else if existing.get(&f.key) == Some(&f.samples_sha256) {
            InsertOutcome::Duplicate
        } else {
            InsertOutcome::Conflict
        }
    };
    Ok(frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let first_index = first_of[&f.key];
            let first = frames[first_index];
            let first_outcome = outcome_of_first(first);
            if i == first_index {
                first_outcome
            } else if first_outcome == InsertOutcome::Conflict
                || first.samples_sha256 != f.samples_sha256
            {
                InsertOutcome::Conflict
            } else {
                InsertOutcome::Duplicate
            }
        })
        .collect())
}

/// Keys newly stored, and the checksums of keys that were stored before.
type Stored = (HashSet<FrameKey>, HashMap<FrameKey, [u8; 32]>);

/// The fast path: leave out keys already stored, reserve ids, binary COPY the frames, add their work rows.
/// COPY is what PostgreSQL ingests fastest, but it cannot skip conflicts, hence the check first.
async fn store_by_copy(
    client: &mut tokio_postgres::Client,
    unique: &[&Frame],
    received_at: SystemTime,
) -> Result<Stored, StoreError> {
    let tx = client.transaction().await?;
    let existing = lock_and_check(&tx, unique).await?;
    let new: Vec<&Frame> = unique
        .iter()
        .filter(|f| !existing.contains_key(&f.key))
        .copied()
        .collect();
    if !new.is_empty() {
        raise_high_water(&tx, &new).await?;
        let count = i32::try_from(new.len()).unwrap_or(i32::MAX);
        let ids: Vec<i64> = tx
            .query("SELECT nextval(pg_get_serial_sequence('frames', 'id')) FROM generate_series(1, $1::int4)", &[&count])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        copy_frames(&tx, "frames", &new, Some(&ids), received_at).await?;
        let traces: Vec<Option<&str>> = new.iter().map(|f| f.trace_parent.as_deref()).collect();
        let KeyColumns {
            device_ids,
            sensor_ids,
            epochs,
            seqs,
        } = KeyColumns::of(&new);
        tx.execute(
            "WITH jobs AS (
                INSERT INTO analysis_jobs (frame_id, trace_parent, device_id, sensor_id, stream_epoch, seq)
                SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[]))
             INSERT INTO search_outbox (kind, ref_id)
             SELECT 'frame', id FROM unnest($1::int8[]) AS id WHERE (SELECT indexing FROM search_projection)",
            &[&ids, &traces, &device_ids, &sensor_ids, &epochs, &seqs],
        )
        .await?;
        notify(&tx, new.len()).await?;
    }
    tx.commit().await?;
    Ok((new.into_iter().map(|f| f.key.clone()).collect(), existing))
}

/// The careful path: one INSERT … ON CONFLICT DO NOTHING for the keys not stored yet, then the checksums of
/// what was skipped.
async fn store_by_insert(
    client: &mut tokio_postgres::Client,
    unique: &[&Frame],
    received_at: SystemTime,
) -> Result<Stored, StoreError> {
    let tx = client.transaction().await?;
    let mut existing = lock_and_check(&tx, unique).await?;
    let new: Vec<&Frame> = unique
        .iter()
        .filter(|f| !existing.contains_key(&f.key))
        .copied()
        .collect();
    raise_high_water(&tx, &new).await?;
    let inserted = insert_unique(&tx, &new, received_at).await?;
    if inserted.len() < new.len() {
        // Stored by a writer that does not take the stream locks (a release before them, during a
        // rolling upgrade): compare with what it stored.
        let skipped: Vec<&Frame> = new
            .iter()
            .filter(|f| !inserted.contains(&f.key))
            .copied()
            .collect();
        existing.extend(stored_checksums(&tx, &skipped).await?);
    }
    if !inserted.is_empty() {
        notify(&tx, inserted.len()).await?;
    }
    tx.commit().await?;
    Ok((inserted, existing))
}

/// Binary COPY of `frames` into `table` (shaped like `frames`), with the given ids or the table's defaults.
/// Public so that benchmarks measure exactly the COPY that ingest runs.
pub async fn copy_frames(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    frames: &[&Frame],
    ids: Option<&[i64]>,
    received_at: SystemTime,
) -> Result<(), StoreError> {
    const COLUMNS: &str = "device_id, sensor_id, stream_epoch, seq, captured_at, received_at, sample_rate_hz, \
                           channels, encoding, samples, samples_sha256, rms_dbfs, peak_dbfs, crest_factor";
    let mut types = vec![
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::INT4,
        Type::INT2,
        Type::TEXT,
        Type::BYTEA,
        Type::BYTEA,
        Type::FLOAT4,
        Type::FLOAT4,
        Type::FLOAT4,
    ];
    let statement = match ids {
        Some(_) => {
            types.insert(0, Type::INT8);
            format!("COPY {table} (id, {COLUMNS}) FROM STDIN BINARY")
        }
        None => format!("COPY {table} ({COLUMNS}) FROM STDIN BINARY"),
    };
    let sink = tx.copy_in(&statement).await?;
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for (i, f) in frames.iter().enumerate() {
        let rate = i32::try_from(f.sample_rate_hz).unwrap_or(i32::MAX);
        let channels = i16::try_from(f.channels).unwrap_or(i16::MAX);
        let (samples, encoding) = f.stored_samples();
        let digest: &[u8] = f.samples_sha256.as_slice();
        let mut row: Vec<&(dyn ToSql + Sync)> = vec![
            &f.key.device_id,
            &f.key.sensor_id,
            &f.key.stream_epoch,
            &f.key.seq,
            &f.captured_at,
            &received_at,
            &rate,
            &channels,
            &encoding,
            &samples,
            &digest,
            &f.level.rms_dbfs,
            &f.level.peak_dbfs,
            &f.level.crest_factor,
        ];
        if let Some(ids) = ids {
            row.insert(0, &ids[i]);
        }
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// One statement for the whole batch: arrays in, `unnest` into rows, conflicting keys skipped, and the jobs and
/// outbox rows of exactly the frames that were new.
async fn insert_unique(
    tx: &tokio_postgres::Transaction<'_>,
    frames: &[&Frame],
    received_at: SystemTime,
) -> Result<HashSet<FrameKey>, StoreError> {
    if frames.is_empty() {
        return Ok(HashSet::new());
    }
    let KeyColumns {
        device_ids,
        sensor_ids,
        epochs,
        seqs,
    } = KeyColumns::of(frames);
    let captured: Vec<SystemTime> = frames.iter().map(|f| f.captured_at).collect();
    let rates: Vec<i32> = frames
        .iter()
        .map(|f| i32::try_from(f.sample_rate_hz).unwrap_or(i32::MAX))
        .collect();
    let channels: Vec<i16> = frames
        .iter()
        .map(|f| i16::try_from(f.channels).unwrap_or(i16::MAX))
        .collect();
    let (samples, encodings): (Vec<&[u8]>, Vec<&str>) =
        frames.iter().map(|f| f.stored_samples()).unzip();
    let digests: Vec<&[u8]> = frames.iter().map(|f| f.samples_sha256.as_slice()).collect();
    let rms: Vec<f32> = frames.iter().map(|f| f.level.rms_dbfs).collect();
    let peak: Vec<f32> = frames.iter().map(|f| f.level.peak_dbfs).collect();
    let crest: Vec<f32> = frames.iter().map(|f| f.level.crest_factor).collect();
    let traces: Vec<Option<&str>> = frames.iter().map(|f| f.trace_parent.as_deref()).collect();
    let rows = tx
        .query(
            "WITH input AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::timestamptz[],
                                     $6::int4[], $7::int2[], $8::text[], $9::bytea[], $10::bytea[],
                                     $11::float4[], $12::float4[], $13::float4[], $15::text[])
                    AS t(device_id, sensor_id, stream_epoch, seq, captured_at, sample_rate_hz, channels,
                         encoding, samples, samples_sha256, rms_dbfs, peak_dbfs, crest_factor, trace_parent)
            ), inserted AS (
                INSERT INTO frames (device_id, sensor_id, stream_epoch, seq, captured_at, received_at,
                                    sample_rate_hz, channels, encoding, samples, samples_sha256,
                                    rms_dbfs, peak_dbfs, crest_factor)
                SELECT device_id, sensor_id, stream_epoch, seq, captured_at, $14, sample_rate_hz, channels,
                       encoding, samples, samples_sha256, rms_dbfs, peak_dbfs, crest_factor
                FROM input
                ON CONFLICT ON CONSTRAINT frames_key DO NOTHING
                RETURNING id, device_id, sensor_id, stream_epoch, seq
            ), jobs AS (
                INSERT INTO analysis_jobs (frame_id, trace_parent, device_id, sensor_id, stream_epoch, seq)
                SELECT i.id, t.trace_parent, i.device_id, i.sensor_id, i.stream_epoch, i.seq FROM inserted i
                JOIN input t USING (device_id, sensor_id, stream_epoch, seq)
            ), outbox AS (
                INSERT INTO search_outbox (kind, ref_id) SELECT 'frame', id FROM inserted
                WHERE (SELECT indexing FROM search_projection)
            )
            SELECT device_id, sensor_id, stream_epoch, seq FROM inserted",
            &[
                &device_ids,
                &sensor_ids,
                &epochs,
                &seqs,
                &captured,
                &rates,
                &channels,
                &encodings,
                &samples,
                &digests,
                &rms,
                &peak,
                &crest,
                &received_at,
                &traces,
            ],
        )
        .await?;
    Ok(rows.iter().map(key_of_row).collect::<Result<_, _>>()?)
}

/// Locks the batch's sensor streams, then finds which of its keys are already stored, in any partition.
///
/// Looking a key up costs one index probe per partition of `frames`, so only keys that can be stored are
/// looked up: a stream's high-water mark (`frame_streams.max_seq`, raised in every transaction that stores
/// its frames, under the same lock) bounds the sequence numbers it has stored. A live stream's new frames
/// are above it and cost nothing; resends after a reconnect, and a gateway that reuses numbers, are at or
/// below it and are looked up.
async fn lock_and_check(
    tx: &tokio_postgres::Transaction<'_>,
    frames: &[&Frame],
) -> Result<HashMap<FrameKey, [u8; 32]>, StoreError> {
    lock_streams(tx, frames).await?;
    let maybe_stored = at_or_below_high_water(tx, frames).await?;
    if maybe_stored.is_empty() {
        return Ok(HashMap::new());
    }
    stored_checksums(tx, &maybe_stored).await
}

/// The frames whose seq is at or below their stream's high-water mark: the only ones that may be stored.
async fn at_or_below_high_water<'a>(
    tx: &tokio_postgres::Transaction<'_>,
    frames: &[&'a Frame],
) -> Result<Vec<&'a Frame>, StoreError> {
    let KeyColumns {
        device_ids,
        sensor_ids,
        epochs,
        seqs,
    } = KeyColumns::of(frames);
    let rows = tx
        .query(
            "SELECT k.n FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) WITH ORDINALITY
                 AS k(device_id, sensor_id, stream_epoch, seq, n)
             JOIN frame_streams s USING (device_id, sensor_id, stream_epoch)
             WHERE k.seq <= s.max_seq",
            &[&device_ids, &sensor_ids, &epochs, &seqs],
        )
        .await?;
    let mut maybe_stored = Vec::with_capacity(rows.len());
    for row in &rows {
        // Ordinals count from 1 over the arrays built from `frames`.
        let n: i64 = row.try_get(0)?;
        if let Some(frame) = usize::try_from(n - 1).ok().and_then(|i| frames.get(i)) {
            maybe_stored.push(*frame);
        }
    }
    Ok(maybe_stored)
}

/// Raises the high-water marks of the streams of `frames`, which this transaction stores.
async fn raise_high_water(
    tx: &tokio_postgres::Transaction<'_>,
    frames: &[&Frame],
) -> Result<(), StoreError> {
    if frames.is_empty() {
        return Ok(());
    }
    let KeyColumns {
        device_ids,
        sensor_ids,
        epochs,
        seqs,
    } = KeyColumns::of(frames);
    let captured: Vec<SystemTime> = frames.iter().map(|f| f.captured_at).collect();
    tx.execute(
        "INSERT INTO frame_streams AS s (device_id, sensor_id, stream_epoch, max_seq, last_captured_at)
         SELECT device_id, sensor_id, stream_epoch, max(seq), max(captured_at)
         FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::timestamptz[])
             AS k(device_id, sensor_id, stream_epoch, seq, captured_at)
         GROUP BY device_id, sensor_id, stream_epoch
         ORDER BY device_id, sensor_id, stream_epoch
         ON CONFLICT (device_id, sensor_id, stream_epoch) DO UPDATE SET
             max_seq = greatest(s.max_seq, EXCLUDED.max_seq),
             last_captured_at = greatest(s.last_captured_at, EXCLUDED.last_captured_at)",
        &[&device_ids, &sensor_ids, &epochs, &seqs, &captured],
    )
    .await?;
    Ok(())
}

/// Namespace of the stream locks among advisory locks (the two-key form; the migration lock uses the other).
const STREAM_LOCK_CLASS: i32 = 0x6175_7363;

/// Serialises the writers of each (device, sensor) for the rest of the transaction. `frames` is partitioned
/// by capture time and PostgreSQL enforces uniqueness only within a partition, so a frame key is kept unique
/// across partitions by checking it in every partition and storing it under this lock: two writers of the
/// same key, with different capture times, cannot both find it absent. Locks are taken in one global order,
/// so two batches that share sensors wait for each other instead of deadlocking.
async fn lock_streams(
    tx: &tokio_postgres::Transaction<'_>,
    frames: &[&Frame],
) -> Result<(), StoreError> {
    let mut keys: Vec<i32> = frames
        .iter()
        .map(|f| stream_lock_key(&f.key.device_id, &f.key.sensor_id))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int4[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
        &[&STREAM_LOCK_CLASS, &keys],
    )
    .await?;
    Ok(())
}

/// A stable 32-bit digest of a sensor stream: the same in every replica and release. Two streams that share
/// a digest only wait for each other.
fn stream_lock_key(device_id: &str, sensor_id: &str) -> i32 {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(device_id.as_bytes())
        .chain_update([0u8])
        .chain_update(sensor_id.as_bytes())
        .finalize();
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The stored checksums of frames whose keys already existed, in whatever partition they were stored. One
/// range scan per stream and partition (a batch's keys of one stream are mostly consecutive numbers), which
/// stays cheap however many partitions there are; the range's other rows are filtered out here.
async fn stored_checksums(
    tx: &tokio_postgres::Transaction<'_>,
    frames: &[&Frame],
) -> Result<HashMap<FrameKey, [u8; 32]>, StoreError> {
    let mut ranges: HashMap<(&str, &str, i64), (i64, i64)> = HashMap::new();
    for f in frames {
        let range = ranges
            .entry((
                f.key.device_id.as_str(),
                f.key.sensor_id.as_str(),
                f.key.stream_epoch,
            ))
            .or_insert((f.key.seq, f.key.seq));
        range.0 = range.0.min(f.key.seq);
        range.1 = range.1.max(f.key.seq);
    }
    let (mut devices, mut sensors, mut epochs, mut lows, mut highs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((device, sensor, epoch), (low, high)) in &ranges {
        devices.push(*device);
        sensors.push(*sensor);
        epochs.push(*epoch);
        lows.push(*low);
        highs.push(*high);
    }
    let rows = tx
        .query(
            "SELECT f.device_id, f.sensor_id, f.stream_epoch, f.seq, f.samples_sha256
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[])
                 AS k(device_id, sensor_id, stream_epoch, low, high)
             CROSS JOIN LATERAL (
                 SELECT device_id, sensor_id, stream_epoch, seq, samples_sha256 FROM frames f
                 WHERE f.device_id = k.device_id AND f.sensor_id = k.sensor_id
                   AND f.stream_epoch = k.stream_epoch AND f.seq BETWEEN k.low AND k.high
             ) f",
            &[&devices, &sensors, &epochs, &lows, &highs],
        )
        .await?;
    let wanted: HashSet<&FrameKey> = frames.iter().map(|f| &f.key).collect();
    let mut out = HashMap::with_capacity(frames.len());
    for row in &rows {
        let key = key_of_row(row)?;
        if !wanted.contains(&key) {
            continue;
        }
        let digest: &[u8] = row.try_get(4)?;
        // The column has a length check; anything else cannot be our digest and counts as a conflict.
        if let Ok(digest) = <[u8; 32]>::try_from(digest) {
            out.insert(key, digest);
        }
    }
    Ok(out)
}

/// A batch's keys as one array per column, the shape `unnest` takes.
struct KeyColumns<'a> {
    device_ids: Vec<&'a str>,
    sensor_ids: Vec<&'a str>,
    epochs: Vec<i64>,
    seqs: Vec<i64>,
}

impl<'a> KeyColumns<'a> {
    fn of(frames: &[&'a Frame]) -> Self {
        Self {
            device_ids: frames.iter().map(|f| f.key.device_id.as_str()).collect(),
            sensor_ids: frames.iter().map(|f| f.key.sensor_id.as_str()).collect(),
            epochs: frames.iter().map(|f| f.key.stream_epoch).collect(),
            seqs: frames.iter().map(|f| f.key.seq).collect(),
        }
    }
}

/// Reads a key from a row whose first four columns are device_id, sensor_id, stream_epoch, seq.
fn key_of_row(row: &tokio_postgres::Row) -> Result<FrameKey, tokio_postgres::Error> {
    Ok(FrameKey {
        device_id: row.try_get(0)?,
        sensor_id: row.try_get(1)?,
        stream_epoch: row.try_get(2)?,
        seq: row.try_get(3)?,
    })
}

/// The one wake-up per transaction that stored frames.
async fn notify(tx: &tokio_postgres::Transaction<'_>, new_frames: usize) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&FRAMES_CHANNEL, &new_frames.to_string()],
    )
    .await?;
    Ok(())
}

/// The audio of a stored frame, as the analysis service needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAudio {
    pub sample_rate_hz: u32,
    pub channels: u16,
    pub encoding: auscult_frame::SampleEncoding,
    pub samples: Vec<u8>,
}

/// The audio of the frames with these ids; ids without a frame are absent from the map.
pub async fn frame_audio(
    client: &impl tokio_postgres::GenericClient,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, StoredAudio>, StoreError> {
    let rows = client
        .query(
            "SELECT id, sample_rate_hz, channels, encoding, samples FROM frames WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    let mut audio = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let sample_rate: i32 = row.try_get(1)?;
        let channels: i16 = row.try_get(2)?;
        audio.insert(
            row.try_get(0)?,
            stored_audio(sample_rate, channels, row.try_get(3)?, row.try_get(4)?)?,
        );
    }
    Ok(audio)
}

/// A row's audio as it was received: FLAC-stored frames are decoded (about 0.2 ms per second of audio).
pub(crate) fn stored_audio(
    sample_rate: i32,
    channels: i16,
    encoding: &str,
    samples: Vec<u8>,
) -> Result<StoredAudio, StoreError> {
    let sample_rate_hz = u32::try_from(sample_rate).unwrap_or_default();
    let channels = u16::try_from(channels).unwrap_or_default();
    let (encoding, samples) = match encoding {
        "flac" => (
            auscult_frame::SampleEncoding::PcmS16le,
            auscult_frame::flac::decode_to_pcm_s16le(&samples, channels, sample_rate_hz)?,
        ),
        "f32le" => (auscult_frame::SampleEncoding::F32le, samples),
        // The schema admits no other encoding.
        _ => (auscult_frame::SampleEncoding::PcmS16le, samples),
    };
    Ok(StoredAudio {
        sample_rate_hz,
        channels,
        encoding,
        samples,
    })
}
