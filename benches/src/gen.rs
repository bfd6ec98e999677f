//! A generated CLN-shaped database of at least 1 GiB, and a copy with ~1% of its pages changed.
//!
//! Built by replaying the scale trace (real schema, 30,014 real batches), then invoice-shaped
//! batches modelled on the trace's invoice statements (`UPDATE vars ... last_invoices_created_index`,
//! `INSERT INTO invoices ...`, the data_version bump), with random payment hashes, preimages,
//! bolt11 strings and descriptions, so that no page repeats. The 1% copy pays random invoices
//! (the `UPDATE invoices SET state = 1, pay_index = ...` a payment writes) until at least 1% of
//! the file's pages differ. Both files are cached under `target/bench-data/` (rebuilt when absent).

use std::io::Read;
use std::path::{Path, PathBuf};

use store::journal::{Batch, Record};
use store::replay::Replayer;

use crate::measure::Rng;

const BECH32: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
const WORDS: &[&str] = &[
    "coffee", "order", "tip", "perf", "ticket", "refund", "payment", "scale", "invoice", "test",
    "donation", "'q'", "\"dq\"", "é",
];

pub struct Generated {
    pub base: PathBuf,
    pub changed: PathBuf,
    pub size: u64,
    pub page_size: u64,
    pub pages_changed: u64,
}

fn invoice_batch(rng: &mut Rng, id: u64, version: u32) -> Batch {
    let hash = hex::encode(rng.bytes(32));
    let key = hex::encode(rng.bytes(32));
    let msat = 1_000_000 + rng.below(10_000_000_000);
    let blen = 330 + rng.below(260) as usize;
    let bolt11: String = std::iter::once(format!("lnbcrt{msat}0p1p"))
        .chain(
            rng.bytes(blen)
                .iter()
                .map(|b| (BECH32[(*b as usize) % 32] as char).to_string()),
        )
        .collect();
    let nwords = 4 + rng.below(28);
    let desc: Vec<&str> = (0..nwords)
        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
        .collect();
    let desc = format!("gen #{id} {}", desc.join(" ")).replace('\'', "''");
    Batch {
        data_version: version,
        writes: vec![
            format!("UPDATE vars SET intval={id} WHERE name='last_invoices_created_index';"),
            format!(
                "INSERT INTO invoices            ( id, payment_hash, payment_key, state            , msatoshi, label, expiry_time            , pay_index, msatoshi_received            , paid_timestamp, bolt11, description, features, local_offer_id)     VALUES ( {id}, x'{hash}', x'{key}', 0            , {msat}, 'gen-{id}', {}            , NULL, NULL            , NULL, '{bolt11}', '{desc}', x'02000002024100', NULL);",
                1_796_113_431 + id
            ),
            format!(
                "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = {}",
                version - 1
            ),
        ],
    }
}

/// Build (or reuse) the generated database of at least `min_bytes`.
pub fn database(min_bytes: u64) -> anyhow::Result<Generated> {
    let dir = crate::bench_data();
    let base = dir.join(format!("gen-{}m.sqlite3", min_bytes >> 20));
    let changed = dir.join(format!("gen-{}m-1pct.sqlite3", min_bytes >> 20));
    if !base.exists() {
        build_base(&base, min_bytes)?;
    }
    if !changed.exists() {
        build_changed(&base, &changed)?;
    }
    let size = std::fs::metadata(&base)?.len();
    let page_size = store::chunker::sqlite_page_size(&read_head(&base)?, "generated")? as u64;
    let pages_changed = changed_pages(&base, &changed, page_size)?;
    Ok(Generated {
        base,
        changed,
        size,
        page_size,
        pages_changed,
    })
}

fn read_head(p: &Path) -> anyhow::Result<Vec<u8>> {
    let mut h = vec![0u8; 100];
    std::fs::File::open(p)?.read_exact(&mut h)?;
    Ok(h)
}

