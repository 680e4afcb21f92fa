//! How durable a COMMIT on this connection is: whether the server is writable at all, and whether a
//! commit waits for a synchronous standby, so that what ingest acknowledges survives losing the primary.

use tokio_postgres::GenericClient;

use crate::StoreError;

/// The settings that decide what a returned COMMIT means, as this session sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitDurability {
    /// A standby (in recovery): nothing can be written.
    pub read_only: bool,
    /// `synchronous_commit` of this session.
    pub synchronous_commit: String,
    /// `synchronous_standby_names` of the server.
    pub synchronous_standby_names: String,
}

impl CommitDurability {
    /// Whether a COMMIT returns only once a synchronous standby has the transaction on disk (or applied).
    pub fn survives_primary_loss(&self) -> bool {
        !self.synchronous_standby_names.trim().is_empty()
            && matches!(
                self.synchronous_commit.as_str(),
                "on" | "remote_write" | "remote_apply"
            )
    }
}

impl std::fmt::Display for CommitDurability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let standbys = if self.synchronous_standby_names.trim().is_empty() {
            "(none)"
        } else {
            self.synchronous_standby_names.as_str()
        };
        write!(
            f,
            "synchronous_commit = {}, synchronous_standby_names = {standbys}",
            self.synchronous_commit
        )
    }
}

/// Reads the [`CommitDurability`] of `client`'s session.
pub async fn commit_durability(
    client: &impl GenericClient,
) -> Result<CommitDurability, StoreError> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('synchronous_commit'),
                    current_setting('synchronous_standby_names')",
            &[],
        )
        .await?;
    Ok(CommitDurability {
        read_only: row.try_get(0)?,
        synchronous_commit: row.try_get(1)?,
        synchronous_standby_names: row.try_get(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::CommitDurability;

    fn durability(commit: &str, standbys: &str) -> CommitDurability {
        CommitDurability {
            read_only: false,
            synchronous_commit: commit.into(),
            synchronous_standby_names: standbys.into(),
        }
    }

    #[test]
    fn only_a_commit_that_waits_for_a_named_standby_survives_the_primary() {
        assert!(durability("on", "FIRST 1 (standby)").survives_primary_loss());
        assert!(durability("remote_apply", "ANY 1 (*)").survives_primary_loss());
        assert!(!durability("on", "").survives_primary_loss());
        assert!(!durability("local", "FIRST 1 (standby)").survives_primary_loss());
        assert!(!durability("off", "FIRST 1 (standby)").survives_primary_loss());
    }
}
