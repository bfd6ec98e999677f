//! Criterion micro-benchmarks of the pieces on the hot paths: hashing and compressing a page,
//! chunking a real database (page-aligned vs FastCDC), and a journal append (page cache only,
//! and with fdatasync). `cargo bench -p cln-backup-benches --bench micro`

use std::sync::Mutex;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use store::config::{ChunkerParams, ConfigBody};
use store::{BackupUrl, Durability, MasterKey, Repository};

fn db_bytes() -> Vec<u8> {
    std::fs::read(cln_backup_benches::testdata("db-s3.sqlite3")).expect("testdata/db-s3.sqlite3")
}

fn page(c: &mut Criterion) {
    let db = db_bytes();
    let p = &db[db.len() / 2 / 4096 * 4096..][..4096];
    let mut g = c.benchmark_group("page_4k");
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("blake3_keyed", |b| {
        b.iter(|| blake3::keyed_hash(&[7; 32], p))
    });
    g.bench_function("zstd3_compress", |b| {
        b.iter(|| zstd::bulk::compress(p, 3).expect("zstd"))
    });
    let z = zstd::bulk::compress(p, 3).expect("zstd");
    g.bench_function("zstd_decompress", |b| {
        b.iter(|| zstd::bulk::decompress(&z, 4096).expect("zstd"))
    });
    g.finish();
}

fn chunking(c: &mut Criterion) {
    let db = db_bytes();
    let mut g = c.benchmark_group("chunk_refs_db_s3");
    g.throughput(Throughput::Bytes(db.len() as u64));
    for (name, params) in [
        ("pages_1", ChunkerParams::Pages { pages: 1 }),
        (
            "cdc_16k",
            ChunkerParams::FastCdc {
                min: 4096,
                avg: 16384,
                max: 65536,
            },
        ),
    ] {
        for encrypt in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let body = ConfigBody {
                chunker: params.clone(),
                ..ConfigBody::default()
            };
            let repo = Repository::init(
                &BackupUrl::File(dir.path().join("repo")),
                Some(&MasterKey::generate()),
                encrypt,
                body,
            )
            .expect("init");
            let id = format!("{name}{}", if encrypt { "_enc" } else { "" });
            // As a snapshot reads it: window by window from the file (in the page cache).
            let path = cln_backup_benches::testdata("db-s3.sqlite3");
            g.bench_with_input(BenchmarkId::from_parameter(id), &path, |b, path| {
                b.iter(|| store::snapshot::file_chunk_refs(&repo, path).expect("chunk"))
            });
        }
    }
    g.finish();
}

fn journal(c: &mut Criterion) {
    let trace =
        cln_backup_benches::load_trace(&cln_backup_benches::testdata("trace-scale-30k.jsonl.zst"))
            .expect("trace");
    // An invoice batch (~1.1 KB), re-versioned on every iteration.
    let proto = trace[trace.len() / 2].clone();
    let mut g = c.benchmark_group("journal_append_invoice");
    g.sample_size(30);
    for (dur, name) in [
        (Durability::Flush, "flush"),
        (Durability::Fsync, "fdatasync"),
    ] {
        for encrypt in [false, true] {
            let dir = tempfile::tempdir_in(cln_backup_benches::bench_data()).expect("tempdir");
            let repo = Repository::init(
                &BackupUrl::File(dir.path().join("repo")),
                Some(&MasterKey::generate()),
                encrypt,
                ConfigBody::default(),
            )
            .expect("init");
            let w = Mutex::new(repo.writer("bench", dur).expect("writer"));
            let mut v = 0u32;
            let id = format!("{name}{}", if encrypt { "_enc" } else { "" });
            g.bench_function(id, |b| {
                b.iter(|| {
                    v += 1;
                    let mut batch = proto.clone();
                    batch.data_version = v;
                    w.lock().expect("lock").append(&batch).expect("append")
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, page, chunking, journal);
criterion_main!(benches);
