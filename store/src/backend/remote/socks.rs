//! A minimal SOCKS5 client (RFC 1928, "no authentication" method, CONNECT only), enough for
//! Tor: host names are passed to the proxy as names (address type 3), so `.onion` addresses
//! resolve inside Tor and nothing leaks to the local resolver.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::Duration;

use super::client::connect_direct;

fn err(proxy: &str, what: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("SOCKS5 proxy {proxy}: {what}"))
}

fn reply_text(code: u8) -> &'static str {
    match code {
        1 => "general failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable (for .onion: is the hidden service up?)",
        5 => "connection refused by the destination",
        6 => "TTL expired (Tor: the circuit or hidden service timed out)",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown error",
    }
}

/// Connect to `host:port` through the SOCKS5 proxy at `proxy`, with `timeout` on each step.
pub fn connect(
    proxy: (&str, u16),
    host: &str,
    port: u16,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let pname = if proxy.0.contains(':') {
        format!("[{}]:{}", proxy.0, proxy.1)
    } else {
        format!("{}:{}", proxy.0, proxy.1)
    };
    let mut s = connect_direct(proxy.0, proxy.1, timeout)
        .map_err(|e| err(&pname, format!("cannot connect ({e}); is Tor running?")))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;

    s.write_all(&[5, 1, 0])?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r)?;
    if r != [5, 0] {
        return Err(err(
            &pname,
            format!(
                "refused the no-authentication method (answered {:02x} {:02x})",
                r[0], r[1]
            ),
        ));
    }

    let mut req = vec![5u8, 1, 0];
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.octets());
        }
        Ok(IpAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.octets());
        }
        Err(_) => {
            let n = u8::try_from(host.len())
                .map_err(|_| err(&pname, "host name longer than 255 bytes"))?;
            req.push(3);
            req.push(n);
            req.extend_from_slice(host.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req)?;

    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    let [ver, rep, _, atyp] = head;
    if ver != 5 {
        return Err(err(&pname, format!("not a SOCKS5 reply (version {ver})")));
    }
    if rep != 0 {
        return Err(err(
            &pname,
            format!("could not reach {host}:{port}: {}", reply_text(rep)),
        ));
    }
    let addr_len = match atyp {
        1 => 4,
        4 => 16,
        3 => {
            let mut n = [0u8; 1];
            s.read_exact(&mut n)?;
            usize::from(n[0])
        }
        t => return Err(err(&pname, format!("unknown address type {t} in reply"))),
    };
    let mut rest = vec![0u8; addr_len + 2];
    s.read_exact(&mut rest)?;
    Ok(s)
}
