//! Configuration of `avap serve`: a TOML file, `AVAP_*` environment
//! variables and flags, checked through the real binary: `--print-config`,
//! refusals at start (exit 2), and settings visible in the running server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;

mod support;

use support::{Server, fresh_dir};

/// `avap serve ARGS` with only the given `AVAP_*` variables and a config
/// home of its own (so no real `~/.config/avap/config.toml` is read).
fn serve_cmd(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    for (name, _) in std::env::vars() {
        if name.starts_with("AVAP_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("XDG_CONFIG_HOME", dir.join("config-home"))
        .arg("serve")
        .args(args)
        .envs(env.iter().copied());
    cmd
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("avap.toml");
    std::fs::write(&path, text).expect("write the config file");
    path
}

fn run(mut cmd: Command) -> (Option<i32>, String, String) {
    let Output { status, stdout, stderr } = cmd.output().expect("run avap serve");
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn print_config_shows_each_value_with_its_origin() {
    let dir = fresh_dir("print");
    let file = write_config(
        &dir,
        "rate_limit = 7\nrate_burst = 8\ndatabase_url = \"postgres://avap:hunter2@db.example/avap\"\n\
         [limits]\nfuel = 1234\n",
    );
    let cmd = serve_cmd(
        &dir,
        &[
            "--config",
            file.to_str().unwrap(),
            "--print-config",
            "--rate-limit",
            "70",
        ],
        &[("AVAP_RATE_BURST", "80"), ("AVAP_LIMITS_TIME_MS", "900")],
    );
    let (code, stdout, stderr) = run(cmd);
    assert_eq!(code, Some(0), "{stderr}");
    let origin_file = format!("# file {}", file.display());
    for line in [
        "rate_limit = 70  # flag --rate-limit".to_owned(),
        "rate_burst = 80  # environment variable AVAP_RATE_BURST".to_owned(),
        format!("database_url = \"postgres://avap:***@db.example/avap\"  {origin_file} line 3"),
        "listen = \"127.0.0.1:8080\"  # default".to_owned(),
        "[limits]".to_owned(),
        format!("fuel = 1234  {origin_file} line 5"),
        "time_ms = 900  # environment variable AVAP_LIMITS_TIME_MS".to_owned(),
    ] {
        assert!(stdout.lines().any(|l| l == line), "no line {line:?} in\n{stdout}");
    }
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
    // The output is itself a valid config file.
    let printed = write_config(&dir, &stdout);
    let (code, again, stderr) = run(serve_cmd(
        &dir,
        &["--config", printed.to_str().unwrap(), "--print-config"],
        &[],
    ));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(again.contains("rate_limit = 70  # file "), "{again}");
}

#[test]
fn bad_configuration_is_refused_with_exit_code_2() {
    let dir = fresh_dir("refused");
    let file = write_config(&dir, "listen = \"127.0.0.1:0\"\n\nkafka_url = \"kafka://cache\"\n");
    let refused = |args: &[&str], env: &[(&str, &str)]| {
        let (code, stdout, stderr) = run(serve_cmd(&dir, args, env));
        assert_eq!(code, Some(2), "{stdout}{stderr}");
        assert!(stdout.is_empty(), "nothing started: {stdout}");
        let line = stderr.trim_end().to_owned();
        assert!(line.starts_with("avap serve: config error: "), "{line}");
        line
    };
    let unknown_key = refused(&["--config", file.to_str().unwrap()], &[]);
    assert!(
        unknown_key.contains(&format!("{} line 3: unknown field `kafka_url`", file.display())),
        "{unknown_key}"
    );
    let zero_in_file = dir.join("zero.toml");
    std::fs::write(&zero_in_file, "# runs at once\nmax_concurrent_runs = 0\n").unwrap();
    let zero = refused(&["--config", zero_in_file.to_str().unwrap()], &[]);
    assert!(
        zero.ends_with(&format!(
            "max_concurrent_runs = 0 (from file {} line 2): must be between 1 and 1024",
            zero_in_file.display()
        )),
        "{zero}"
    );
    let unknown_var = refused(&[], &[("AVAP_KAFKA_URL", "kafka://cache")]);
    assert!(
        unknown_var.contains("unknown environment variable AVAP_KAFKA_URL"),
        "{unknown_var}"
    );
    let zero = refused(&[], &[("AVAP_MAX_CONCURRENT_RUNS", "0")]);
    assert!(
        zero.ends_with(
            "max_concurrent_runs = 0 (from environment variable AVAP_MAX_CONCURRENT_RUNS): must be between 1 and 1024"
        ),
        "{zero}"
    );
    let not_a_number = refused(&[], &[("AVAP_LIMITS_FUEL", "lots")]);
    assert!(
        not_a_number.contains("AVAP_LIMITS_FUEL: `lots` is not a whole number"),
        "{not_a_number}"
    );
    let listen = refused(&["--listen", "localhost"], &[]);
    assert!(listen.contains("(from flag --listen): not an ADDRESS:PORT"), "{listen}");
    let missing = refused(&["--config", dir.join("nope.toml").to_str().unwrap()], &[]);
    assert!(missing.contains("cannot read the config file"), "{missing}");
    let mysql = refused(
        &["--data-dir", dir.join("data").to_str().unwrap()],
        &[("AVAP_DATABASE_URL", "mysql://avap:hunter2@db.example/avap")],
    );
    assert!(
        mysql.contains("unsupported database `mysql`; use `sqlite:PATH` or `postgres://"),
        "{mysql}"
    );
    assert!(!mysql.contains("hunter2"), "{mysql}");
}

#[test]
fn file_and_environment_settings_reach_the_running_server() {
    let dir = fresh_dir("layers");
    // The default config file: $XDG_CONFIG_HOME/avap/config.toml.
    std::fs::create_dir_all(dir.join("config-home/avap")).unwrap();
    let database = dir.join("elsewhere/registry.sqlite");
    std::fs::create_dir_all(database.parent().unwrap()).unwrap();
    std::fs::write(
        dir.join("config-home/avap/config.toml"),
        format!(
            "database_url = \"sqlite:{}\"\nrate_limit = 1000\nrate_burst = 1000\n\
             [limits]\nfuel = 4321\ntime_ms = 1000\n",
            database.display()
        ),
    )
    .unwrap();
    let data_dir = dir.join("data");
    let mut cmd = serve_cmd(
        &dir,
        &["--listen", "127.0.0.1:0"],
        &[
            ("AVAP_LIMITS_TIME_MS", "777"),
            ("AVAP_RATE_LIMIT", "1"),
            ("AVAP_RATE_BURST", "2"),
            ("AVAP_LOG_LEVEL", "warn"),
        ],
    );
    cmd.arg("--data-dir").arg(&data_dir);
    let s = Server::spawn(cmd, data_dir.clone());

    let info = s.get("/api/v1/info");
    assert_eq!(info.status, 200, "{}", info.body);
    let limits = &info.json()["limits"];
    assert_eq!(limits["fuel"], 4321, "from the file");
    assert_eq!(limits["time_ms"], 777, "the environment beats the file");

    // The environment's rate limit (1/s, burst 2) beats the file's 1000.
    let hello = json!({"script": "x = 1\naddResult(x)\n"});
    assert_eq!(s.execute(&hello).status, 200);
    assert_eq!(s.execute(&hello).status, 200);
    let limited = s.execute(&hello);
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(
        limited.header("x-request-id").is_some(),
        "429s carry the request id too"
    );

    // The registry lives where database_url says, not in the data directory.
    assert!(database.is_file(), "{} was created", database.display());
    assert!(!data_dir.join("avap.sqlite").exists());
}
