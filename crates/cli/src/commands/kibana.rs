//! `auscult kibana import`: loads the data views, visualizations and dashboard (`deploy/kibana/`)
//! through Kibana's saved-objects API, replacing earlier versions of the same objects.

use std::path::PathBuf;

use anyhow::{Context, bail};
use auscult_search::kibana::{SAVED_OBJECTS, check_saved_objects};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Import the auscult data views and dashboard into Kibana.
    Import {
        /// Kibana's URL, e.g. http://kibana:5601.
        #[arg(long, env = "KIBANA_URL")]
        kibana: String,
        /// A Kibana space other than the default one.
        #[arg(long)]
        space: Option<String>,
        /// Saved-objects NDJSON to import instead of the one built in.
        #[arg(long)]
        file: Option<PathBuf>,
        /// User for basic authentication (with ELASTIC_PASSWORD).
        #[arg(long, env = "ELASTIC_USERNAME")]
        username: Option<String>,
        #[arg(long, env = "ELASTIC_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Encoded API key instead of a user.
        #[arg(long, env = "ELASTIC_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// CA certificate (PEM) that signed Kibana's HTTPS certificate.
        #[arg(long, env = "KIBANA_CA_FILE")]
        ca_file: Option<PathBuf>,
    },
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    let Command::Import {
        kibana,
        space,
        file,
        username,
        password,
        api_key,
        ca_file,
    } = command;
    let (name, ndjson) = match &file {
        Some(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => (
            "the built-in saved objects".to_owned(),
            SAVED_OBJECTS.to_owned(),
        ),
    };
    let objects = check_saved_objects(&ndjson)
        .map_err(|problems| anyhow::anyhow!("{name}: {}", problems.join("; ")))?;
    let base = kibana.trim_end_matches('/');
    let url = match &space {
        Some(space) => format!("{base}/s/{space}/api/saved_objects/_import?overwrite=true"),
        None => format!("{base}/api/saved_objects/_import?overwrite=true"),
    };
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::text(ndjson)
            .file_name("auscult.ndjson")
            .mime_str("application/ndjson")?,
    );
    let mut client = reqwest::Client::builder();
    if let Some(ca) = &ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        client = client.add_root_certificate(
            reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
        );
    }
    let mut request = client
        .build()
        .context("building the HTTP client")?
        .post(&url)
        .header("kbn-xsrf", "true")
        .multipart(form)
        .timeout(std::time::Duration::from_secs(60));
    if let Some(key) = api_key.filter(|k| !k.is_empty()) {
        request = request.header("Authorization", format!("ApiKey {key}"));
    } else if let Some(user) = username.filter(|u| !u.is_empty()) {
        request = request.basic_auth(user, password);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("reaching Kibana at {base}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("Kibana refused the import (HTTP {status}): {body}");
    }
    let answer: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("unexpected answer from Kibana: {body}"))?;
    let errors = answer["errors"].as_array().cloned().unwrap_or_default();
    if answer["success"] != true || !errors.is_empty() {
        let described: Vec<String> = errors
            .iter()
            .map(|e| {
                format!(
                    "{} {:?}: {}",
                    e["type"].as_str().unwrap_or("?"),
                    e["id"].as_str().unwrap_or("?"),
                    e["error"]
                )
            })
            .collect();
        bail!(
            "Kibana imported {} of {} objects; failed: {}",
            answer["successCount"],
            objects.len(),
            described.join("; ")
        );
    }
    println!(
        "imported {} saved objects into Kibana{}: open the dashboard \"auscult — machines\"",
        answer["successCount"],
        space.map(|s| format!(" (space {s})")).unwrap_or_default()
    );
    Ok(())
}
