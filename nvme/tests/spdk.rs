//! The SPDK backend against real SPDK bdevs: an aio bdev on a plain file (its bytes checked in
//! the file afterwards) and a malloc bdev. Needs an installed SPDK, hugepages and root; run by
//! scripts/test-spdk (`cargo test -p keel-nvme --features spdk --test spdk`).
#![cfg(feature = "spdk")]

use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;

use glommio::LocalExecutorBuilder;
use keel_nvme::{AnyDevice, Backend, Device, SpdkConfig, SpdkDevice, BLOCK_BYTES};

const AIO_BYTES: u64 = 64 << 20;

/// One SPDK per process: every test uses this config (two aio bdevs and a malloc one).
fn config() -> &'static (SpdkConfig, PathBuf) {
    static CFG: OnceLock<(SpdkConfig, PathBuf)> = OnceLock::new();
    CFG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("keel-spdk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut bdevs = Vec::new();
        for name in ["aio0", "aio1"] {
            let file = dir.join(format!("{name}.img"));
            std::fs::File::create(&file).unwrap().set_len(AIO_BYTES).unwrap();
            bdevs.push(format!(
                r#"{{"method": "bdev_aio_create", "params": {{"name": "{name}", "filename": "{}", "block_size": 4096}}}}"#,
                file.display()
            ));
        }
        bdevs.push(
            r#"{"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 2048, "block_size": 4096}}"#
                .into(),
        );
        let json = format!(
            r#"{{"subsystems": [{{"subsystem": "bdev", "config": [{}]}}]}}"#,
            bdevs.join(", ")
        );
        let path = dir.join("spdk.json");
        std::fs::write(&path, json).unwrap();
        (
            SpdkConfig {
                json_config: path.display().to_string(),
                mem_size_mb: 0,
            },
            dir,
        )
    })
}

fn on_executor<T: Send + 'static>(f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    LocalExecutorBuilder::default()
        .spawn(move || async move { f().await })
        .unwrap()
        .join()
        .unwrap()
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn writes_reach_the_file_and_read_back_at_any_offset() {
    let (cfg, dir) = config();
    let cfg = cfg.clone();
    on_executor(async move || {
        let dev = SpdkDevice::open("aio0", &cfg, AIO_BYTES).await.unwrap();
        assert_eq!(dev.size_bytes(), AIO_BYTES);
        for (i, at) in [0u64, 4096, 1 << 20, AIO_BYTES - 8192]
            .into_iter()
            .enumerate()
        {
            let mut buf = dev.alloc(8192);
            buf.copy_from_slice(&pattern(i as u8, 8192));
            dev.write_at(buf, at).await.unwrap();
        }
        dev.sync().await.unwrap();
        let got = dev.read_at(4096 + 100, 5000).await.unwrap();
        assert_eq!(&got[..], &pattern(1, 8192)[100..5100]);
        let got = dev.read_at(1 << 20, 8192).await.unwrap();
        assert_eq!(&got[..], &pattern(2, 8192)[..]);
        // Many in flight at once, each with its own buffer.
        let reads = (0..64).map(|_| dev.read_at(AIO_BYTES - 8192, 8192));
        for r in futures::future::join_all(reads).await {
            assert_eq!(&r.unwrap()[..], &pattern(3, 8192)[..]);
        }
    });
    // The bytes are in the file itself, where the aio bdev wrote them.
    let file = std::fs::read(dir.join("aio0.img")).unwrap();
    assert_eq!(&file[4096..4096 + 8192], &pattern(1, 8192)[..]);
    assert_eq!(&file[..4096], &pattern(0, 8192)[..4096]);
}

#[test]
fn bad_requests_and_bad_bdevs_are_refused_with_a_reason() {
    let (cfg, _) = config();
    let cfg = cfg.clone();
    on_executor(async move || {
        let err = SpdkDevice::open("nosuch", &cfg, AIO_BYTES)
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("spdk bdev nosuch: cannot open it"),
            "{err}"
        );
        let err = SpdkDevice::open("Malloc0", &cfg, AIO_BYTES)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("holds 8388608 bytes"), "{err}");
        let dev = SpdkDevice::open("aio1", &cfg, 1 << 20).await.unwrap();
        let err = dev.write_at(dev.alloc(4096), 1 << 20).await.unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        assert!(dev.read_at((1 << 20) - 10, 20).await.is_err());
        // A read dropped in flight: its buffer stays with SPDK until the completion.
        {
            let f = std::pin::pin!(dev.read_at(0, 4096));
            let _ = f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        }
        // A device dropped while SPDK still holds a dropped future's write: it waits for the
        // completion before closing its channel.
        {
            let other = SpdkDevice::open("aio1", &cfg, 1 << 20).await.unwrap();
            let f = std::pin::pin!(other.write_at(other.alloc(65536), 65536));
            let _ = f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        }
        let mut buf = dev.alloc(BLOCK_BYTES as usize);
        buf[..5].copy_from_slice(b"after");
        dev.write_at(buf, 0).await.unwrap();
        assert_eq!(&dev.read_at(0, 5).await.unwrap()[..], b"after");
    });
}

#[test]
fn a_memory_bdev_and_the_backend_enum_work_from_two_threads_at_once() {
    let (cfg, _) = config();
    let threads: Vec<_> = (0..2u8)
        .map(|t| {
            let backend = Backend::Spdk(cfg.clone());
            std::thread::spawn(move || {
                on_executor(async move || {
                    let name = if t == 0 { "Malloc0" } else { "aio1" };
                    let dev = AnyDevice::open(&backend, name.as_ref(), 4 << 20)
                        .await
                        .unwrap();
                    for round in 0..50u8 {
                        let mut buf = dev.alloc(4096);
                        buf.copy_from_slice(&pattern(round ^ t, 4096));
                        let at = (round as u64 % 8) * 4096 + (1 << 20);
                        dev.write_at(buf, at).await.unwrap();
                        assert_eq!(
                            &dev.read_at(at, 4096).await.unwrap()[..],
                            &pattern(round ^ t, 4096)[..]
                        );
                    }
                    dev.sync().await.unwrap();
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
