//! Shared helpers of the measurement programs in `src/bin/`.

use std::path::{Path, PathBuf};

use store::Batch;

pub fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(name)
}

/// Parse a trace (one db_write params object per line), zstd-compressed or not.
pub fn load_trace(path: &Path) -> anyhow::Result<Vec<Batch>> {
    Ok(store::journal::trace::load(path)?)
}

pub fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                n += dir_size(&path);
            } else if let Ok(m) = e.metadata() {
                n += m.len();
            }
        }
    }
    n
}

/// Bytes of the repository's objects by directory (config, snapshots, index, packs, journal).
pub fn repo_bytes(root: &Path) -> (u64, u64, u64) {
    let packs = dir_size(&root.join("packs")) + dir_size(&root.join("index"));
    let manifests = dir_size(&root.join("snapshots"));
    let journal = dir_size(&root.join("journal"));
    (packs, manifests, journal)
}

pub mod driver;
pub mod gen;
pub mod measure;

/// Where generated inputs are cached between runs (under the shared target dir, never committed).
pub fn bench_data() -> PathBuf {
    let p = std::env::var_os("BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"));
    let _ = std::fs::create_dir_all(&p);
    p
}

/// The value after `key` on the command line.
pub fn arg(key: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == key)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

pub fn flag(key: &str) -> bool {
    std::env::args().any(|a| a == key)
}

/// Parse `pages:N` or `cdc:AVG` (min = avg/4, max = avg*4).
pub fn parse_chunker(s: &str) -> anyhow::Result<store::config::ChunkerParams> {
    use store::config::ChunkerParams;
    Ok(match s.split_once(':') {
        Some(("pages", n)) => ChunkerParams::Pages { pages: n.parse()? },
        Some(("cdc", n)) => {
            let avg: u32 = n.parse()?;
            ChunkerParams::FastCdc {
                min: avg / 4,
                avg,
                max: avg * 4,
            }
        }
        _ => anyhow::bail!("chunker: pages:N or cdc:AVG, not {s}"),
    })
}

pub fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

/// The end of a campaign binary: each failure, the details, the summary line; exit 1 on a
/// failure.
pub fn campaign_end(failures: &[String], details: &str, summary: &str) -> std::process::ExitCode {
    for f in failures {
        println!("FAILURE: {f}");
    }
    println!("{details}");
    println!("{summary}");
    match failures.is_empty() {
        true => std::process::ExitCode::SUCCESS,
        false => std::process::ExitCode::from(1),
    }
}
