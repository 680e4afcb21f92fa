//! A throwaway server speaking the Elasticsearch API: `osmem-server`, an in-memory
//! OpenSearch-compatible server from PyPI (`pip install osmem-server`). Elasticsearch itself cannot run
//! on the machines the tests run on; the product's deploy files use the real one.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{TestkitError, free_port, wait_for};

/// A running search server on 127.0.0.1; killed on drop. Its data lives in memory only, so
/// [`SearchServer::restart`] comes back empty, like a cluster that lost everything.
#[derive(Debug)]
pub struct SearchServer {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl SearchServer {
    pub async fn start() -> Result<Self, TestkitError> {
        let mut server = Self {
            binary: osmem_binary()?,
            port: free_port()?,
            child: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server at once (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts an empty server on the same port.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.kill();
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<(), TestkitError> {
        let child = Command::new(&self.binary)
            .args([
                "-addr",
                &format!("127.0.0.1:{}", self.port),
                "-no-stdin-watch",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| TestkitError::Command {
                command: self.binary.display().to_string(),
                detail: e.to_string(),
            })?;
        self.child = Some(child);
        let address = format!("127.0.0.1:{}", self.port);
        let up = wait_for(Duration::from_secs(20), || {
            let address = address.clone();
            async move { tokio::net::TcpStream::connect(address).await.ok().map(drop) }
        })
        .await;
        up.ok_or_else(|| TestkitError::Command {
            command: self.binary.display().to_string(),
            detail: format!("not listening on {address} after 20 s"),
        })
    }
}

impl Drop for SearchServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `AUSCULT_OSMEM_BIN`, else the binary inside the installed `osmem_server` Python package.
pub fn osmem_binary() -> Result<PathBuf, TestkitError> {
    if let Some(path) = std::env::var_os("AUSCULT_OSMEM_BIN") {
        return Ok(PathBuf::from(path));
    }
    let missing = |detail: String| TestkitError::Command {
        command: "osmem-server".into(),
        detail: format!(
            "{detail}; install it with `pip install osmem-server` or set AUSCULT_OSMEM_BIN"
        ),
    };
    let output = Command::new("python3")
        .args([
            "-c",
            "import osmem_server, os; print(os.path.join(os.path.dirname(osmem_server.__file__), 'bin', 'osmem-server'))",
        ])
        .output()
        .map_err(|e| missing(format!("python3 not runnable: {e}")))?;
    if !output.status.success() {
        return Err(missing("the osmem_server package is not installed".into()));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !path.exists() {
        return Err(missing(format!("{} does not exist", path.display())));
    }
    Ok(path)
}
