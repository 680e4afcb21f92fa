//! A throwaway PostgreSQL cluster: `initdb` into a temporary directory, a free port, fsync on, stopped and
//! deleted on drop.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use tempfile::TempDir;
use tracing::{debug, warn};

use crate::{TestkitError, free_port};

/// A running PostgreSQL server owned by this value.
#[derive(Debug)]
pub struct PostgresServer {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    /// `initdb` refuses to run as root, so as root everything runs as this user.
    run_as: Option<String>,
    /// Server options beyond the common ones (a standby's name, say), kept for restarts.
    extra_options: String,
}

impl PostgresServer {
    /// Creates and starts a cluster. Blocks for about a second; call it from `spawn_blocking` in async code
    /// that must stay responsive.
    pub fn start() -> Result<Self, TestkitError> {
        let bin = find_bin_dir()?;
        let run_as = nix::unistd::geteuid()
            .is_root()
            .then(|| "postgres".to_owned());
        let dir = tempfile::Builder::new().prefix("auscult-pg-").tempdir()?;
        if let Some(user) = &run_as {
            chown_to(dir.path(), user)?;
        }
        let data = dir.path().join("data");
        run(
            &bin,
            run_as.as_deref(),
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                // Only skips syncing initdb's own files; the server below runs with fsync on.
                "--no-sync".as_ref(),
            ],
        )?;
        Self::launch(dir, bin, run_as, String::new())
    }

    /// Creates a hot standby of `primary` with `pg_basebackup` (streaming replication, recovery settings
    /// written) and starts it with `cluster_name` = `name`, the name the primary's
    /// `synchronous_standby_names` refers to.
    pub fn start_standby(primary: &Self, name: &str) -> Result<Self, TestkitError> {
        let dir = tempfile::Builder::new().prefix("auscult-pg-").tempdir()?;
        if let Some(user) = &primary.run_as {
            chown_to(dir.path(), user)?;
        }
        let data = dir.path().join("data");
        let port = primary.port.to_string();
        run(
            &primary.bin,
            primary.run_as.as_deref(),
            "pg_basebackup",
            &[
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "--write-recovery-conf".as_ref(),
                "--wal-method=stream".as_ref(),
                "--checkpoint=fast".as_ref(),
            ],
        )?;
        Self::launch(
            dir,
            primary.bin.clone(),
            primary.run_as.clone(),
            format!(" -c cluster_name={name} -c hot_standby=on"),
        )
    }

    /// Starts the cluster in `dir` on a free port (retrying on another if one is taken meanwhile).
    fn launch(
        dir: TempDir,
        bin: PathBuf,
        run_as: Option<String>,
        extra_options: String,
    ) -> Result<Self, TestkitError> {
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            match pg_ctl_start(&bin, run_as.as_deref(), dir.path(), port, &extra_options) {
                Ok(()) => {
                    debug!(port, "throwaway postgres started");
                    return Ok(Self {
                        dir,
                        bin,
                        port,
                        run_as,
                        extra_options,
                    });
                }
                Err(e) => {
                    let tail =
                        std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                    warn!(
                        port,
                        "postgres did not start, retrying on another port: {e}\n{tail}"
                    );
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| TestkitError::Command {
            command: "pg_ctl start".into(),
            detail: "no attempt made".into(),
        }))
    }

    /// Stops the server the hard way, as a crash or a lost machine would (its files stay).
    pub fn stop_immediately(&self) {
        self.stop();
    }

    /// Starts a stopped server again, on the same port and with the same settings.
    pub fn restart(&self) -> Result<(), TestkitError> {
        pg_ctl_start(
            &self.bin,
            self.run_as.as_deref(),
            self.dir.path(),
            self.port,
            &self.extra_options,
        )
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The folder of the PostgreSQL server programs this cluster runs on.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The operating-system user the server runs as when it is not the current one (as root: `postgres`).
    pub fn os_user(&self) -> Option<&str> {
        self.run_as.as_deref()
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for the `postgres` database as superuser `postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// A connection URL for database `database`.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server the hard way, as a crash would: for tests of recovery. [`Drop`] does the same.
    fn stop(&self) {
        let data = self.dir.path().join("data");
        let stopped = run(
            &self.bin,
            self.run_as.as_deref(),
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-w".as_ref(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
            ],
        );
        if let Err(e) = stopped {
            warn!("could not stop throwaway postgres: {e}");
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `pg_ctl start` of the cluster under `dir` (data in `dir/data`, log in `dir/server.log`) on `port`,
/// with fsync on.
fn pg_ctl_start(
    bin: &Path,
    run_as: Option<&str>,
    dir: &Path,
    port: u16,
    extra_options: &str,
) -> Result<(), TestkitError> {
    let options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=on \
         -c max_connections=300 -c shared_buffers=256MB -c wal_buffers=64MB -c max_wal_size=4GB{extra_options}",
        dir.display()
    );
    let (data, log) = (dir.join("data"), dir.join("server.log"));
    run(
        bin,
        run_as,
        "pg_ctl",
        &[
            "start".as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            "60".as_ref(),
            "-D".as_ref(),
            data.as_os_str(),
            "-l".as_ref(),
            log.as_os_str(),
            "-o".as_ref(),
            options.as_ref(),
        ],
    )?;
    Ok(())
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb`, or `$AUSCULT_PG_BIN`.
pub fn find_bin_dir() -> Result<PathBuf, TestkitError> {
    if let Some(dir) = std::env::var_os("AUSCULT_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map_err(|_| TestkitError::PostgresNotInstalled(root.display().to_string()))?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| TestkitError::PostgresNotInstalled(root.display().to_string()))
}

fn chown_to(path: &Path, user: &str) -> Result<(), TestkitError> {
    let found = nix::unistd::User::from_name(user).map_err(|e| TestkitError::Command {
        command: format!("look up user {user}"),
        detail: e.to_string(),
    })?;
    let user = found.ok_or_else(|| TestkitError::Command {
        command: format!("look up user {user}"),
        detail: "no such user (the postgresql package creates it)".into(),
    })?;
    std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
    Ok(())
}

fn run(
    bin: &Path,
    run_as: Option<&str>,
    program: &str,
    args: &[&std::ffi::OsStr],
) -> Result<Output, TestkitError> {
    let program_path = bin.join(program);
    let mut command = match run_as {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(&program_path);
            c
        }
        None => Command::new(&program_path),
    };
    command.args(args);
    let output = command.output().map_err(|e| TestkitError::Command {
        command: program_path.display().to_string(),
        detail: e.to_string(),
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(TestkitError::Command {
            command: program.to_owned(),
            detail: format!(
                "{}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}
