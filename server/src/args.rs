//! The flags of `avap serve`: clap parses them, and serialized (serde, the
//! configuration's key names) they are the top layer of the configuration.
//! A flag left out is not serialized, so it sets nothing.

use std::path::PathBuf;

/// `avap serve`. Every setting can also come from a TOML config file or an
/// `AVAP_<KEY>` environment variable (see `--print-config`); a flag given
/// here wins over both.
#[derive(Debug, Default, Clone, clap::Args, serde::Serialize)]
pub struct ServeArgs {
    /// TOML config file (default: `$XDG_CONFIG_HOME/avap/config.toml` or `~/.config/avap/config.toml`, if it exists)
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML, with where each value came from, and exit
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// Address and port to listen on [default: 127.0.0.1:8080] (port 0 picks a free port; the startup line shows it)
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Directory for the embedded database and the server key (default: `$XDG_DATA_HOME/avap` or `~/.local/share/avap`)
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Require an API key on every guarded route, even on a loopback address
    #[arg(long, conflicts_with = "allow_anonymous")]
    #[serde(skip)] // with `allow_anonymous`: either flag settles both keys
    pub require_api_key: bool,
    /// Let requests without an API key in even on a non-loopback address
    #[arg(long)]
    #[serde(skip)]
    pub allow_anonymous: bool,
    /// Serve the browser playground at /playground [default: auto = only on a loopback address]
    #[arg(long, value_enum, value_name = "MODE")]
    pub playground: Option<crate::config::PlaygroundMode>,
    /// Requests per second per client (API key, else IP) [default: 50]; 0 turns rate limiting off
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u32>,
    /// Requests a client may send at once before the rate applies [default: 100]
    #[arg(long, value_name = "N")]
    pub rate_burst: Option<u32>,
    /// The outer time limit of a request, in milliseconds (504 after it; 0 = none) [default: 30000]
    #[arg(long, value_name = "N")]
    pub request_timeout_ms: Option<u64>,
    /// An origin allowed to call the API from a browser (CORS); repeatable
    #[arg(long, value_name = "ORIGIN")]
    #[serde(rename = "cors_origins", skip_serializing_if = "Vec::is_empty")]
    pub cors_origin: Vec<String>,
    /// Run as an edge node: serve a verified disk mirror of the registry at `--registry`, read-only, also while it is unreachable
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub edge: bool,
    /// The registry node an edge node follows, as `http(s)://HOST[:PORT]` (its API key: `registry_api_key` / `AVAP_REGISTRY_API_KEY`)
    #[arg(long, value_name = "URL")]
    #[serde(rename = "registry_url")]
    pub registry: Option<String>,
    /// How often an edge node asks the registry for changes, in milliseconds [default: 5000]
    #[arg(long, value_name = "N")]
    pub registry_sync_ms: Option<u64>,
    /// Jobs go through NATS `JetStream` at this `nats://HOST:PORT`, shared with other nodes and workers (default: the queue in the server database)
    #[arg(long, value_name = "URL")]
    pub jobs_url: Option<String>,
    /// Jobs this process runs at once [default: one per core]; 0 = accept jobs, run none
    #[arg(long, value_name = "N")]
    pub jobs_workers: Option<usize>,
}

/// `avap worker`: runs jobs, serves no HTTP. It reads the configuration of
/// `avap serve` (the same file and `AVAP_*` variables: the database, the
/// queue, limits, what scripts may reach), with these flags on top.
#[derive(Debug, Default, clap::Args)]
pub struct WorkerArgs {
    /// TOML config file (default: `$XDG_CONFIG_HOME/avap/config.toml` or `~/.config/avap/config.toml`, if it exists)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of the embedded database and the server key (default: `$XDG_DATA_HOME/avap` or `~/.local/share/avap`)
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Take jobs from NATS `JetStream` at this `nats://HOST:PORT` (default: the queue in the server database)
    #[arg(long, value_name = "URL")]
    pub jobs_url: Option<String>,
    /// Jobs run at once [default: one per core]
    #[arg(long, value_name = "N")]
    pub jobs_workers: Option<usize>,
}

impl WorkerArgs {
    /// The same settings as `avap serve` flags, for the shared configuration.
    pub fn serve_args(&self) -> ServeArgs {
        ServeArgs {
            config: self.config.clone(),
            data_dir: self.data_dir.clone(),
            jobs_url: self.jobs_url.clone(),
            jobs_workers: self.jobs_workers,
            ..ServeArgs::default()
        }
    }
}
