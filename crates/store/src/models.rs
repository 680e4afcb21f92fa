//! The model registry: publish model files, list them, activate one. Services follow the active version; the
//! activation NOTIFY on [`MODELS_CHANNEL`] tells them to look.

use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;

use crate::StoreError;

/// Channel notified with the version whenever a model is activated.
pub const MODELS_CHANNEL: &str = "auscult_models";

/// The most a model file may weigh; the shipped model is a few MB.
pub const MAX_MODEL_BYTES: usize = 256 << 20;

/// A registered model, without its file.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRecord {
    pub version: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub summary: serde_json::Value,
    pub published_at: SystemTime,
    pub activated_at: Option<SystemTime>,
    pub active: bool,
}

/// What publishing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    Published,
    /// The same version with the same bytes was already there.
    AlreadyPublished,
}

/// Stores a model file under `version`. Publishing again with identical bytes is a no-op; different bytes
/// under a published version are refused, so a version always names one file.
pub async fn publish_model(
    client: &impl GenericClient,
    version: &str,
    file: &[u8],
    summary: &serde_json::Value,
) -> Result<PublishOutcome, StoreError> {
    if version.is_empty() || version.len() > 128 {
        return Err(StoreError::InvalidModel(format!(
            "version must be 1..=128 bytes, got {}",
            version.len()
        )));
    }
    if file.len() > MAX_MODEL_BYTES {
        return Err(StoreError::InvalidModel(format!(
            "{} bytes is more than the {MAX_MODEL_BYTES} a model file may hold",
            file.len()
        )));
    }
    let sha256 = hex::encode(Sha256::digest(file));
    let summary = summary.to_string();
    let inserted = client
        .execute(
            "INSERT INTO models (version, sha256, file, summary) VALUES ($1, $2, $3, $4::text::jsonb)
             ON CONFLICT (version) DO NOTHING",
            &[&version, &sha256, &file, &summary],
        )
        .await?;
    if inserted == 1 {
        return Ok(PublishOutcome::Published);
    }
    let existing: String = client
        .query_one("SELECT sha256 FROM models WHERE version = $1", &[&version])
        .await?
        .try_get(0)?;
    if existing == sha256 {
        Ok(PublishOutcome::AlreadyPublished)
    } else {
        Err(StoreError::ModelVersionConflict(version.to_owned()))
    }
}

/// Every registered model, newest first.
pub async fn list_models(client: &impl GenericClient) -> Result<Vec<ModelRecord>, StoreError> {
    let rows = client
        .query(
            "SELECT version, sha256, octet_length(file)::bigint, summary::text, published_at, activated_at, active
             FROM models ORDER BY published_at DESC, version DESC",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let summary: String = row.try_get(3)?;
            Ok(ModelRecord {
                version: row.try_get(0)?,
                sha256: row.try_get(1)?,
                size_bytes: row.try_get(2)?,
                summary: serde_json::from_str(&summary).unwrap_or(serde_json::Value::Null),
                published_at: row.try_get(4)?,
                activated_at: row.try_get(5)?,
                active: row.try_get(6)?,
            })
        })
        .collect()
}

/// Makes `version` the active model (deactivating the previous one) and notifies [`MODELS_CHANNEL`], in one
/// transaction. Activating an older version is the rollback.
pub async fn activate_model(
    client: &mut tokio_postgres::Client,
    version: &str,
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    let exists = tx
        .query_opt(
            "SELECT 1 FROM models WHERE version = $1 FOR UPDATE",
            &[&version],
        )
        .await?;
    if exists.is_none() {
        return Err(StoreError::UnknownModel(version.to_owned()));
    }
    tx.execute(
        "UPDATE models SET active = false WHERE active AND version <> $1",
        &[&version],
    )
    .await?;
    tx.execute(
        "UPDATE models SET active = true, activated_at = now() WHERE version = $1",
        &[&version],
    )
    .await?;
    tx.execute("SELECT pg_notify($1, $2)", &[&MODELS_CHANNEL, &version])
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The active model's version and file, if one is active.
pub async fn active_model(
    client: &impl GenericClient,
) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    let row = client
        .query_opt("SELECT version, file FROM models WHERE active", &[])
        .await?;
    row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .transpose()
}
