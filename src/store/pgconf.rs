//! PostgreSQL connection settings the libpq way: a URL
//! (`postgres://user@host:port/db?sslmode=…`) or a `key=value` string,
//! completed from the `PG*` environment variables, a service file
//! (`service=`, `PGSERVICE`), and the password file (`PGPASSFILE`, else
//! `~/.pgpass`), so that a password never has to be on a command line.
//! `sslmode` takes libpq's values: `disable`, `allow`/`prefer` (TLS if the
//! server offers it, unverified), `require` (TLS, unverified unless a root
//! certificate is given), `verify-ca` (the chain is checked against
//! `sslrootcert`), `verify-full` (the chain and the host name).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use postgres::config::SslMode;

/// Whether a `--store` value names a PostgreSQL database rather than a
/// directory.
pub fn is_postgres(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// No TLS at all.
    Off,
    /// TLS if offered, nothing checked.
    Prefer,
    /// TLS required, nothing checked.
    Require,
    /// TLS required, the chain checked.
    Ca,
    /// TLS required, the chain and the host name checked.
    Full,
}

/// Connection settings resolved from a connection string and the
/// environment.
#[derive(Clone)]
pub struct PgConf {
    /// For the driver.
    pub config: postgres::Config,
    /// How TLS is used.
    pub verify: Verify,
    /// A root certificate file to trust.
    pub root_cert: Option<PathBuf>,
    /// The connection string with any password removed, for messages.
    pub shown: String,
}

impl std::fmt::Debug for PgConf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgConf({})", self.shown)
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8"))
}

/// The parameters of a `postgres://` URL.
fn parse_url(url: &str) -> Result<BTreeMap<String, String>, String> {
    let rest = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
        .ok_or_else(|| "not a postgres:// URL".to_string())?;
    let mut p = BTreeMap::new();
    let (rest, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, db) = match rest.split_once('/') {
        Some((a, d)) => (a, Some(d)),
        None => (rest, None),
    };
    let hostpart = match authority.rsplit_once('@') {
        Some((userinfo, h)) => {
            let (u, pw) = match userinfo.split_once(':') {
                Some((u, pw)) => (u, Some(pw)),
                None => (userinfo, None),
            };
            if !u.is_empty() {
                p.insert("user".into(), percent_decode(u)?);
            }
            if let Some(pw) = pw {
                p.insert("password".into(), percent_decode(pw)?);
            }
            h
        }
        None => authority,
    };
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for hp in hostpart.split(',').filter(|s| !s.is_empty()) {
        let (h, port) = if let Some(r) = hp.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| format!("bad host {hp:?}"))?;
            (h.to_string(), after.strip_prefix(':').map(str::to_string))
        } else {
            match hp.rsplit_once(':') {
                Some((h, port)) => (percent_decode(h)?, Some(port.to_string())),
                None => (percent_decode(hp)?, None),
            }
        };
        hosts.push(h);
        if let Some(port) = port {
            ports.push(port);
        }
    }
    if !hosts.is_empty() {
        p.insert("host".into(), hosts.join(","));
    }
    if !ports.is_empty() {
        p.insert("port".into(), ports.join(","));
    }
    if let Some(db) = db.filter(|d| !d.is_empty()) {
        p.insert("dbname".into(), percent_decode(db)?);
    }
    for kv in query.into_iter().flat_map(|q| q.split('&')) {
        if kv.is_empty() {
            continue;
        }
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("bad URL parameter {kv:?}"))?;
        p.insert(percent_decode(k)?, percent_decode(v)?);
    }
    Ok(p)
}

/// The parameters of a `key=value key='quoted value'` string.
fn parse_kv(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut p = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!(
                "missing \"=\" after {key:?} in the connection string"
            ));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted value".into()),
                    Some('\\') => val.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    val.extend(chars.next());
                    continue;
                }
                val.push(c);
                chars.next();
            }
        }
        p.insert(key, val);
    }
    Ok(p)
}

