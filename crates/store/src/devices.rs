//! The device registry and bearer-token authentication.

use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;

use crate::StoreError;

/// Prefix that makes a leaked token recognisable to secret scanners and to people.
const TOKEN_PREFIX: &str = "auscult_";

/// A device as listed by `auscult device list`.
#[derive(Debug, Clone)]
pub struct DeviceSummary {
    pub device_id: String,
    pub description: String,
    pub created_at: std::time::SystemTime,
    pub active_tokens: i64,
}

/// Longest device description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;

/// Registers a device and returns its first token. The token is shown once: only its digest is stored.
pub async fn add_device(
    client: &mut tokio_postgres::Client,
    device_id: &str,
    description: &str,
) -> Result<String, StoreError> {
    // The same alphabet as the frames the device will send, or none of them could be stored.
    auscult_frame::check_identifier(device_id).map_err(StoreError::InvalidDeviceId)?;
    if description.len() > MAX_DESCRIPTION_BYTES || description.contains('\0') {
        return Err(StoreError::InvalidDescription(format!(
            "must be at most {MAX_DESCRIPTION_BYTES} bytes without NUL characters"
        )));
    }
    let tx = client.transaction().await?;
    let inserted = tx
        .execute(
            "INSERT INTO devices (device_id, description) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&device_id, &description],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::DeviceExists(device_id.to_owned()));
    }
    let token = insert_token(&tx, device_id).await?;
    tx.commit().await?;
    Ok(token)
}

/// Issues an additional token for an existing device (for rotation: issue, deploy, then revoke the old ones).
pub async fn issue_token(
    client: &mut tokio_postgres::Client,
    device_id: &str,
) -> Result<String, StoreError> {
    let tx = client.transaction().await?;
    let exists = tx
        .query_opt(
            "SELECT 1 FROM devices WHERE device_id = $1 FOR UPDATE",
            &[&device_id],
        )
        .await?;
    if exists.is_none() {
        return Err(StoreError::UnknownDevice(device_id.to_owned()));
    }
    let token = insert_token(&tx, device_id).await?;
    tx.commit().await?;
    Ok(token)
}

/// Revokes every active token of a device; returns how many were revoked.
pub async fn revoke_tokens(
    client: &impl GenericClient,
    device_id: &str,
) -> Result<u64, StoreError> {
    let exists = client
        .query_opt("SELECT 1 FROM devices WHERE device_id = $1", &[&device_id])
        .await?;
    if exists.is_none() {
        return Err(StoreError::UnknownDevice(device_id.to_owned()));
    }
    Ok(client
        .execute(
            "UPDATE device_tokens SET revoked_at = now() WHERE device_id = $1 AND revoked_at IS NULL",
            &[&device_id],
        )
        .await?)
}

/// Every registered device with its number of active tokens.
pub async fn list_devices(client: &impl GenericClient) -> Result<Vec<DeviceSummary>, StoreError> {
    let rows = client
        .query(
            "SELECT d.device_id, d.description, d.created_at,
                    count(t.token_sha256) FILTER (WHERE t.revoked_at IS NULL)
             FROM devices d LEFT JOIN device_tokens t USING (device_id)
             GROUP BY d.device_id ORDER BY d.device_id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(DeviceSummary {
                device_id: row.try_get(0)?,
                description: row.try_get(1)?,
                created_at: row.try_get(2)?,
                active_tokens: row.try_get(3)?,
            })
        })
        .collect()
}

/// The device a bearer token belongs to, or `None` for an unknown or revoked token.
pub async fn authenticate(
    client: &impl GenericClient,
    token: &str,
) -> Result<Option<String>, StoreError> {
    let digest = token_digest(token);
    let row = client
        .query_opt(
            "SELECT device_id FROM device_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL",
            &[&digest.as_slice()],
        )
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

async fn insert_token(client: &impl GenericClient, device_id: &str) -> Result<String, StoreError> {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
    let digest = token_digest(&token);
    client
        .execute(
            "INSERT INTO device_tokens (token_sha256, device_id) VALUES ($1, $2)",
            &[&digest.as_slice(), &device_id],
        )
        .await?;
    Ok(token)
}

/// What is stored of a token (its SHA-256), and what a service may keep of one in memory.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Of the given token digests, those that no longer admit their device (revoked or removed).
pub async fn tokens_no_longer_valid(
    client: &impl GenericClient,
    digests: &[[u8; 32]],
) -> Result<Vec<[u8; 32]>, StoreError> {
    let slices: Vec<&[u8]> = digests.iter().map(<[u8; 32]>::as_slice).collect();
    let rows = client
        .query(
            "SELECT d FROM unnest($1::bytea[]) AS d
             WHERE NOT EXISTS (
                 SELECT 1 FROM device_tokens WHERE token_sha256 = d AND revoked_at IS NULL)",
            &[&slices],
        )
        .await?;
    let mut invalid = Vec::with_capacity(rows.len());
    for row in &rows {
        let bytes: &[u8] = row.try_get(0)?;
        invalid.extend(digests.iter().filter(|d| d.as_slice() == bytes));
    }
    Ok(invalid)
}
