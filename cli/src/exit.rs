//! Exit codes and the one-line reason on stderr.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed (I/O, corrupt or missing repository, wrong key, lock held, ...) |
//! | 2 | usage error: bad arguments, a malformed or relative URL, an unknown snapshot id, a version beyond the journal |
//! | 3 | `verify` found problems (the report lists them) |
//! | 4 | refused for safety: the node is running, a repository or restore target exists, backup.lock points elsewhere, the repository is not the one pinned or not bound to the key, the journal's end is damaged, the backup is older than an anchor shows |

pub const OK: i32 = 0;
pub const FAILED: i32 = 1;
pub const USAGE: i32 = 2;
pub const PROBLEMS: i32 = 3;
pub const REFUSED: i32 = 4;

/// An error that carries its own exit code (the message is the error's text).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Problems(String),
}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    CliError::Usage(msg.into()).into()
}

pub fn refused(msg: impl Into<String>) -> anyhow::Error {
    CliError::Refused(msg.into()).into()
}

pub fn code_of(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<CliError>() {
            return match c {
                CliError::Usage(_) => USAGE,
                CliError::Refused(_) => REFUSED,
                CliError::Problems(_) => PROBLEMS,
            };
        }
        if let Some(s) = cause.downcast_ref::<store::Error>() {
            return match s {
                store::Error::BadUrl(_)
                | store::Error::NoSuchSnapshot(_)
                | store::Error::VersionNotAvailable { .. } => USAGE,
                store::Error::TargetExists(_)
                | store::Error::RepositoryExists { .. }
                | store::Error::IdentityMismatch { .. }
                | store::Error::Unbound { .. }
                | store::Error::DamagedTail { .. }
                | store::Error::OlderThanAnchor { .. } => REFUSED,
                _ => FAILED,
            };
        }
    }
    FAILED
}

/// Print the reason (one line on stderr; with `--json` also `{"error", "exit_code"}` on stdout)
/// and return the exit code.
pub fn report(e: &anyhow::Error, json: bool) -> i32 {
    let code = code_of(e);
    // anyhow's alternate form joins the context chain with ": " on one line.
    let line = format!("{e:#}").replace('\n', " ");
    eprintln!("backup-cli: error: {line}");
    // verify --json has printed its report (with the problems) already.
    if json && code != PROBLEMS {
        println!(
            "{}",
            serde_json::json!({ "error": line, "exit_code": code })
        );
    }
    code
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn codes_follow_the_cause_chain() {
        let e = anyhow::Error::from(store::Error::TargetExists("x".into())).context("restoring");
        assert_eq!(code_of(&e), REFUSED);
        let e = anyhow::Error::from(store::Error::NoSuchSnapshot("ab".into()));
        assert_eq!(code_of(&e), USAGE);
        assert_eq!(code_of(&anyhow::anyhow!("disk on fire")), FAILED);
        assert_eq!(code_of(&usage("bad")), USAGE);
        assert_eq!(OK, 0);
    }
}