/// The parameters of service `name` in the service files libpq reads:
/// `PGSERVICEFILE` (else `~/.pg_service.conf`), then `PGSYSCONFDIR/pg_service.conf`
/// (else `/etc/postgresql-common/pg_service.conf`).
fn service_params(name: &str) -> Result<BTreeMap<String, String>, String> {
    let mut files = Vec::new();
    match std::env::var_os("PGSERVICEFILE") {
        Some(f) => files.push(PathBuf::from(f)),
        None => {
            if let Some(h) = home() {
                files.push(h.join(".pg_service.conf"));
            }
        }
    }
    match std::env::var_os("PGSYSCONFDIR") {
        Some(d) => files.push(PathBuf::from(d).join("pg_service.conf")),
        None => files.push(PathBuf::from("/etc/postgresql-common/pg_service.conf")),
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let mut inside = false;
        let mut found = false;
        let mut p = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(sec) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                inside = sec == name;
                found |= inside;
                continue;
            }
            if inside && let Some((k, v)) = line.split_once('=') {
                p.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        if found {
            return Ok(p);
        }
    }
    Err(format!("definition of service {name:?} not found"))
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// The password for (host, port, db, user) in a libpq password file, which
/// is ignored (as libpq does) unless only its owner can read it.
fn pgpass_lookup(file: &Path, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(file).ok()?;
    if meta.mode() & 0o077 != 0 {
        log::warn!(
            "password file {} has group or world access; it is ignored (chmod 0600 it)",
            file.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut it = line.chars();
        while let Some(c) = it.next() {
            match c {
                '\\' => cur.extend(it.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let want = [host, port, db, user];
        if fields[..4]
            .iter()
            .zip(want)
            .all(|(f, w)| f == "*" || f == w)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

/// The connection string with the password (in a URL or as `password=`)
/// replaced, safe to show.
pub fn redact(s: &str) -> String {
    if is_postgres(s) {
        let (scheme, rest) = s.split_once("://").unwrap_or(("postgres", s));
        let (auth_end, _) = rest
            .char_indices()
            .find(|(_, c)| *c == '/' || *c == '?')
            .unwrap_or((rest.len(), ' '));
        let authority = &rest[..auth_end];
        let mut out = match authority.rsplit_once('@') {
            Some((ui, h)) => match ui.split_once(':') {
                Some((u, _)) => format!("{scheme}://{u}:***@{h}{}", &rest[auth_end..]),
                None => s.to_string(),
            },
            None => s.to_string(),
        };
        if let Some(i) = out.find("password=") {
            let end = out[i..].find('&').map_or(out.len(), |e| i + e);
            out.replace_range(i..end, "password=***");
        }
        out
    } else {
        match parse_kv(s) {
            Ok(p) => p
                .into_iter()
                .map(|(k, v)| {
                    if k == "password" {
                        format!("{k}=***")
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
            Err(_) => "(unparsable connection string)".into(),
        }
    }
}

/// The name of the user this process runs as (libpq's default user).
fn os_user() -> String {
    // SAFETY: getpwuid returns a pointer to static storage or null.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    std::env::var("USER").unwrap_or_else(|_| "postgres".into())
}

impl PgConf {
    /// Resolves a connection string (URL or `key=value`) the way libpq
    /// does: explicit parameters, then a service's, then `PG*` variables,
    /// then defaults; the password from the password file when none is given.
    pub fn parse(s: &str) -> Result<PgConf, String> {
        let p = Self::params(s)?;
        let mut c = postgres::Config::new();
        let (host, port) = Self::addresses(&mut c, &p)?;
        let user = p.get("user").cloned().unwrap_or_else(os_user);
        let dbname = p.get("dbname").cloned().unwrap_or_else(|| user.clone());
        c.user(&user).dbname(&dbname);
        if let Some(pw) = Self::password(&p, &host, &port, &dbname, &user) {
            c.password(pw);
        }
        c.application_name(
            p.get("application_name")
                .map(String::as_str)
                .unwrap_or("vfolderfs"),
        );
        if let Some(o) = p.get("options") {
            c.options(o);
        }
        let timeout = match p.get("connect_timeout") {
            Some(t) => Duration::from_secs(
                t.parse()
                    .map_err(|_| format!("bad connect_timeout {t:?}"))?,
            ),
            None => Duration::from_secs(5),
        };
        c.connect_timeout(timeout);
        // A peer that vanished (a partition) must fail a statement within
        // seconds, not the kernel's minutes: the mount then fails closed and
        // reconnects when the network is back.
        c.keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(10));
        let (verify, root_cert) = Self::tls_mode(&p)?;
        c.ssl_mode(match verify {
            Verify::Off => SslMode::Disable,
            Verify::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        Ok(PgConf {
            config: c,
            verify,
            root_cert,
            shown: redact(s),
        })
    }

    /// The parameters as libpq would see them: explicit ones, then the
    /// service's, then the `PG*` variables'.
    fn params(s: &str) -> Result<BTreeMap<String, String>, String> {
        let mut p = if is_postgres(s) {
            parse_url(s)?
        } else {
            parse_kv(s)?
        };
        let service = p
            .get("service")
            .cloned()
            .or_else(|| std::env::var("PGSERVICE").ok().filter(|s| !s.is_empty()));
        if let Some(svc) = service {
            for (k, v) in service_params(&svc)? {
                p.entry(k).or_insert(v);
            }
        }
        let env = [
            ("host", "PGHOST"),
            ("hostaddr", "PGHOSTADDR"),
            ("port", "PGPORT"),
            ("dbname", "PGDATABASE"),
            ("user", "PGUSER"),
            ("password", "PGPASSWORD"),
            ("passfile", "PGPASSFILE"),
            ("sslmode", "PGSSLMODE"),
            ("sslrootcert", "PGSSLROOTCERT"),
            ("connect_timeout", "PGCONNECT_TIMEOUT"),
            ("application_name", "PGAPPNAME"),
        ];
        for (k, var) in env {
            if !p.contains_key(k)
                && let Ok(v) = std::env::var(var)
                && !v.is_empty()
            {
                p.insert(k.into(), v);
            }
        }
        Ok(p)
    }

    /// Sets the hosts, addresses and ports; returns the host and port lists
    /// as given (or their defaults).
    fn addresses(
        c: &mut postgres::Config,
        p: &BTreeMap<String, String>,
    ) -> Result<(String, String), String> {
        let host = p.get("host").cloned().unwrap_or_else(|| {
            if Path::new("/var/run/postgresql").is_dir() {
                "/var/run/postgresql".into()
            } else {
                "localhost".into()
            }
        });
        for h in host.split(',') {
            if h.starts_with('/') {
                c.host_path(h);
            } else {
                c.host(h);
            }
        }
        if let Some(addr) = p.get("hostaddr") {
            for a in addr.split(',') {
                c.hostaddr(a.parse().map_err(|_| format!("bad hostaddr {a:?}"))?);
            }
        }
        let port = p.get("port").cloned().unwrap_or_else(|| "5432".into());
        for pt in port.split(',') {
            c.port(pt.parse().map_err(|_| format!("bad port {pt:?}"))?);
        }
        Ok((host, port))
    }

    /// The password given, else the password file's for the first host.
    fn password(
        p: &BTreeMap<String, String>,
        host: &str,
        port: &str,
        dbname: &str,
        user: &str,
    ) -> Option<String> {
        p.get("password").cloned().or_else(|| {
            let file = p
                .get("passfile")
                .map(PathBuf::from)
                .or_else(|| home().map(|h| h.join(".pgpass")))?;
            // libpq matches socket connections as "localhost".
            let h = host.split(',').next().unwrap_or("");
            let h = if h.starts_with('/') { "localhost" } else { h };
            let pt = port.split(',').next().unwrap_or("5432");
            pgpass_lookup(&file, h, pt, dbname, user)
        })
    }

    /// How the server's certificate is checked (libpq's `sslmode`), and the
    /// root certificate for it.
    fn tls_mode(p: &BTreeMap<String, String>) -> Result<(Verify, Option<PathBuf>), String> {
        let root_cert = p.get("sslrootcert").map(PathBuf::from).or_else(|| {
            home()
                .map(|h| h.join(".postgresql/root.crt"))
                .filter(|f| f.is_file())
        });
        let verify = match p.get("sslmode").map(String::as_str).unwrap_or("prefer") {
            "disable" => Verify::Off,
            "allow" | "prefer" => Verify::Prefer,
            // libpq: with a root certificate, require checks the chain.
            "require" if root_cert.is_some() => Verify::Ca,
            "require" => Verify::Require,
            "verify-ca" => Verify::Ca,
            "verify-full" => Verify::Full,
            m => return Err(format!("invalid sslmode {m:?}")),
        };
        Ok((verify, root_cert))
    }

    /// The TLS connector for these settings.
    pub fn tls(&self) -> Result<postgres_native_tls::MakeTlsConnector, String> {
        let mut b = native_tls::TlsConnector::builder();
        match self.verify {
            Verify::Off | Verify::Prefer | Verify::Require => {
                b.danger_accept_invalid_certs(true)
                    .danger_accept_invalid_hostnames(true);
            }
            Verify::Ca => {
                b.danger_accept_invalid_hostnames(true);
            }
            Verify::Full => {}
        }
        if let Some(f) = &self.root_cert
            && self.verify != Verify::Off
        {
            let pem = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
            // A file may hold several certificates.
            let text = String::from_utf8_lossy(&pem);
            let mut any = false;
            for block in text.split_inclusive("-----END CERTIFICATE-----") {
                if !block.contains("-----BEGIN CERTIFICATE-----") {
                    continue;
                }
                let cert = native_tls::Certificate::from_pem(block.trim().as_bytes())
                    .map_err(|e| format!("{}: {e}", f.display()))?;
                b.add_root_certificate(cert);
                any = true;
            }
            if !any {
                return Err(format!("{}: no PEM certificate in it", f.display()));
            }
        }
        let conn = b.build().map_err(|e| format!("TLS setup: {e}"))?;
        Ok(postgres_native_tls::MakeTlsConnector::new(conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_key_values_parse_alike() {
        let u =
            parse_url("postgres://al%40x:s3cr%3At@db.example:6543/vf?sslmode=verify-full").unwrap();
        assert_eq!(u["user"], "al@x");
        assert_eq!(u["password"], "s3cr:t");
        assert_eq!(u["host"], "db.example");
        assert_eq!(u["port"], "6543");
        assert_eq!(u["dbname"], "vf");
        assert_eq!(u["sslmode"], "verify-full");
        let s = parse_url("postgresql:///vf?host=/run/pg&port=5433").unwrap();
        assert_eq!(
            (s["host"].as_str(), s["dbname"].as_str()),
            ("/run/pg", "vf")
        );
        let k = parse_kv("host=h port = 1 password='a b\\'c' dbname=d").unwrap();
        assert_eq!(k["password"], "a b'c");
        assert_eq!(k["port"], "1");
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("postgres://u:pw@h/d?sslmode=require"),
            "postgres://u:***@h/d?sslmode=require"
        );
        assert_eq!(
            redact("postgres://u@h/d?password=pw&x=1"),
            "postgres://u@h/d?password=***&x=1"
        );
        assert!(!redact("host=h password=pw").contains("pw"));
    }

    #[test]
    fn the_password_file_matches_like_libpq_and_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pgpass");
        std::fs::write(
            &f,
            "# c\nother:*:*:*:no\nlocalhost:5432:vf:al:p\\:w\n*:*:*:*:any\n",
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            pgpass_lookup(&f, "localhost", "5432", "vf", "al").as_deref(),
            Some("p:w")
        );
        assert_eq!(
            pgpass_lookup(&f, "x", "1", "y", "z").as_deref(),
            Some("any")
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(pgpass_lookup(&f, "localhost", "5432", "vf", "al"), None);
    }

    #[test]
    fn sslmodes_map_to_what_is_checked() {
        let v = |m: &str| {
            PgConf::parse(&format!(
                "postgres://u@h/d?sslmode={m}&sslrootcert=/nonexistent"
            ))
            .map(|c| c.verify)
        };
        assert_eq!(v("disable"), Ok(Verify::Off));
        assert_eq!(v("verify-full"), Ok(Verify::Full));
        assert_eq!(v("verify-ca"), Ok(Verify::Ca));
        assert_eq!(
            v("require"),
            Ok(Verify::Ca),
            "a root cert makes require check the chain"
        );
        assert!(v("bogus").is_err());
    }
}
