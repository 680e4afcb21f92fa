//! auscult's own binaries as child processes: started with settings in their environment, their output kept in
//! a log file, killed when dropped.

use std::{
    ffi::OsStr,
    fs::File,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tempfile::NamedTempFile;

use crate::TestkitError;

/// The path of a binary built from this workspace, found next to the running executable (tests run from
/// `target/<profile>/deps`, binaries live in `target/<profile>`).
pub fn workspace_binary(name: &str) -> Result<PathBuf, TestkitError> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(TestkitError::BinaryMissing {
            name: name.to_owned(),
            path: path.display().to_string(),
        })
    }
}

/// A running service binary, killed on drop.
#[derive(Debug)]
pub struct ServiceProcess {
    name: String,
    child: Child,
    log: NamedTempFile,
}

impl ServiceProcess {
    /// Starts workspace binary `name` with `args` and extra environment `envs`; stdout and stderr go to a log file.
    pub fn spawn<I, K, V>(name: &str, args: &[&str], envs: I) -> Result<Self, TestkitError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let path = workspace_binary(name)?;
        let log = NamedTempFile::new()?;
        let child = Command::new(&path)
            .args(args)
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.reopen()?))
            .stderr(Stdio::from(File::options().append(true).open(log.path())?))
            .spawn()?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// SIGKILL: the process gets no chance to clean up, as in a power cut or an OOM kill.
    pub fn kill(&mut self) -> Result<ExitStatus, TestkitError> {
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// SIGTERM, then waits up to `timeout` for a graceful exit; `None` if it did not exit in time.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, TestkitError> {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        nix::sys::signal::kill(pid, Signal::SIGTERM).map_err(|e| TestkitError::Command {
            command: format!("kill -TERM {pid}"),
            detail: e.to_string(),
        })?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(None)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log());
        }
    }
}
