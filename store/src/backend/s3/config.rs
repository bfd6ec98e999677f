//! Settings of an `s3://bucket/prefix?...` destination: the URL query, the usual AWS environment
//! variables (through `AmazonS3Builder::from_env`), and the AWS profile files, which
//! object_store 0.14 does not read itself (we read the static keys and region from them).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Query keys an `s3://` URL accepts.
pub const KNOWN_KEYS: &[&str] = &[
    "endpoint",
    "region",
    "allow_http",
    "addressing",
    "profile",
    "lock_lease",
    "conditional",
];

/// `conditional=`: whether locks, stream parts and create-if-absent rely on the service's
/// conditional writes (If-None-Match, If-Match).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conditional {
    /// Probe at open (create a random key twice); use them if honoured, else the fallback.
    Auto,
    /// Never use them: the best-effort fallback (check, write, read back), for a service whose
    /// conditional writes are unreliable.
    Off,
    /// Use them, and refuse to open if the probe finds them ignored.
    Required,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// `https://endpoint/bucket/key`: what S3-compatible servers expect (the default with `endpoint=`).
    Path,
    /// `https://bucket.s3.region.amazonaws.com/key`: AWS's own (the default without `endpoint=`).
    VirtualHosted,
}

#[derive(Clone, Debug)]
pub struct S3Config {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: bool,
    pub addressing: Addressing,
    pub profile: Option<String>,
    /// How long a lock stays valid without renewal (renewed every third of it).
    pub lock_lease: Duration,
    pub conditional: Conditional,
}

impl S3Config {
    pub fn from_url(bucket: &str, prefix: &str, params: &[(String, String)]) -> Result<S3Config> {
        let bad = |why: String| Error::BadUrl(format!("bad s3 URL s3://{bucket}/{prefix}: {why}"));
        let mut c = S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: None,
            region: None,
            allow_http: false,
            addressing: Addressing::VirtualHosted,
            profile: None,
            lock_lease: Duration::from_secs(60),
            conditional: Conditional::Auto,
        };
        let mut addressing = None;
        for (k, v) in params {
            match k.as_str() {
                "endpoint" => c.endpoint = Some(v.trim_end_matches('/').to_string()),
                "region" => c.region = Some(v.clone()),
                "allow_http" => {
                    c.allow_http = match v.as_str() {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        _ => {
                            return Err(bad(format!("allow_http must be true or false, not '{v}'")))
                        }
                    }
                }
                "addressing" => {
                    addressing = Some(match v.as_str() {
                        "path" => Addressing::Path,
                        "virtual" => Addressing::VirtualHosted,
                        _ => {
                            return Err(bad(format!(
                                "addressing must be path or virtual, not '{v}'"
                            )))
                        }
                    })
                }
                "profile" => c.profile = Some(v.clone()),
                "lock_lease" => {
                    let secs: u64 = v
                        .parse()
                        .ok()
                        .filter(|s| (2..=3600).contains(s))
                        .ok_or_else(|| {
                            bad(format!("lock_lease is seconds in 2..=3600, not '{v}'"))
                        })?;
                    c.lock_lease = Duration::from_secs(secs);
                }
                "conditional" => {
                    c.conditional = match v.as_str() {
                        "auto" => Conditional::Auto,
                        "off" => Conditional::Off,
                        "on" => Conditional::Required,
                        _ => {
                            return Err(bad(format!(
                                "conditional must be auto, on or off, not '{v}'"
                            )))
                        }
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown query key '{other}' (known: {})",
                        KNOWN_KEYS.join(", ")
                    )))
                }
            }
        }
        if c.bucket.is_empty() {
            return Err(bad("no bucket name".into()));
        }
        if let Some(e) = &c.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(bad(format!(
                    "endpoint must start with http:// or https://, not '{e}'"
                )));
            }
            if e.starts_with("http://") && !c.allow_http {
                return Err(bad(format!(
                    "endpoint {e} is plain http: add allow_http=true to the URL to accept that \
                     (objects are sealed by cln-backup, but the request signatures and metadata travel in clear)"
                )));
            }
        }
        c.addressing = addressing.unwrap_or(if c.endpoint.is_some() {
            Addressing::Path
        } else {
            Addressing::VirtualHosted
        });
        Ok(c)
    }

    /// `s3://bucket/prefix` (no query), for messages.
    pub fn short_url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// Where requests go, for messages.
    pub fn endpoint_for_messages(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => "AWS S3".into(),
        }
    }
}

