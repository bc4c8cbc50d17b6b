//! Transport tests over real TCP on 127.0.0.1, each in its own glommio executor. Every wait is
//! on an event (a frame arriving, a counter moving, a socket closing) with a deadline.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::faults::Faults;
use super::wire::{encode_frame, Hello};
use super::*;

/// Long enough for a loaded CI machine; a healthy run takes milliseconds.
const DEADLINE: Duration = Duration::from_secs(20);

fn run<F: Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

/// A port nobody listens on right now (the kernel picked it free; we release it for the test).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn cfg(node_id: u64, listen: SocketAddr, peers: &[(u64, SocketAddr)]) -> TransportConfig {
    TransportConfig {
        node_id,
        shard: 0,
        listen,
        peers: peers.iter().map(|&(n, a)| (n, vec![a])).collect(),
        frame_bytes_max: 1 << 20,
        queue_bytes_max: 16 << 20,
        backoff_min: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
        io_timeout: Duration::from_secs(5),
        inbound_conns_max: 8,
        secret: None,
    }
}

type Got = Rc<RefCell<Vec<Inbound>>>;

fn sink() -> (Got, Rc<dyn Fn(Inbound)>) {
    let got: Got = Rc::default();
    let g = got.clone();
    (got, Rc::new(move |m| g.borrow_mut().push(m)))
}

/// Checks `cond` after each short sleep until it holds; panics naming `what` past the deadline.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// Two transports, nodes 1 and 2, each knowing the other.
fn pair() -> (Rc<Transport>, Got, Rc<Transport>, Got) {
    let (a1, a2) = (free_addr(), free_addr());
    let (g1, f1) = sink();
    let (g2, f2) = sink();
    let t1 = Transport::start(cfg(1, a1, &[(2, a2)]), f1).unwrap();
    let t2 = Transport::start(cfg(2, a2, &[(1, a1)]), f2).unwrap();
    (t1, g1, t2, g2)
}

/// Payload `i`: its index, then a length that varies with it (0 to 300 more bytes).
fn payload(i: u32) -> Vec<u8> {
    let mut p = i.to_le_bytes().to_vec();
    p.extend((0..i.wrapping_mul(7919) % 301).map(|k| (k ^ i) as u8));
    p
}

fn index(p: &[u8]) -> u32 {
    u32::from_le_bytes(p[..4].try_into().unwrap())
}

