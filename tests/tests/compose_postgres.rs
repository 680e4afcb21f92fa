//! The scripts docker-compose.yml runs for PostgreSQL, run here as local processes: the primary's
//! first-start script (replication role, slot, `pg_hba` rule) against a real cluster configured as the
//! compose file configures it, then the standby's entry point, which copies the primary and starts a hot
//! standby named `standby` — the first time, and again as a recreated container. The two programs of the
//! postgres image the entry point calls are stood in for by shims: `gosu` (run as the postgres user) and
//! `docker-entrypoint.sh` (which, for an initialised data directory, runs postgres).

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use auscult_e2e::{start_postgres, wait_for_count};
use auscult_testkit::{free_port, wait_for};
use tokio_postgres::NoTls;

const REPLICATION_PASSWORD: &str = "test-replication-secret";

async fn connect(url: &str) -> Option<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.ok()?;
    tokio::spawn(connection);
    Some(client)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script(name: &str) -> PathBuf {
    repo().join("deploy/compose/postgres").join(name)
}

/// The value docker-compose.yml gives the primary's `PGOPTIONS`.
fn compose_primary_pgoptions() -> String {
    let compose = std::fs::read_to_string(repo().join("docker-compose.yml")).expect("compose file");
    compose
        .lines()
        .find_map(|line| line.trim().strip_prefix("PGOPTIONS:"))
        .map(|value| value.trim().to_owned())
        .expect("docker-compose.yml sets PGOPTIONS for the primary")
}

fn write_executable(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write shim");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod shim");
}

