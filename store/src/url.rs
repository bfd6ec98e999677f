//! Backup URLs: where a repository lives.
//!
//! - `file:///absolute/path`: a local directory (the embedded default).
//! - `socket:host:port`, `socket:[::1]:port`, `socket:name.onion:port?proxy=socks5:127.0.0.1:9050`:
//!   a `backup-cli server`.
//! - `s3://bucket/prefix?endpoint=http://127.0.0.1:8333&region=us-east-1`: S3-compatible storage.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupUrl {
    File(PathBuf),
    Socket {
        host: String,
        port: u16,
        proxy: Option<(String, u16)>,
    },
    S3 {
        bucket: String,
        prefix: String,
        /// `key=value` pairs of the query, validated by the S3 backend.
        params: Vec<(String, String)>,
    },
}

impl BackupUrl {
    pub fn parse(url: &str) -> Result<BackupUrl> {
        let bad = |why: &str| Error::BadUrl(format!("bad backup URL '{url}': {why}"));
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad(
                    "a file URL needs an absolute path, e.g. file:///var/lib/cln-backup",
                ));
            }
            if rest.contains('?') {
                return Err(bad("file URLs take no query"));
            }
            return Ok(BackupUrl::File(PathBuf::from(rest)));
        }
        if let Some(rest) = url.strip_prefix("socket:") {
            let (addr, query) = match rest.split_once('?') {
                Some((a, q)) => (a, Some(q)),
                None => (rest, None),
            };
            let (host, port) = split_host_port(addr).ok_or_else(|| {
                bad("expected socket:HOST:PORT, socket:[IPv6]:PORT or socket:NAME.onion:PORT")
            })?;
            let mut proxy = None;
            if let Some(q) = query {
                for kv in q.split('&') {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| bad("query must be key=value"))?;
                    match k {
                        "proxy" => {
                            let p = v.strip_prefix("socks5:").ok_or_else(|| {
                                bad("proxy must be socks5:HOST:PORT, e.g. proxy=socks5:127.0.0.1:9050")
                            })?;
                            let hp = split_host_port(p)
                                .ok_or_else(|| bad("proxy must be socks5:HOST:PORT"))?;
                            proxy = Some(hp);
                        }
                        other => {
                            return Err(bad(&format!("unknown query key '{other}' (known: proxy)")))
                        }
                    }
                }
            }
            if host.ends_with(".onion") && proxy.is_none() {
                return Err(bad(
                    "an .onion address needs a Tor proxy: add ?proxy=socks5:127.0.0.1:9050",
                ));
            }
            return Ok(BackupUrl::Socket { host, port, proxy });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (path, query) = match rest.split_once('?') {
                Some((a, q)) => (a, Some(q)),
                None => (rest, None),
            };
            let (bucket, prefix) = match path.split_once('/') {
                Some((b, p)) => (b, p.trim_matches('/')),
                None => (path, ""),
            };
            if bucket.is_empty() {
                return Err(bad("expected s3://BUCKET/PREFIX"));
            }
            let mut params = Vec::new();
            if let Some(q) = query {
                for kv in q.split('&').filter(|s| !s.is_empty()) {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| bad("query must be key=value"))?;
                    params.push((k.to_string(), v.to_string()));
                }
            }
            return Ok(BackupUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
                params,
            });
        }
        Err(bad(
            "unknown scheme; use file:///absolute/path, socket:HOST:PORT or s3://BUCKET/PREFIX",
        ))
    }
}

/// `host:port`, `[v6]:port`. A bracketed host must be an IPv6 address; a plain host a DNS name,
/// an IPv4 address or a .onion name (letters, digits, '.', '-', '_').
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        (h, p.strip_prefix(':')?)
    } else {
        let (h, p) = s.rsplit_once(':')?;
        if !h
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        {
            return None;
        }
        (h, p)
    };
    if host.is_empty() {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    if port == 0 {
        return None;
    }
    Some((host.to_string(), port))
}

impl fmt::Display for BackupUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupUrl::File(p) => write!(f, "file://{}", p.display()),
            BackupUrl::Socket { host, port, proxy } => {
                if host.contains(':') {
                    write!(f, "socket:[{host}]:{port}")?;
                } else {
                    write!(f, "socket:{host}:{port}")?;
                }
                if let Some((ph, pp)) = proxy {
                    if ph.contains(':') {
                        write!(f, "?proxy=socks5:[{ph}]:{pp}")?;
                    } else {
                        write!(f, "?proxy=socks5:{ph}:{pp}")?;
                    }
                }
                Ok(())
            }
            BackupUrl::S3 {
                bucket,
                prefix,
                params,
            } => {
                write!(f, "s3://{bucket}/{prefix}")?;
                for (i, (k, v)) in params.iter().enumerate() {
                    write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn parses_the_old_plugin_forms() {
        assert_eq!(
            BackupUrl::parse("file:///var/backup").unwrap(),
            BackupUrl::File("/var/backup".into())
        );
        assert!(BackupUrl::parse("file://relative/x").is_err());
        assert_eq!(
            BackupUrl::parse("socket:[::1]:1234").unwrap(),
            BackupUrl::Socket {
                host: "::1".into(),
                port: 1234,
                proxy: None
            }
        );
        let tor = BackupUrl::parse("socket:abc.onion:80?proxy=socks5:127.0.0.1:9050").unwrap();
        assert_eq!(
            tor,
            BackupUrl::Socket {
                host: "abc.onion".into(),
                port: 80,
                proxy: Some(("127.0.0.1".into(), 9050))
            }
        );
        assert_eq!(
            tor.to_string(),
            "socket:abc.onion:80?proxy=socks5:127.0.0.1:9050"
        );
        assert!(BackupUrl::parse("socket:host:80?timeout=3").is_err());
        assert!(BackupUrl::parse("socket:abc.onion:80").is_err());
        assert!(BackupUrl::parse("socket:host").is_err());
        assert!(BackupUrl::parse("http://x").is_err());
    }

    /// Found by the `url` fuzz target: a bracketed host that is not IPv6 printed back as a URL
    /// that did not parse; an IPv6 proxy printed without brackets.
    #[test]
    fn printed_urls_parse_back() {
        assert!(BackupUrl::parse("socket:[[]:400").is_err());
        assert!(BackupUrl::parse("socket:ho\u{1}st:400").is_err());
        let u = BackupUrl::parse("socket:[::1]:8700?proxy=socks5:[::1]:9050").unwrap();
        assert_eq!(BackupUrl::parse(&u.to_string()).unwrap(), u);
    }
}