/// Waits until the peer closes `s` (read returns end of stream or reset).
async fn wait_closed(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    let closed = glommio::timer::timeout(DEADLINE, async {
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "peer did not close the connection");
}

#[test]
fn ten_thousand_frames_each_way_arrive_in_order_and_intact() {
    run(|| async {
        let (t1, g1, t2, g2) = pair();
        const N: u32 = 10_000;
        for i in 0..N {
            t1.send(2, 0, payload(i));
            t2.send(1, 0, payload(i));
            if i % 97 == 0 {
                // Spread the sends over many loop iterations, so many writes.
                futures_lite::future::yield_now().await;
            }
        }
        wait_for("10,000 frames at each end", || {
            g1.borrow().len() == N as usize && g2.borrow().len() == N as usize
        })
        .await;
        for (got, from) in [(&g1, 2), (&g2, 1)] {
            for (i, m) in got.borrow().iter().enumerate() {
                assert_eq!((m.from_node, m.from_shard), (from, 0));
                assert_eq!(m.payload, payload(i as u32), "frame {i} from node {from}");
            }
        }
        for t in [&t1, &t2] {
            let s = t.stats();
            assert_eq!((s.frames_sent, s.frames_received), (N as u64, N as u64));
            assert_eq!(s.connects, 1);
            assert_eq!(
                s.bad_frames + s.dropped_queue_full + s.dropped_disconnected,
                0
            );
        }
        assert_eq!(t1.stats().bytes_sent, t2.stats().bytes_received);
    });
}

#[test]
fn sends_in_one_loop_iteration_go_out_in_few_writes() {
    run(|| async {
        let (t1, _g1, _t2, g2) = pair();
        for i in 0..1000 {
            t1.send(2, 0, payload(i));
        }
        wait_for("1,000 frames", || g2.borrow().len() == 1000).await;
        let s = t1.stats();
        assert_eq!(s.frames_sent, 1000);
        // One write for the hello, one for the batch, plus partial writes if the ~150 KiB batch
        // does not fit the socket buffer at once.
        assert!(s.writes <= 10, "{} writes for 1,000 frames", s.writes);
    });
}

#[test]
fn late_peer_gets_the_queued_frames_and_a_restarted_peer_gets_new_ones() {
    run(|| async {
        let (a1, a2) = (free_addr(), free_addr());
        let (_g1, f1) = sink();
        let t1 = Transport::start(cfg(1, a1, &[(2, a2)]), f1).unwrap();
        for i in 0..10 {
            t1.send(2, 0, payload(i));
        }
        wait_for("a refused connect", || t1.stats().connect_failures >= 1).await;

        let (g2, f2) = sink();
        let t2 = Transport::start(cfg(2, a2, &[(1, a1)]), f2.clone()).unwrap();
        wait_for("the 10 queued frames", || g2.borrow().len() == 10).await;
        let got: Vec<u32> = g2.borrow().iter().map(|m| index(&m.payload)).collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());

        // Restart node 2 on the same address. t1's connection to the old one is dead; its next
        // writes fail (counted) and it reconnects to the new one. Sending until something
        // arrives is the bounded retry: Raft's retransmission does the same.
        drop(t2);
        let (g2b, f2b) = sink();
        let t2b = Transport::start(cfg(2, a2, &[(1, a1)]), f2b).unwrap();
        let end = Instant::now() + DEADLINE;
        let mut i = 100;
        while g2b.borrow().is_empty() {
            assert!(Instant::now() < end, "restarted peer got nothing");
            t1.send(2, 0, payload(i));
            i += 1;
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        assert!(t1.stats().connects >= 2);
        // Order holds on the new connection too.
        wait_for("the rest of the probes", || {
            g2b.borrow().last().map(|m| index(&m.payload)) == Some(i - 1)
        })
        .await;
        let got: Vec<u32> = g2b.borrow().iter().map(|m| index(&m.payload)).collect();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        assert_eq!(t2b.stats().bad_frames, 0);
    });
}

#[test]
fn a_peer_that_restarted_while_the_connection_was_idle_gets_the_very_next_frame() {
    // A frame sent once (a forwarded request's reply) must not be lost in the half-closed
    // connection to the peer's previous process: the writer sees the close before it writes.
    run(|| async {
        let (a1, a2) = (free_addr(), free_addr());
        let (_g1, f1) = sink();
        let t1 = Transport::start(cfg(1, a1, &[(2, a2)]), f1).unwrap();
        let (g2, f2) = sink();
        let t2 = Transport::start(cfg(2, a2, &[(1, a1)]), f2).unwrap();
        t1.send(2, 0, payload(1));
        wait_for("the first frame", || g2.borrow().len() == 1).await;
        drop(t2);
        let (g2b, f2b) = sink();
        let _t2b = Transport::start(cfg(2, a2, &[(1, a1)]), f2b).unwrap();
        glommio::timer::sleep(IDLE_WAIT).await;
        t1.send(2, 0, payload(2));
        wait_for("the one frame after the restart", || {
            g2b.borrow().len() == 1
        })
        .await;
        assert_eq!(index(&g2b.borrow()[0].payload), 2);
        let st = t1.stats();
        assert_eq!((st.closed_idle, st.dropped_disconnected), (1, 0), "{st:?}");
    });
}

/// Longer than the writer's idle probe threshold (outbound::IDLE_PROBE_AFTER).
const IDLE_WAIT: Duration = Duration::from_millis(200);

#[test]
fn garbage_bad_crc_wrong_target_and_over_long_frames_close_only_their_connection() {
    run(|| async {
        let (t1, g1, t2, _g2) = pair();
        let addr = t1.local_addr();
        let hello = |to_node| {
            Hello {
                from_node: 9,
                from_shard: 0,
                to_node,
                to_shard: 0,
                auth: false,
            }
            .encode()
        };

        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage.write_all(&[0xAB; 64]).await.unwrap();
        wait_closed(&mut garbage).await;
        assert_eq!(t1.stats().bad_frames, 1);

        let mut wrong_target = TcpStream::connect(addr).await.unwrap();
        wrong_target.write_all(&hello(5)).await.unwrap();
        wait_closed(&mut wrong_target).await;
        assert_eq!(t1.stats().bad_frames, 2);

        let mut bad_crc = TcpStream::connect(addr).await.unwrap();
        let mut bytes = hello(1).to_vec();
        encode_frame(b"good", &mut bytes);
        encode_frame(b"flipped", &mut bytes);
        *bytes.last_mut().unwrap() ^= 1;
        bad_crc.write_all(&bytes).await.unwrap();
        wait_closed(&mut bad_crc).await;
        assert_eq!(t1.stats().bad_frames, 3);

        // frame_bytes_max on receive: the header alone condemns the frame.
        let mut too_long = TcpStream::connect(addr).await.unwrap();
        let mut bytes = hello(1).to_vec();
        bytes.extend_from_slice(&((1u32 << 20) + 1).to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        too_long.write_all(&bytes).await.unwrap();
        wait_closed(&mut too_long).await;
        assert_eq!(t1.stats().bad_frames, 4);

        // Only the good frame before the bad CRC was delivered; real peers still get through.
        assert_eq!(g1.borrow().len(), 1);
        assert_eq!(g1.borrow()[0].payload, b"good");
        t2.send(1, 0, b"real".to_vec());
        wait_for("the real peer's frame", || g1.borrow().len() == 2).await;
        assert_eq!(g1.borrow()[1].payload, b"real");
        assert_eq!(g1.borrow()[1].from_node, 2);
    });
}

#[test]
fn sender_refuses_over_long_payloads_and_unknown_destinations() {
    run(|| async {
        let (t1, _g1, _t2, g2) = pair();
        t1.send(2, 0, vec![0; (1 << 20) + 1]);
        t1.send(3, 0, b"no such node".to_vec());
        t1.send(2, 1, b"no such shard".to_vec());
        t1.send(2, 0, vec![7; 1 << 20]);
        wait_for("the largest allowed frame", || g2.borrow().len() == 1).await;
        assert_eq!(g2.borrow()[0].payload.len(), 1 << 20);
        let s = t1.stats();
        assert_eq!((s.dropped_oversize, s.dropped_unroutable), (1, 2));
    });
}

#[test]
fn queue_bytes_max_drops_the_newest_while_the_peer_is_down() {
    run(|| async {
        let (a1, a2) = (free_addr(), free_addr());
        let mut c = cfg(1, a1, &[(2, a2)]);
        c.frame_bytes_max = 200;
        c.queue_bytes_max = 10 * (100 + FRAME_HEADER_BYTES);
        let (_g1, f1) = sink();
        let t1 = Transport::start(c, f1).unwrap();
        for i in 0..20u32 {
            let mut p = payload(i);
            p.resize(100, 0);
            t1.send(2, 0, p);
        }
        assert_eq!(t1.stats().dropped_queue_full, 10);

        let (g2, f2) = sink();
        let _t2 = Transport::start(cfg(2, a2, &[(1, a1)]), f2).unwrap();
        wait_for("the 10 frames that fit", || g2.borrow().len() == 10).await;
        let got: Vec<u32> = g2.borrow().iter().map(|m| index(&m.payload)).collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    });
}

/// Sends 0..1000 from node 1 to node 2 under `plan`, then a marker without faults; returns the
/// indices node 2 received before the marker.
async fn received_under(plan: FaultPlan) -> Vec<u32> {
    let (t1, _g1, _t2, g2) = pair();
    t1.set_faults(Some(plan));
    for i in 0..1000 {
        t1.send(2, 0, payload(i));
    }
    t1.set_faults(None);
    t1.send(2, 0, payload(u32::MAX));
    wait_for("the marker", || {
        g2.borrow().last().map(|m| index(&m.payload)) == Some(u32::MAX)
    })
    .await;
    let got: Vec<u32> = g2.borrow().iter().map(|m| index(&m.payload)).collect();
    got[..got.len() - 1].to_vec()
}

#[test]
fn same_seed_drops_the_same_frames() {
    run(|| async {
        let plan = FaultPlan {
            seed: 7,
            drop_per_mille: 300,
            ..FaultPlan::default()
        };
        let a = received_under(plan.clone()).await;
        let b = received_under(plan.clone()).await;
        assert_eq!(a, b);
        let mut f = Faults::new(plan);
        let predicted: Vec<u32> = (0..1000).filter(|_| f.decide(2) != Verdict::Drop).collect();
        assert_eq!(a, predicted);
        assert!((600..800).contains(&a.len()), "{} of 1000 kept", a.len());
        let c = received_under(FaultPlan {
            seed: 8,
            drop_per_mille: 300,
            ..FaultPlan::default()
        })
        .await;
        assert_ne!(a, c);
    });
}

#[test]
fn duplicates_and_delays_deliver_every_frame_twice() {
    run(|| async {
        let (t1, _g1, _t2, g2) = pair();
        t1.set_faults(Some(FaultPlan {
            seed: 1,
            duplicate_per_mille: 1000,
            delay_max: Duration::from_millis(3),
            ..FaultPlan::default()
        }));
        for i in 0..200 {
            t1.send(2, 0, payload(i));
        }
        wait_for("400 copies", || g2.borrow().len() == 400).await;
        let mut count: HashMap<u32, u32> = HashMap::new();
        for m in g2.borrow().iter() {
            assert_eq!(m.payload, payload(index(&m.payload)));
            *count.entry(index(&m.payload)).or_default() += 1;
        }
        assert!(count.len() == 200 && count.values().all(|&c| c == 2));
    });
}

#[test]
fn partitioned_node_gets_nothing_and_is_not_heard() {
    run(|| async {
        let (t1, g1, t2, g2) = pair();
        t1.set_faults(Some(FaultPlan {
            partitioned: HashSet::from([2]),
            ..FaultPlan::default()
        }));
        for i in 0..100 {
            t1.send(2, 0, payload(i));
            t2.send(1, 0, payload(i));
        }
        // 100 refused on send, 100 arrived from node 2 and dropped.
        wait_for("200 partition drops", || t1.stats().dropped_faults == 200).await;
        assert_eq!(t1.stats().frames_received, 100);
        assert!(g1.borrow().is_empty());
        assert!(
            t1.heard().is_empty(),
            "dropped frames are not hearing the node"
        );
        assert_eq!(t2.heard().len(), 0);

        let before = Instant::now();
        t1.set_faults(None);
        t1.send(2, 0, payload(1000));
        t2.send(1, 0, payload(1001));
        wait_for("frames after healing", || {
            g1.borrow().len() == 1 && g2.borrow().len() == 1
        })
        .await;
        assert_eq!(index(&g2.borrow()[0].payload), 1000);
        assert_eq!(index(&g1.borrow()[0].payload), 1001);
        assert_eq!(t2.stats().frames_received, 1);
        for (t, from) in [(&t1, 2), (&t2, 1)] {
            let heard = t.heard();
            assert_eq!(heard.len(), 1, "{heard:?}");
            assert!(heard[0].0 == from && heard[0].1 >= before, "{heard:?}");
        }
    });
}

#[test]
fn config_validation_names_key_value_and_rule() {
    let base = cfg(1, free_addr(), &[]);
    let mut c = base.clone();
    c.frame_bytes_max = 0;
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.starts_with("transport.frame_bytes_max = 0: must be"),
        "{e}"
    );
    let mut c = base.clone();
    c.queue_bytes_max = c.frame_bytes_max;
    assert!(c.validate().is_err());
    let mut c = base.clone();
    c.backoff_min = Duration::from_secs(1);
    assert!(c.validate().is_err());
    let mut c = base;
    c.io_timeout = Duration::ZERO;
    assert!(c.validate().is_err());
}

#[test]
fn inbound_conns_max_closes_the_extra_connection() {
    run(|| async {
        let (a1, a2) = (free_addr(), free_addr());
        let mut c = cfg(1, a1, &[(2, a2)]);
        c.inbound_conns_max = 2;
        let (g1, f1) = sink();
        let t1 = Transport::start(c, f1).unwrap();
        let (_g2, f2) = sink();
        let t2 = Transport::start(cfg(2, a2, &[(1, a1)]), f2).unwrap();

        // Two silent connections take both slots (until io_timeout, or until they close).
        let silent1 = TcpStream::connect(a1).await.unwrap();
        let _silent2 = TcpStream::connect(a1).await.unwrap();
        wait_for("both slots taken", || t1.inner.inbound_conns.get() == 2).await;
        let mut third = TcpStream::connect(a1).await.unwrap();
        wait_closed(&mut third).await;
        assert_eq!(t1.stats().rejected_connections, 1);

        drop(silent1);
        wait_for("a slot freed", || t1.inner.inbound_conns.get() == 1).await;
        t2.send(1, 0, b"real".to_vec());
        wait_for("the real peer's frame", || g1.borrow().len() == 1).await;
        assert_eq!(t1.stats().bad_frames, 0);
    });
}

/// Two transports whose nodes hold these secrets (`None`: open).
fn pair_with(s1: Option<&[u8]>, s2: Option<&[u8]>) -> (Rc<Transport>, Got, Rc<Transport>, Got) {
    let (a1, a2) = (free_addr(), free_addr());
    let (g1, f1) = sink();
    let (g2, f2) = sink();
    let mut c1 = cfg(1, a1, &[(2, a2)]);
    c1.secret = s1.map(PeerSecret::new);
    let mut c2 = cfg(2, a2, &[(1, a1)]);
    c2.secret = s2.map(PeerSecret::new);
    (
        Transport::start(c1, f1).unwrap(),
        g1,
        Transport::start(c2, f2).unwrap(),
        g2,
    )
}

#[test]
fn peers_with_the_same_secret_exchange_frames() {
    run(|| async {
        let s: &[u8] = b"cluster-secret-0123";
        let (t1, g1, t2, g2) = pair_with(Some(s), Some(s));
        for i in 0..100 {
            t1.send(2, 0, payload(i));
            t2.send(1, 0, payload(i));
        }
        wait_for("100 frames at each end", || {
            g1.borrow().len() == 100 && g2.borrow().len() == 100
        })
        .await;
        assert_eq!(g2.borrow()[99].payload, payload(99));
        assert_eq!((t1.stats().bad_auth, t2.stats().bad_auth), (0, 0));
    });
}

#[test]
fn a_peer_without_the_secret_is_refused_and_nothing_it_sends_arrives() {
    type Secret = Option<&'static [u8]>;
    let cases: [(Secret, Secret); 3] = [
        (Some(b"cluster-secret-0123"), Some(b"cluster-secret-XXXX")),
        (None, Some(b"cluster-secret-0123")),
        (Some(b"cluster-secret-0123"), None),
    ];
    for (s1, s2) in cases {
        run(move || async move {
            let (t1, _g1, t2, g2) = pair_with(s1, s2);
            // Node 1 keeps trying (each send after a refusal reconnects); node 2 refuses each.
            wait_for("node 2 refusing node 1's connections", || {
                t1.send(2, 0, payload(1));
                t2.stats().bad_auth >= 3
            })
            .await;
            assert!(
                g2.borrow().is_empty(),
                "a frame of an unproven peer arrived"
            );
        });
    }
}

#[test]
fn a_raw_connection_that_cannot_answer_the_challenge_is_closed() {
    run(|| async {
        let s: &[u8] = b"cluster-secret-0123";
        let (_t1, _g1, t2, g2) = pair_with(Some(s), Some(s));
        let addr = t2.local_addr();
        // A flagged hello, then a made-up answer to the nonce, then a frame.
        let hello = Hello {
            from_node: 1,
            from_shard: 0,
            to_node: 2,
            to_shard: 0,
            auth: true,
        };
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&hello.encode()).await.unwrap();
        let mut nonce = [0u8; super::wire::NONCE_BYTES];
        c.read_exact(&mut nonce).await.unwrap();
        let mut forged = [0u8; super::wire::MAC_BYTES];
        forged[..super::wire::NONCE_BYTES].copy_from_slice(&nonce);
        c.write_all(&forged).await.unwrap();
        let mut frame = Vec::new();
        encode_frame(b"forged", &mut frame);
        let _ = c.write_all(&frame).await;
        wait_closed(&mut c).await;
        wait_for("bad_auth counted", || t2.stats().bad_auth == 1).await;
        assert!(g2.borrow().is_empty());
    });
}
