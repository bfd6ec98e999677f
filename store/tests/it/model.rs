//! The store against a reference model: random operations (appends, crashes before COMMIT,
//! injected faults and crashes, compactions, prunes, restores) from fixed seeds. The same driver
//! (`store::model::run`) is a fuzz target. `MODEL_SEEDS=N` runs more seeds.

fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn store_matches_the_model() {
    let seeds: u64 = std::env::var("MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let mut total = 0;
    for seed in 0..seeds {
        let dir = tempfile::tempdir().unwrap();
        let data = bytes(seed, 600);
        match store::model::run(&data, dir.path()) {
            Ok(n) => total += n,
            Err(e) => panic!("seed {seed}: {e}"),
        }
    }
    assert!(total > 100 * seeds as usize);
}

#[test]
#[ignore]
fn one_seed() {
    let seed: u64 = std::env::var("MODEL_SEED").unwrap().parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    if let Err(e) = store::model::run(&bytes(seed, 600), dir.path()) {
        panic!("seed {seed}: {e}");
    }
}
