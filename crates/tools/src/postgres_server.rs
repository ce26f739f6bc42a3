//! A real PostgreSQL server for tests and benchmarks of the fleet log: its
//! own cluster (`initdb`) in a temporary directory, on a free loopback
//! port, started and stopped by the harness itself — no mocks, nothing
//! shared with the machine's own clusters.
//!
//! Debian's packages put the server in `/usr/lib/postgresql/<major>/bin`.
//! `initdb` and `postgres` refuse to run as root: as root, they run as the
//! `postgres` user (`runuser`), which owns the directory. TCP connections
//! need the password ([`TestServer::password`], SCRAM); the Unix socket in
//! the directory is trusted and used for administration (`createdb`).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser the cluster is created with (also what the proxy uses).
pub const USER: &str = "residency";

/// One PostgreSQL cluster (see the module documentation). Dropping it
/// stops the server and removes the directory.
pub struct TestServer {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    password: String,
    /// Run commands as this user (`runuser -u`), when we are root.
    run_as: Option<String>,
    /// The server's TLS certificate (PEM), when it serves TLS.
    tls_cert: Option<String>,
    child: Option<Child>,
}

impl TestServer {
    /// Creates a cluster in a new temporary directory and starts it; waits
    /// until it accepts connections.
    pub fn start(tag: &str) -> io::Result<TestServer> {
        TestServer::create(tag, false)
    }

    /// As [`TestServer::start`], serving TLS too (`ssl = on`) with a new
    /// self-signed certificate for `127.0.0.1` ([`TestServer::tls_cert`]).
    pub fn start_tls(tag: &str) -> io::Result<TestServer> {
        TestServer::create(tag, true)
    }

    fn create(tag: &str, tls: bool) -> io::Result<TestServer> {
        let bin = bin_dir()?;
        let dir = std::env::temp_dir().join(format!(
            "residency-pg-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        std::fs::create_dir_all(&dir)?;
        let root = is_root();
        let run_as = root.then(|| "postgres".to_string());
        let password = format!("pw-{}", crate::ports::free_port()?);
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n"))?;
        let tls_cert = if tls {
            let (cert, key) = residency_tls::self_signed(&["127.0.0.1", "localhost"])
                .map_err(|e| io::Error::other(e.to_string()))?;
            std::fs::write(dir.join("server.crt"), &cert)?;
            let key_path = dir.join("server.key");
            std::fs::write(&key_path, key)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
            Some(cert)
        } else {
            None
        };
        if let Some(user) = &run_as {
            check(Command::new("chown").args(["-R", user]).arg(&dir))?;
        }
        let data = dir.join("data");
        let mut server = TestServer {
            dir,
            bin,
            port: crate::ports::free_port()?,
            password,
            run_as,
            tls_cert,
            child: None,
        };
        let mut initdb = server.command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "-E", "UTF8", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        check(&mut initdb)?;
        // A port free a moment ago may be taken by another process before
        // the server binds it (another test process naming ports the same
        // way): then it exits at once, and a fresh port is tried.
        let mut attempts = 0;
        loop {
            match server.launch() {
                Err(e) if attempts < 4 && e.to_string().contains("could not bind") => {
                    attempts += 1;
                    server.port = crate::ports::free_port()?;
                    let _ = std::fs::remove_file(server.dir.join("server.log"));
                }
                launched => return launched.map(|()| server),
            }
        }
    }

    /// The certificate the server presents (PEM; its own CA), if it
    /// serves TLS.
    pub fn tls_cert(&self) -> Option<&str> {
        self.tls_cert.as_deref()
    }

    /// The password of [`USER`] over TCP.
    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` over loopback TCP, without the password.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// Creates `name` (over the trusted Unix socket).
    pub fn create_database(&self, name: &str) -> io::Result<()> {
        let mut createdb = self.command("createdb");
        createdb
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", USER, name]);
        check(&mut createdb)
    }

    /// Runs `sql` in `database` with `psql` and returns its unaligned,
    /// tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> io::Result<String> {
        let mut psql = self.command("psql");
        psql.arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", database])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        let out = psql.stderr(Stdio::piped()).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "psql: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Stops the server (fast shutdown: connections are closed, every
    /// committed transaction is kept) and waits for it to exit.
    pub fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "-t", "30", "stop"]);
        let stopped = check(&mut stop);
        if stopped.is_err() {
            let _ = child.kill();
        }
        child.wait()?;
        stopped
    }

    /// Starts the stopped server again, on the same port and data.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop()?;
        self.launch()
    }

    /// Starts the stopped server again (after [`TestServer::stop`]).
    pub fn launch(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))?;
        let mut postgres = self.command("postgres");
        postgres
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .args(["-c", "max_connections=200", "-c", "fsync=on"])
            // English messages whatever the machine's locale: a failed
            // bind is recognised by its text (`create`).
            .args(["-c", "lc_messages=C"]);
        if self.tls_cert.is_some() {
            postgres
                .args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!(
                    "ssl_cert_file={}",
                    self.dir.join("server.crt").display()
                ))
                .arg("-c")
                .arg(format!(
                    "ssl_key_file={}",
                    self.dir.join("server.key").display()
                ));
        }
        postgres
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(postgres.spawn()?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Over its own Unix socket: another server holding the port
            // on 127.0.0.1 would answer for it over TCP.
            let mut ready = self.command("pg_isready");
            ready
                .arg("-h")
                .arg(&self.dir)
                .args(["-p", &self.port.to_string(), "-q"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if ready.status()?.success() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(io::Error::other(format!(
                    "postgres exited with {status}: {}",
                    self.server_log()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "postgres not ready within 30 s: {}",
                    self.server_log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's own log (for failure messages).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: the data is thrown away anyway.
            let mut stop = self.command("pg_ctl");
            stop.arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if !stop.status().is_ok_and(|s| s.success()) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest `/usr/lib/postgresql/<major>/bin` holding `postgres`.
fn bin_dir() -> io::Result<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            io::Error::other(format!(
                "/usr/lib/postgresql: {e} (install Debian's `postgresql` package)"
            ))
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| io::Error::other("no PostgreSQL server in /usr/lib/postgresql/*/bin"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn check(command: &mut Command) -> io::Result<()> {
    let out = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{:?}: {}",
            command.get_program(),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}
