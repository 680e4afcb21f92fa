//! TLS to a real PostgreSQL serving a certificate from a throwaway CA: `verify-full` checks the chain and the
//! host name, `verify-ca` the chain only, `require` and the default encrypt without checking, `disable`
//! does not encrypt — for single sessions and for the pool every service uses.

use std::path::Path;

use auscult_store::{SessionLimits, connect_pool, session_config};
use auscult_testkit::PostgresServer;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};

/// Writes a CA (`ca.pem`) and another one nobody used (`other-ca.pem`) into `dir`, and a certificate for
/// `localhost` signed by the first into the server's data directory.
fn write_certificates(pg: &PostgresServer, dir: &Path) {
    let ca = |name: &str| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let certificate = params.self_signed(&key).expect("self-signed");
        std::fs::write(dir.join(name), certificate.pem()).expect("write CA");
        Issuer::new(params, key)
    };
    let issuer = ca("ca.pem");
    ca("other-ca.pem");
    let key = KeyPair::generate().expect("key");
    let certificate = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("sign");
    let data = pg.data_dir();
    std::fs::write(data.join("server.crt"), certificate.pem()).expect("write cert");
    std::fs::write(data.join("server.key"), key.serialize_pem()).expect("write key");
    std::fs::set_permissions(
        data.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("key permissions");
    if let Some(user) = pg.os_user() {
        for file in ["server.crt", "server.key"] {
            let status = std::process::Command::new("chown")
                .arg(format!("{user}:"))
                .arg(data.join(file))
                .status()
                .expect("chown");
            assert!(status.success(), "chown {file}");
        }
    }
}

/// Whether a session on `url` is encrypted, or the error opening it.
async fn encrypted(url: &str) -> Result<bool, String> {
    let config =
        session_config(url, "tls test", &SessionLimits::default()).map_err(|e| e.to_string())?;
    let (client, connection) = config.connect().await.map_err(|e| format!("{e:?}"))?;
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn sessions_and_pools_encrypt_and_verify_as_sslmode_says() {
    let pg = PostgresServer::start().expect("postgres");
    let dir = tempfile::tempdir().expect("temp dir");
    write_certificates(&pg, dir.path());
    let (admin, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    admin
        .batch_execute("ALTER SYSTEM SET ssl = on")
        .await
        .expect("ssl on");
    let reloaded: bool = admin
        .query_one("SELECT pg_reload_conf()", &[])
        .await
        .expect("reload")
        .get(0);
    assert!(reloaded);

    let port = pg.port();
    let ca = dir.path().join("ca.pem").display().to_string();
    let other_ca = dir.path().join("other-ca.pem").display().to_string();
    let url =
        |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres{query}");

    // The reload applies to new sessions; wait until the server offers TLS.
    let offered = auscult_testkit::wait_for(std::time::Duration::from_secs(20), || async {
        matches!(
            encrypted(&url("127.0.0.1", "?sslmode=require")).await,
            Ok(true)
        )
        .then_some(())
    })
    .await;
    assert!(offered.is_some(), "the server never offered TLS");

    let verify_full = url(
        "localhost",
        &format!("?sslmode=verify-full&sslrootcert={ca}"),
    );
    assert_eq!(encrypted(&verify_full).await, Ok(true));
    assert_eq!(
        encrypted(&url(
            "127.0.0.1",
            &format!("?sslmode=verify-ca&sslrootcert={ca}")
        ))
        .await,
        Ok(true),
        "verify-ca does not check the host name"
    );
    let wrong_host = encrypted(&url(
        "127.0.0.1",
        &format!("?sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert!(
        wrong_host
            .as_ref()
            .is_err_and(|e| e.contains("NotValidForName")),
        "verify-full refuses a certificate for another host: {wrong_host:?}"
    );
    let wrong_ca = encrypted(&url(
        "localhost",
        &format!("?sslmode=verify-full&sslrootcert={other_ca}"),
    ))
    .await;
    assert!(
        wrong_ca
            .as_ref()
            .is_err_and(|e| e.contains("UnknownIssuer")),
        "a certificate from another CA is refused: {wrong_ca:?}"
    );
    assert_eq!(
        encrypted(&url("127.0.0.1", "")).await,
        Ok(true),
        "prefer encrypts when offered"
    );
    assert_eq!(
        encrypted(&url("127.0.0.1", "?sslmode=disable")).await,
        Ok(false)
    );

    // The pool the services share connects the same way.
    let pool = connect_pool(&verify_full, 2, "tls test").expect("pool");
    let client = pool.get().await.expect("pooled connection");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert!(ssl);
}
