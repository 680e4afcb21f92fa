//! What every store test starts from: a throwaway PostgreSQL and connections to it.

use auscult_testkit::PostgresServer;
use tokio_postgres::NoTls;

/// One connection, driven in the background.
pub async fn connect(pg: &PostgresServer) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// A throwaway PostgreSQL with the current schema.
pub async fn migrated() -> (PostgresServer, tokio_postgres::Client) {
    let pg = PostgresServer::start().expect("postgres");
    let mut client = connect(&pg).await;
    auscult_store::migrate(&mut client).await.expect("migrate");
    (pg, client)
}
