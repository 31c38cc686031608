//! systemd's readiness protocol (`sd_notify`): one datagram of
//! `KEY=VALUE` lines to the unix socket named by `$NOTIFY_SOCKET` (a path,
//! or `@name` for an abstract socket). Without the variable nothing is sent.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets for `Type=notify` services.
pub const ENV: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `"READY=1\nSTATUS=serving"`) to the service manager,
/// if there is one. Returns whether a datagram was sent.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os(ENV) else {
        return Ok(false);
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.split_first() {
        Some((b'@', name)) => SocketAddr::from_abstract_name(name)?,
        Some((b'/', _)) => SocketAddr::from_pathname(&path)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ENV}={path:?} is neither a path nor an abstract socket"),
            ));
        }
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// Tells the service manager the mount is serving (`READY=1`, with this
/// process as the main one and a status line).
pub fn ready(status: &str) {
    let msg = format!("READY=1\nMAINPID={}\nSTATUS={status}\n", std::process::id());
    match notify(&msg) {
        Ok(true) => log::info!("told the service manager the mount is ready"),
        Ok(false) => {}
        Err(e) => log::warn!("telling the service manager the mount is ready: {e}"),
    }
}

/// Tells the service manager the daemon is stopping (`STOPPING=1`).
pub fn stopping() {
    if let Err(e) = notify("STOPPING=1\n") {
        log::warn!("telling the service manager the mount stops: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_datagram_reaches_an_abstract_socket() {
        let name = format!("vfolderfs-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        // SAFETY: no other thread of this test binary reads NOTIFY_SOCKET
        // while it is set (only this test sets it).
        unsafe { std::env::set_var(ENV, format!("@{name}")) };
        assert!(notify("READY=1\n").unwrap());
        // SAFETY: as above.
        unsafe { std::env::remove_var(ENV) };
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }
}