/// `command` run as `user` when there is one (as root: the postgres user).
fn as_user(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// The standby's container: its entry point running, stopped (server included) when dropped.
struct StandbyContainer {
    child: Child,
    pg_ctl: PathBuf,
    data: PathBuf,
    user: Option<String>,
}

impl StandbyContainer {
    fn start(entry: &mut Command, pg_ctl: PathBuf, data: PathBuf, user: Option<String>) -> Self {
        let child = entry.spawn().expect("run standby.sh");
        Self {
            child,
            pg_ctl,
            data,
            user,
        }
    }
}

impl Drop for StandbyContainer {
    fn drop(&mut self) {
        let _ = as_user(self.user.as_deref(), &self.pg_ctl)
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(&self.data)
            .output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn streams_synchronously(admin: &tokio_postgres::Client) -> bool {
    wait_for_count(
        admin,
        "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s
           ON s.active_pid = r.pid
         WHERE r.application_name = 'standby' AND r.sync_state = 'sync'
           AND s.slot_name = 'standby'",
        Duration::from_secs(60),
        |n| n == 1,
    )
    .await
}

#[tokio::test]
async fn the_compose_scripts_make_a_synchronous_hot_standby() {
    let primary = start_postgres().await;
    let user = primary.os_user().map(str::to_owned);
    let path = format!(
        "{}:{}",
        primary.bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let admin = connect(&primary.url()).await.expect("primary");
    // The compose file starts the primary — its first-start set-up included — with synchronous
    // replication to a standby that does not exist yet, and requires the replication password.
    let hba_path = primary.data_dir().join("pg_hba.conf");
    let hba = std::fs::read_to_string(&hba_path).expect("pg_hba");
    std::fs::write(
        &hba_path,
        format!("host replication replicator 127.0.0.1/32 scram-sha-256\n{hba}"),
    )
    .expect("require the replication password");
    for statement in [
        "ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (standby)'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(statement).await.expect(statement);
    }

    // First start of the primary: the image runs the script as the postgres user, with the container's
    // environment. Bounded: a commit waiting for the missing standby would hang here. The script is
    // copied where the postgres user can read it (the checkout may be private to its owner).
    let init_dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(init_dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let init_script = init_dir.path().join("primary-init.sh");
    std::fs::copy(script("primary-init.sh"), &init_script).expect("copy primary-init.sh");
    std::fs::set_permissions(&init_script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let output = as_user(user.as_deref(), Path::new("timeout"))
        .args(["60", "bash"])
        .arg(&init_script)
        .env("PATH", &path)
        .env("PGDATA", primary.data_dir())
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", primary.port().to_string())
        .env("PGOPTIONS", compose_primary_pgoptions())
        .env("POSTGRES_USER", "postgres")
        .env("POSTGRES_DB", "postgres")
        .env("REPLICATION_PASSWORD", REPLICATION_PASSWORD)
        .output()
        .expect("run primary-init.sh");
    assert!(
        output.status.success(),
        "primary-init.sh failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let hba = std::fs::read_to_string(&hba_path).expect("pg_hba");
    assert!(hba.contains("host replication replicator all scram-sha-256"));
    let role: bool = admin
        .query_one(
            "SELECT rolreplication AND rolcanlogin FROM pg_roles WHERE rolname = 'replicator'",
            &[],
        )
        .await
        .expect("replication role")
        .get(0);
    assert!(role);

    // The standby's entry point, with the image's two programs stood in for.
    let dir = tempfile::tempdir().expect("tempdir");
    let shims = dir.path().join("bin");
    std::fs::create_dir(&shims).expect("shims");
    let data = dir.path().join("data");
    let passfile = dir.path().join("pgpass");
    write_executable(
        &shims.join("gosu"),
        "#!/bin/sh\nuser=\"$1\"; shift\n\
         if [ \"$(id -u)\" = 0 ]; then exec runuser -u \"$user\" -- \"$@\"; else exec \"$@\"; fi\n",
    );
    write_executable(
        &shims.join("docker-entrypoint.sh"),
        &format!(
            "#!/bin/sh\n[ \"$1\" = postgres ] && shift\nexec gosu postgres {} -D \"$PGDATA\" \"$@\"\n",
            primary.bin_dir().join("postgres").display()
        ),
    );
    if user.is_none() {
        // Not root: the current user plays the postgres user, and owns everything already.
        write_executable(&shims.join("chown"), "#!/bin/sh\nexit 0\n");
    } else {
        let owner = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(owner.success());
    }
    let port = free_port().expect("port");
    let mut entry = Command::new("bash");
    entry
        .arg(script("standby.sh"))
        .args([
            "-c",
            &format!("port={port}"),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            &format!("unix_socket_directories={}", dir.path().display()),
            "-c",
            "max_connections=300",
        ])
        .env("PATH", format!("{}:{path}", shims.display()))
        .env("PGDATA", &data)
        .env("PGPASSFILE", &passfile)
        .env("PRIMARY_HOST", "127.0.0.1")
        .env("PRIMARY_PORT", primary.port().to_string())
        .env("REPLICATION_PASSWORD", REPLICATION_PASSWORD)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let pg_ctl = primary.bin_dir().join("pg_ctl");
    let first = StandbyContainer::start(&mut entry, pg_ctl.clone(), data.clone(), user.clone());

    // It copies the primary with the password and streams through its slot, as the synchronous
    // standby the primary waits for.
    assert!(
        streams_synchronously(&admin).await,
        "the standby never streamed synchronously through its slot"
    );
    let recovery = std::fs::read_to_string(data.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(
        recovery.contains("primary_slot_name = 'standby'"),
        "{recovery}"
    );
    assert!(
        !recovery.contains(REPLICATION_PASSWORD),
        "the replication password was written into postgresql.auto.conf"
    );

    // A commit on the primary returns (the standby confirms it) and replays there.
    admin
        .batch_execute("CREATE TABLE replicated AS SELECT 42 AS answer")
        .await
        .expect("commit on the primary");
    let standby_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let replayed = wait_for(Duration::from_secs(30), || {
        let url = standby_url.clone();
        async move {
            let standby = connect(&url).await?;
            let row = standby
                .query_one("SELECT answer FROM replicated", &[])
                .await
                .ok()?;
            (row.get::<_, i32>(0) == 42).then_some(())
        }
    })
    .await;
    assert!(
        replayed.is_some(),
        "the standby does not replay the primary"
    );

    // The container is recreated: its data volume stays, everything else (the passfile) is new.
    drop(first);
    assert!(
        wait_for_count(
            &admin,
            "SELECT count(*) FROM pg_stat_replication",
            Duration::from_secs(30),
            |n| n == 0,
        )
        .await,
        "the stopped standby still streams"
    );
    std::fs::remove_file(&passfile).expect("the passfile existed");
    let _second = StandbyContainer::start(&mut entry, pg_ctl, data, user);
    assert!(
        streams_synchronously(&admin).await,
        "a recreated standby container did not stream again"
    );
}
