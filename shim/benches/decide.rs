//! Decision time against inventory size: one create's whole inventory step (open the
//! inventory, sum live usage, run the reservation and quota checks, record the decision
//! and the live container, commit, close) with 10, 1,000 and 100,000 decisions already
//! recorded. It must stay flat: the checks read live containers only, through partial
//! indexes.
//!
//!     cargo bench -p mlenv --bench decide
//!
//! Each measured iteration records one more decision, so the table grows by a few
//! thousand rows during a run; at 100,000 that is noise, at 10 it is the point.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mlenv::admission::{self, Request};
use mlenv::host::ProcHost;
use mlenv::inventory::{Decision, Inventory, Outcome};
use mlenv::policy::Policy;
use std::path::Path;
use std::time::Duration;

/// Live containers kept throughout: a busy shared server.
const LIVE: usize = 50;

fn fill(path: &Path, rows: usize) {
    let mut inv = Inventory::open(path).unwrap();
    let host = ProcHost::default();
    for i in 0..rows {
        let mut d = Decision::new(i as i64, &format!("old{i}"), Path::new("/b"));
        d.uid = 1000 + (i % 7) as u32;
        d.project = Some(format!("p{}", i % 5));
        d.effective.memory = Some(1 << 30);
        d.effective.cpus = Some(1.0);
        // The newest LIVE are admitted and still live; the rest are refusals.
        let live = i + LIVE >= rows;
        inv.admit(&mut d, Default::default(), &host, |_, d| {
            d.outcome = if live {
                Outcome::Admitted
            } else {
                Outcome::Refused
            };
            d.reason = "bench".into();
            false
        })
        .unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let mut policy: Policy = toml::from_str(
        "[[quota]]\nproject = \"p1\"\nmax_containers = 1000\nmax_memory = \"10T\"\n[[quota]]\nothers = true\nmax_containers = 1000\n",
    )
    .unwrap();
    policy.validate().unwrap();
    let host = ProcHost::default();
    let state = mlenv::host::Host::probe(&host).unwrap();
    let mut group = c.benchmark_group("decide");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(4));
    for rows in [10usize, 1_000, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mlenv.db");
        fill(&path, rows);
        let mut n = 0u64;
        group.bench_with_input(BenchmarkId::from_parameter(rows), &rows, |b, _| {
            b.iter(|| {
                n += 1;
                let mut inv = Inventory::open(&path).unwrap();
                let mut d = Decision::new(0, &format!("new{n}"), Path::new("/b"));
                d.uid = 1001;
                d.project = Some("p1".into());
                let req = Request {
                    uid: 1001,
                    project: d.project.clone(),
                    memory: Some(1 << 20),
                    cpus: Some(0.001),
                    gpus: 0,
                };
                inv.admit(&mut d, Default::default(), &host, |usage, d| {
                    let mut checks =
                        admission::reservation_checks(&policy.admission, &state, &usage.all, &req);
                    checks.extend(admission::quota_checks(&policy, usage, &req));
                    // Refuse, so that the live set stays at LIVE.
                    d.outcome = Outcome::Refused;
                    d.reason = checks
                        .iter()
                        .map(|c| c.text.as_str())
                        .collect::<Vec<_>>()
                        .join("; ");
                    false
                })
                .unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