fn build_base(out: &Path, min_bytes: u64) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let tmp = out.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let trace = crate::load_trace(&crate::testdata("trace-scale-30k.jsonl.zst"))?;
    let mut rp = Replayer::open(&tmp, true)?;
    let mut version = 0;
    for b in trace {
        if !b.is_pragma_only() {
            version = b.data_version;
        }
        rp.apply(&Record {
            batch: b,
            supersedes: false,
            time_ms: 0,
        })?;
    }
    rp.finish(&tmp)?;
    let conn = rusqlite::Connection::open(&tmp)?;
    let mut next_id: u64 =
        conn.query_row("SELECT max(id) FROM invoices", [], |r| r.get::<_, i64>(0))? as u64 + 1;
    drop(conn);
    let mut rng = Rng(0x5eed_c1b0);
    loop {
        let size = std::fs::metadata(&tmp)?.len();
        if size >= min_bytes {
            break;
        }
        // Each round: enough invoices for about 64 MiB (~1 KB each), one transaction.
        let mut rp = Replayer::open(&tmp, true)?;
        let n = ((min_bytes - size) / 1000).clamp(1000, 65_000);
        for _ in 0..n {
            version += 1;
            rp.apply(&Record {
                batch: invoice_batch(&mut rng, next_id, version),
                supersedes: false,
                time_ms: 0,
            })?;
            next_id += 1;
        }
        rp.finish(&tmp)?;
        eprintln!(
            "gen: {:.0} MB, {} invoices, {:.0} s",
            std::fs::metadata(&tmp)?.len() as f64 / 1e6,
            next_id - 1,
            t.elapsed().as_secs_f64()
        );
    }
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// Count pages that differ between two files of the same page size.
pub fn changed_pages(a: &Path, b: &Path, page: u64) -> anyhow::Result<u64> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut n = 0;
    loop {
        let ra = read_full(&mut fa, &mut ba)?;
        let rb = read_full(&mut fb, &mut bb)?;
        if ra == 0 && rb == 0 {
            break;
        }
        let len = ra.max(rb);
        for (pa, pb) in ba[..len]
            .chunks(page as usize)
            .zip(bb[..len].chunks(page as usize))
        {
            if pa != pb {
                n += 1;
            }
        }
        if ra != rb {
            n += (ra.abs_diff(rb) as u64).div_ceil(page);
        }
    }
    Ok(n)
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> anyhow::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let r = f.read(&mut buf[got..])?;
        if r == 0 {
            buf[got..].fill(0);
            break;
        }
        got += r;
    }
    Ok(got)
}

fn build_changed(base: &Path, out: &Path) -> anyhow::Result<()> {
    let tmp = out.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::copy(base, &tmp)?;
    let page_size = store::chunker::sqlite_page_size(&read_head(base)?, "generated")? as u64;
    let target = std::fs::metadata(base)?.len() / page_size / 100;
    let conn = rusqlite::Connection::open(&tmp)?;
    let (max_id, mut pay_index, mut version): (i64, i64, i64) = conn.query_row(
        "SELECT (SELECT max(id) FROM invoices), (SELECT coalesce(max(pay_index), 0) FROM invoices), (SELECT intval FROM vars WHERE name = 'data_version')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    drop(conn);
    let mut rng = Rng(0x1_0c4a_11ed);
    let mut rows = (target / 8).max(1);
    let mut done = 0u64;
    for _ in 0..8 {
        let mut rp = Replayer::open(&tmp, true)?;
        for _ in 0..rows {
            version += 1;
            pay_index += 1;
            let id = 1 + rng.below(max_id as u64);
            let b = Batch {
                data_version: version as u32,
                writes: vec![
                    format!("UPDATE invoices SET state=1, pay_index={pay_index}, msatoshi_received=msatoshi, paid_timestamp={}, paid_txid=NULL, paid_outnum=NULL, updated_index={pay_index} WHERE id={id} AND state=0;", 1_796_000_000 + pay_index),
                    format!("UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = {}", version - 1),
                ],
            };
            rp.apply(&Record {
                batch: b,
                supersedes: false,
                time_ms: 0,
            })?;
        }
        done += rows;
        rp.finish(&tmp)?;
        let now = changed_pages(base, &tmp, page_size)?;
        eprintln!(
            "gen: {now} pages changed of {} (target {target})",
            std::fs::metadata(base)?.len() / page_size
        );
        if now >= target {
            break;
        }
        rows = ((target - now) as f64 * done as f64 / now.max(1) as f64).ceil() as u64 + 10;
    }
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// `vars.data_version` of a database file.
pub fn data_version(path: &Path) -> anyhow::Result<u32> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(store::replay::data_version(
        &conn,
        &path.display().to_string(),
    )?)
}
