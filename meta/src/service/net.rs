//! TCP for a meta replica: the accept loop, one task per connection (Raft frames from peers are
//! handed to the driver; each request frame is answered in order), and one writer per peer that
//! connects (with back-off) while Raft frames are queued for it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use keel_raftlog::Signal;

use super::Service;
use crate::proto::{self, Kind, Response, FRAME_HEADER_BYTES};

/// Connections one replica serves at once (nodes, ctl, peers); more are closed at accept.
const CONNECTIONS_MAX: usize = 4096;
/// Raft frames queued for one peer at most; past it new ones are dropped (Raft resends).
const PEER_QUEUE_BYTES_MAX: usize = 16 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// A peer that stops reading fails the write after this long, and is reconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The outbound queue of one peer.
pub(super) struct PeerOut {
    addr: String,
    queue: RefCell<VecDeque<Vec<u8>>>,
    queued_bytes: Cell<usize>,
    wake: Signal,
}

impl PeerOut {
    pub(super) fn new(addr: String) -> Rc<PeerOut> {
        Rc::new(PeerOut {
            addr,
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            wake: Signal::default(),
        })
    }

    pub(super) fn send_raft(&self, m: &raft::eraftpb::Message) {
        let payload = protobuf::Message::write_to_bytes(m).expect("a raft-rs message encodes");
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
        proto::encode_frame(Kind::Raft, &payload, &mut frame);
        if self.queued_bytes.get() + frame.len() > PEER_QUEUE_BYTES_MAX {
            return;
        }
        self.queued_bytes.set(self.queued_bytes.get() + frame.len());
        self.queue.borrow_mut().push_back(frame);
        self.wake.notify();
    }
}

pub(super) async fn peer_writer(p: Rc<PeerOut>) {
    let mut stream: Option<TcpStream> = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        if p.queue.borrow().is_empty() {
            p.wake.wait().await;
            continue;
        }
        // Whatever else becomes runnable this turn queues its frames first: one write for all.
        futures_lite::future::yield_now().await;
        if stream.is_none() {
            match connect(&p.addr).await {
                Ok(s) => {
                    stream = Some(s);
                    backoff = BACKOFF_MIN;
                }
                Err(_) => {
                    // Frames queued for a peer that is down are stale by the time it is back.
                    p.queue.borrow_mut().clear();
                    p.queued_bytes.set(0);
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        let buf: Vec<u8> = {
            let mut q = p.queue.borrow_mut();
            p.queued_bytes.set(0);
            q.drain(..).flatten().collect()
        };
        let s = stream.as_mut().expect("connected above");
        if s.write_all(&buf).await.is_err() {
            stream = None; // Raft resends what mattered
        }
    }
}

async fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let sa: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let s = TcpStream::connect_timeout(sa, CONNECT_TIMEOUT)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
    Ok(s)
}

/// Whether the meta leader can open a TCP connection to `addr` (a registering node's peer
/// address: the other nodes must reach it there).
pub(super) async fn reachable(addr: &str) -> Result<(), String> {
    connect(addr).await.map(drop).map_err(|e| e.to_string())
}

pub(super) async fn accept_loop(svc: Rc<Service>, listener: TcpListener) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if open.get() >= CONNECTIONS_MAX {
                    continue; // dropped: closed
                }
                open.set(open.get() + 1);
                let (svc, open) = (svc.clone(), open.clone());
                glommio::spawn_local(async move {
                    serve_conn(&svc, stream).await;
                    open.set(open.get() - 1);
                })
                .detach();
            }
            Err(e) => {
                eprintln!("keel-meta: accept failed: {e}");
                glommio::timer::sleep(BACKOFF_MIN).await;
            }
        }
    }
}

async fn serve_conn(svc: &Rc<Service>, mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
    loop {
        let mut h = [0u8; FRAME_HEADER_BYTES];
        if s.read_exact(&mut h).await.is_err() {
            return;
        }
        let (kind, len, crc) = match proto::decode_header(&h) {
            Ok(x) => x,
            Err(e) => {
                if h[1] == Kind::Request as u8 {
                    // Say why before closing: a client of another version can tell its user.
                    let r = Response::Refused(format!("bad request frame: {e}"));
                    let _ = write_response(&mut s, &r).await;
                }
                return;
            }
        };
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() || proto::check_crc(&payload, crc).is_err() {
            return;
        }
        match kind {
            Kind::Raft => {
                let Ok(m) = protobuf::Message::parse_from_bytes(&payload) else {
                    return;
                };
                svc.inbox.borrow_mut().push_back(m);
                svc.wake.notify();
            }
            Kind::Request => {
                let r = match proto::decode_request(&payload) {
                    Ok(req) => super::handle::handle(svc, req).await,
                    Err(e) => Response::Refused(format!("bad request: {e}")),
                };
                if write_response(&mut s, &r).await.is_err() {
                    return;
                }
            }
            Kind::Response => return,
        }
    }
}

async fn write_response(s: &mut TcpStream, r: &Response) -> std::io::Result<()> {
    let payload = proto::encode_response(r);
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    proto::encode_frame(Kind::Response, &payload, &mut frame);
    s.write_all(&frame).await
}
