//! The log on a real device: an O_DIRECT file through io_uring, or an SPDK aio bdev over it
//! (KEEL_TEST_BACKEND=spdk, scripts/test-spdk).

use std::rc::Rc;

use keel_nvme::testing::open_test_device;
use keel_nvme::Region;

use super::*;

#[test]
fn append_flush_reopen_on_a_real_file() {
    let path = std::env::temp_dir().join(format!("keel-raftlog-test-{}.log", std::process::id()));
    let p = path.clone();
    run(move || async move {
        let size = 4 * SEG;
        let ents: Vec<_> = (1..=200)
            .map(|i| entry(i, 1, &data(3, i, 1, 700)))
            .collect();
        {
            let dev = Rc::new(open_test_device(&p, size).await);
            let log = RaftLog::open(Region::new(dev, 0, size).unwrap(), cfg())
                .await
                .unwrap();
            let f = flusher(&log);
            log.create_group(3, conf(&[1, 2, 3])).unwrap();
            for chunk in ents.chunks(7) {
                log.append(3, chunk).unwrap();
            }
            log.durable(log.last_lsn()).await.unwrap();
            assert!(log.stats().flushes > 0);
            drop(f);
        }
        let dev = Rc::new(open_test_device(&p, size).await);
        let back = RaftLog::open(Region::new(dev, 0, size).unwrap(), cfg())
            .await
            .unwrap();
        assert_eq!(back.groups(), vec![3]);
        assert_eq!(all_entries(&back, 3), ents);
    });
    std::fs::remove_file(&path).unwrap();
}