/// Static credentials and region from the AWS profile files, used when the environment gives
/// none (`AWS_ACCESS_KEY_ID` unset). Reads `AWS_SHARED_CREDENTIALS_FILE` (default
/// `~/.aws/credentials`) and `AWS_CONFIG_FILE` (default `~/.aws/config`), section `profile=` of
/// the URL, else `AWS_PROFILE`, else `default`. SSO, `credential_process` and role chaining are
/// not supported: use environment variables for those.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProfileSettings {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

pub fn read_profile(profile: Option<&str>) -> ProfileSettings {
    let name = profile
        .map(str::to_string)
        .or_else(|| std::env::var("AWS_PROFILE").ok())
        .unwrap_or_else(|| "default".into());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |var: &str, rel: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(rel)))
    };
    let mut out = ProfileSettings::default();
    if let Some(text) = file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials")
        .and_then(|p| std::fs::read_to_string(p).ok())
    {
        for (k, v) in ini_section(&text, &name) {
            match k.as_str() {
                "aws_access_key_id" => out.access_key_id = Some(v),
                "aws_secret_access_key" => out.secret_access_key = Some(v),
                "aws_session_token" => out.session_token = Some(v),
                _ => {}
            }
        }
    }
    if let Some(text) =
        file("AWS_CONFIG_FILE", ".aws/config").and_then(|p| std::fs::read_to_string(p).ok())
    {
        let section = if name == "default" {
            name.clone()
        } else {
            format!("profile {name}")
        };
        for (k, v) in ini_section(&text, &section) {
            match k.as_str() {
                "region" => out.region = Some(v),
                "endpoint_url" => out.endpoint_url = Some(v),
                "aws_access_key_id" if out.access_key_id.is_none() => out.access_key_id = Some(v),
                "aws_secret_access_key" if out.secret_access_key.is_none() => {
                    out.secret_access_key = Some(v)
                }
                _ => {}
            }
        }
    }
    out
}

/// `key = value` lines of the `[section]` of an INI text.
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = h.trim() == section;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod test {
    use super::*;

    fn p(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_keys() {
        let c = S3Config::from_url(
            "b",
            "x/y/",
            &p(&[
                ("endpoint", "http://127.0.0.1:8333"),
                ("allow_http", "true"),
                ("region", "eu-west-1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.prefix, "x/y");
        assert_eq!(c.addressing, Addressing::Path);
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        let c = S3Config::from_url("b", "", &[]).unwrap();
        assert_eq!(c.addressing, Addressing::VirtualHosted);
        let e = S3Config::from_url("b", "", &p(&[("endpont", "x")])).unwrap_err();
        assert!(e.to_string().contains("unknown query key 'endpont'"), "{e}");
        let e = S3Config::from_url("b", "", &p(&[("endpoint", "http://h:1")])).unwrap_err();
        assert!(e.to_string().contains("allow_http=true"), "{e}");
        assert!(S3Config::from_url("b", "", &p(&[("lock_lease", "0")])).is_err());
        assert_eq!(c.conditional, Conditional::Auto);
        for (v, want) in [
            ("auto", Conditional::Auto),
            ("off", Conditional::Off),
            ("on", Conditional::Required),
        ] {
            let c = S3Config::from_url("b", "", &p(&[("conditional", v)])).unwrap();
            assert_eq!(c.conditional, want);
        }
        let e = S3Config::from_url("b", "", &p(&[("conditional", "no")])).unwrap_err();
        assert!(e.to_string().contains("auto, on or off"), "{e}");
    }

    #[test]
    fn ini_sections() {
        let t = "[default]\naws_access_key_id = A\n[other]\naws_access_key_id=B\n# c\naws_secret_access_key = S\n";
        assert_eq!(
            ini_section(t, "other"),
            vec![
                ("aws_access_key_id".to_string(), "B".to_string()),
                ("aws_secret_access_key".to_string(), "S".to_string())
            ]
        );
        assert_eq!(ini_section(t, "default").len(), 1);
        assert!(ini_section(t, "none").is_empty());
    }
}
