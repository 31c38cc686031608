//! The two ways out for the metrics: a file rewritten atomically every few
//! seconds (for node_exporter's textfile collector) and an HTTP listener on
//! a loopback address or a unix socket (for a scraper on the node).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::render::{Sources, render};
use crate::catalog::Catalog;
use crate::fs::vfolders::Registry;
use crate::workers::pool::JobPool;

/// How often the metrics file is rewritten.
pub const FILE_EVERY: Duration = Duration::from_secs(5);

/// Where the HTTP listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A loopback TCP address (`127.0.0.1:9105`, `[::1]:9105`, `localhost:9105`).
    Tcp(SocketAddr),
    /// A unix socket (`unix:/run/vfolderfs/metrics.sock`), made `0600`.
    Unix(PathBuf),
}

/// Parses `-o metrics_listen=…`; only loopback addresses are allowed (the
/// metrics name vfolders and carry no authentication).
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        if !p.starts_with('/') {
            return Err(format!(
                "metrics_listen={s}: a unix socket needs an absolute path"
            ));
        }
        return Ok(Listen::Unix(PathBuf::from(p)));
    }
    let addr: SocketAddr = match s.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}").parse(),
        None => s.parse(),
    }
    .map_err(|e| {
        format!("metrics_listen={s}: {e} (use 127.0.0.1:PORT, [::1]:PORT or unix:PATH)")
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "metrics_listen={s}: only a loopback address or a unix socket is allowed"
        ));
    }
    Ok(Listen::Tcp(addr))
}

/// Writes `text` to `path` atomically: a temporary file in the same
/// directory, renamed over it.
pub fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("metrics")
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Starts what was asked for; fails at once if the file cannot be written
/// or the listener cannot be bound. The threads end when `stop` is set
/// (the file is written once more first).
pub fn start(
    file: Option<PathBuf>,
    listen: Option<Listen>,
    reg: Arc<Registry>,
    pool: Arc<JobPool>,
    cat: Arc<Catalog>,
    stop: Arc<AtomicBool>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    let text = move || {
        render(&Sources {
            reg: &reg,
            pool: &pool,
            store: cat.store().as_ref(),
        })
    };
    if let Some(path) = file {
        write_atomically(&path, &text()).map_err(|e| {
            io::Error::new(e.kind(), format!("metrics file {}: {e}", path.display()))
        })?;
        let (stop, text) = (stop.clone(), text.clone());
        threads.push(
            thread::Builder::new()
                .name("vfolderfs-metrics-file".into())
                .spawn(move || {
                    let mut last = Instant::now();
                    while !stop.load(Ordering::Acquire) {
                        thread::sleep(Duration::from_millis(100));
                        if last.elapsed() >= FILE_EVERY {
                            last = Instant::now();
                            if let Err(e) = write_atomically(&path, &text()) {
                                log::warn!("metrics file {}: {e}", path.display());
                            }
                        }
                    }
                    let _ = write_atomically(&path, &text());
                })?,
        );
    }
    match listen {
        None => {}
        Some(Listen::Tcp(addr)) => {
            let l = TcpListener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("metrics_listen {addr}: {e}")))?;
            l.set_nonblocking(true)?;
            log::info!("metrics on http://{}/metrics", l.local_addr()?);
            threads.push(
                thread::Builder::new()
                    .name("vfolderfs-metrics-http".into())
                    .spawn(move || {
                        serve(&stop, || l.accept().map(|(s, _)| s), &text);
                    })?,
            );
        }
        Some(Listen::Unix(path)) => {
            // A socket left by a daemon that died is replaced; anything
            // else at the path is refused by bind.
            if std::fs::symlink_metadata(&path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(&path);
            }
            let l = UnixListener::bind(&path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("metrics_listen unix:{}: {e}", path.display()),
                )
            })?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            l.set_nonblocking(true)?;
            log::info!("metrics on unix:{}", path.display());
            threads.push(
                thread::Builder::new()
                    .name("vfolderfs-metrics-http".into())
                    .spawn(move || {
                        serve(&stop, || l.accept().map(|(s, _)| s), &text);
                        let _ = std::fs::remove_file(&path);
                    })?,
            );
        }
    }
    Ok(threads)
}

/// A connection the listener answers.
trait Conn: Read + Write {
    fn prepare(&self) -> io::Result<()>;
}

impl Conn for std::net::TcpStream {
    fn prepare(&self) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_read_timeout(Some(Duration::from_secs(2)))?;
        self.set_write_timeout(Some(Duration::from_secs(2)))
    }
}

impl Conn for std::os::unix::net::UnixStream {
    fn prepare(&self) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_read_timeout(Some(Duration::from_secs(2)))?;
        self.set_write_timeout(Some(Duration::from_secs(2)))
    }
}

/// Accepts connections until `stop`, one at a time: each gets one answer.
fn serve<C: Conn>(
    stop: &AtomicBool,
    accept: impl Fn() -> io::Result<C>,
    text: &dyn Fn() -> String,
) {
    while !stop.load(Ordering::Acquire) {
        match accept() {
            Ok(mut c) => {
                if let Err(e) = c.prepare().and_then(|()| answer(&mut c, text)) {
                    log::debug!("metrics request: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                log::warn!("metrics listener: {e}");
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Reads one HTTP request and answers it: the metrics for `GET /metrics`
/// (or `/`), 404 for other paths, 405 for other methods.
fn answer(c: &mut dyn Conn, text: &dyn Fn() -> String) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = c.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line =
        String::from_utf8_lossy(buf.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned();
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, body, ctype) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET" | "HEAD", "/metrics" | "/") => {
            ("200 OK", text(), "text/plain; version=0.0.4; charset=utf-8")
        }
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "not found: try /metrics\n".into(),
            "text/plain",
        ),
        _ => ("405 Method Not Allowed", "GET only\n".into(), "text/plain"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())?;
    if method != "HEAD" {
        c.write_all(body.as_bytes())?;
    }
    c.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_or_unix_sockets() {
        assert_eq!(
            parse_listen("127.0.0.1:9105"),
            Ok(Listen::Tcp("127.0.0.1:9105".parse().unwrap()))
        );
        assert!(parse_listen("[::1]:9105").is_ok());
        assert!(parse_listen("localhost:9105").is_ok());
        assert_eq!(
            parse_listen("unix:/run/m.sock"),
            Ok(Listen::Unix("/run/m.sock".into()))
        );
        assert!(parse_listen("0.0.0.0:9105").is_err());
        assert!(parse_listen("10.1.2.3:9105").is_err());
        assert!(parse_listen("unix:rel.sock").is_err());
    }
}
