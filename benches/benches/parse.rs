//! Parser throughput on the request shapes that dominate a cache's traffic.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use keel_node::protocol::{parse, Limits, Parse};

/// Parses every request in `buf`, as the shard loop does with one read's worth of bytes.
fn parse_all(buf: &[u8], limits: &Limits) -> usize {
    let mut at = 0;
    let mut n = 0;
    while at < buf.len() {
        match parse(&buf[at..], limits) {
            Parse::Done { req, consumed } => {
                black_box(&req);
                at += consumed;
                n += 1;
            }
            other => panic!("unexpected parse outcome: {other:?}"),
        }
    }
    n
}

fn bench_parse(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("parse");

    let mut pipelined = Vec::new();
    for i in 0..100 {
        pipelined.extend_from_slice(format!("get user:{i:08}\r\n").as_bytes());
    }
    group.throughput(Throughput::Bytes(pipelined.len() as u64));
    group.bench_function("pipelined_100_get", |b| {
        b.iter(|| assert_eq!(parse_all(black_box(&pipelined), &limits), 100))
    });

    let mut multiget = b"get".to_vec();
    for i in 0..100 {
        multiget.extend_from_slice(format!(" user:{i:08}").as_bytes());
    }
    multiget.extend_from_slice(b"\r\n");
    group.throughput(Throughput::Bytes(multiget.len() as u64));
    group.bench_function("multiget_100_keys", |b| {
        b.iter(|| assert_eq!(parse_all(black_box(&multiget), &limits), 1))
    });

    let mut set = b"set user:00000001 0 3600 100\r\n".to_vec();
    set.extend_from_slice(&[b'x'; 100]);
    set.extend_from_slice(b"\r\n");
    group.throughput(Throughput::Bytes(set.len() as u64));
    group.bench_function("set_100_byte_value", |b| {
        b.iter(|| assert_eq!(parse_all(black_box(&set), &limits), 1))
    });

    let mg = b"mg user:00000001 v k t f c s O12345678 q\r\n".to_vec();
    group.throughput(Throughput::Bytes(mg.len() as u64));
    group.bench_function("mg_with_flags", |b| {
        b.iter(|| assert_eq!(parse_all(black_box(&mg), &limits), 1))
    });

    group.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
