//! The client library: what keel-node and `keel-meta ctl` call to talk to the meta service.
//!
//! [`MetaClient`] speaks the request protocol ([`crate::proto`]) to a meta group given as its
//! replicas' addresses (`--meta ADDR[,ADDR...]`): it finds the leader (a follower answers with
//! the leader's address; an unreachable replica is skipped), retries what may be retried (no
//! leader yet, a commit that timed out, a dropped connection) a bounded number of times, and
//! returns a refusal at once with its message. It is blocking (std::net, with timeouts), so it
//! runs on any thread: keel-node runs it on a thread of its own beside its shards, never on a
//! shard's executor.
//!
//! [`NodeSession`] is a node's side of registration and heartbeats: it registers, heartbeats
//! with the node's per-partition facts, keeps the latest [`RoutingTable`] in a
//! [`RoutingCache`], and hands back the [`NodeCommand`]s the node must carry out. [`spawn_heartbeats`] runs it on a thread
//! at the interval the meta service asks for.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::machine::Command;
use crate::machine::Registration;
use crate::placement::{NodeId, PartitionId};
use crate::proto::{
    self, Heartbeat, HeartbeatReply, Kind, NodeCommand, NodeReport, Registered, Request, Response,
    RouteNode, RoutingTable, Status, FRAME_HEADER_BYTES,
};
use crate::tables::{TableDef, TableInfo};

/// Errors of the client, one per thing a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request is wrong (the message says how); retrying will not help.
    #[error("{0}")]
    Refused(String),
    /// The heartbeat's node is not registered (removed meanwhile): register again.
    #[error("the meta service does not know this node: register again")]
    NotRegistered,
    /// No replica answered as leader within the retries.
    #[error("no meta leader reachable at {addrs} after {attempts} attempts: {last}")]
    Unavailable {
        addrs: String,
        attempts: u32,
        last: String,
    },
    #[error("bad --meta address {addr}: {why}")]
    BadAddress { addr: String, why: String },
    #[error("the meta service answered {0} to a request that does not expect it")]
    Unexpected(String),
}

/// Timeouts and retry bounds of a [`MetaClient`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub connect_timeout: Duration,
    /// For one request's response (a commit on the meta group takes milliseconds; the
    /// service gives up on a commit after 5 s and says so).
    pub io_timeout: Duration,
    /// Attempts per request at most (each: one replica tried once)...
    pub attempts_max: u32,
    /// ...and time per request at most: long enough for the meta group to elect a new leader
    /// (one to two seconds) with room to spare.
    pub retry_for: Duration,
    /// Pause after a round in which no replica could serve (an election, a bootstrap).
    pub retry_delay: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_millis(500),
            io_timeout: Duration::from_secs(8),
            attempts_max: 1000,
            retry_for: Duration::from_secs(10),
            retry_delay: Duration::from_millis(100),
        }
    }
}

/// A connection to a meta group. See the module doc.
pub struct MetaClient {
    addrs: Vec<String>,
    cfg: ClientConfig,
    /// The replica believed to lead (an index into `addrs`, or an address a follower named).
    leader: Option<String>,
    conn: Option<(String, TcpStream)>,
    next: usize,
}

impl MetaClient {
    /// A client of the meta group whose replicas are at `addrs` ("IP:PORT" or "HOST:PORT"
    /// each); nothing is connected until the first request.
    pub fn new(addrs: &[String], cfg: ClientConfig) -> Result<MetaClient, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::BadAddress {
                addr: String::new(),
                why: "no address given".into(),
            });
        }
        for a in addrs {
            resolve(a)?;
        }
        Ok(MetaClient {
            addrs: addrs.to_vec(),
            cfg,
            leader: None,
            conn: None,
            next: 0,
        })
    }

    /// A client of `list` as `--meta` takes it: "ADDR[,ADDR...]".
    pub fn from_list(list: &str, cfg: ClientConfig) -> Result<MetaClient, ClientError> {
        let addrs: Vec<String> = list
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        MetaClient::new(&addrs, cfg)
    }

    /// The replica that answered as leader last, if any.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// Sends `req` to the leader, finding it and retrying within the configured bounds. The
    /// answer is anything but a redirect or an "unavailable": a refusal comes back as
    /// [`ClientError::Refused`], a heartbeat of an unknown node as
    /// [`ClientError::NotRegistered`].
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let payload = proto::encode_request(req);
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
        proto::encode_frame(Kind::Request, &payload, &mut frame);
        let mut last = String::from("nothing tried");
        let mut failed_in_round = 0usize;
        let deadline = Instant::now() + self.cfg.retry_for;
        let mut attempts = 0;
        while attempts < self.cfg.attempts_max && Instant::now() < deadline {
            attempts += 1;
            let target = self.target();
            match self.exchange(&target, &frame) {
                Ok(Response::NotLeader { leader }) => {
                    last = format!("{target} does not lead");
                    self.leader = leader.filter(|l| *l != target);
                    if self.leader.is_none() {
                        failed_in_round += 1;
                    }
                }
                Ok(Response::Unavailable(why)) => {
                    last = format!("{target}: {why}");
                    // The leader itself said "later": stay with it, after a pause.
                    self.leader = Some(target);
                    std::thread::sleep(self.cfg.retry_delay);
                }
                Ok(Response::Refused(why)) => return Err(ClientError::Refused(why)),
                Ok(Response::NotRegistered) => return Err(ClientError::NotRegistered),
                Ok(r) => {
                    self.leader = Some(target);
                    return Ok(r);
                }
                Err(e) => {
                    last = format!("{target}: {e}");
                    self.conn = None;
                    self.leader = None;
                    failed_in_round += 1;
                }
            }
            if failed_in_round >= self.addrs.len() {
                failed_in_round = 0;
                std::thread::sleep(self.cfg.retry_delay);
            }
        }
        Err(ClientError::Unavailable {
            addrs: self.addrs.join(","),
            attempts,
            last,
        })
    }

    /// The replica to try next: the known leader, else the next address in turn.
    fn target(&mut self) -> String {
        if let Some(l) = &self.leader {
            return l.clone();
        }
        let a = self.addrs[self.next % self.addrs.len()].clone();
        self.next += 1;
        a
    }

    fn exchange(&mut self, target: &str, frame: &[u8]) -> std::io::Result<Response> {
        if self.conn.as_ref().is_none_or(|(a, _)| a != target) {
            let sa = resolve(target).map_err(|e| std::io::Error::other(e.to_string()))?;
            let s = TcpStream::connect_timeout(&sa, self.cfg.connect_timeout)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.cfg.io_timeout))?;
            s.set_write_timeout(Some(self.cfg.io_timeout))?;
            self.conn = Some((target.to_string(), s));
        }
        let (_, s) = self.conn.as_mut().expect("connected above");
        let res = (|| {
            s.write_all(frame)?;
            let (kind, payload) = proto::read_frame_blocking(s)?;
            if kind != Kind::Response {
                return Err(std::io::Error::other(
                    "the meta replica sent a non-response",
                ));
            }
            proto::decode_response(&payload).map_err(|e| std::io::Error::other(e.to_string()))
        })();
        if res.is_err() {
            self.conn = None;
        }
        res
    }

    /// Registers a node; the reply has the heartbeat interval, the failure timeout and the
    /// routing table.
    pub fn register(&mut self, r: &Registration) -> Result<Registered, ClientError> {
        match self.call(&Request::Register(r.clone()))? {
            Response::Registered(x) => Ok(x),
            other => Err(unexpected(other)),
        }
    }

    /// One heartbeat: the reply carries the routing table when `hb.epoch` is older, and the
    /// commands for the node.
    pub fn heartbeat(&mut self, hb: &Heartbeat) -> Result<HeartbeatReply, ClientError> {
        match self.call(&Request::Heartbeat(hb.clone()))? {
            Response::Heartbeat(x) => Ok(x),
            other => Err(unexpected(other)),
        }
    }

    /// The routing table if the meta service's epoch is above `epoch` (None: `epoch` is
    /// current). Nodes call it on a stale-route reply.
    pub fn routing(&mut self, epoch: u64) -> Result<Option<RoutingTable>, ClientError> {
        match self.call(&Request::GetRouting { epoch })? {
            Response::Routing(x) => Ok(x),
            other => Err(unexpected(other)),
        }
    }

    pub fn status(&mut self) -> Result<Status, ClientError> {
        match self.call(&Request::Status)? {
            Response::Status(x) => Ok(*x),
            other => Err(unexpected(other)),
        }
    }

    /// Starts emptying node `node` (its replicas and leaders move away).
    pub fn drain(&mut self, node: NodeId) -> Result<(), ClientError> {
        self.done(Request::Drain { node })
    }

    /// Ends a drain of node `node`.
    pub fn undrain(&mut self, node: NodeId) -> Result<(), ClientError> {
        self.done(Request::Undrain { node })
    }

    /// Forgets node `node`; refused while it still hosts a replica.
    pub fn remove(&mut self, node: NodeId) -> Result<(), ClientError> {
        self.done(Request::Remove { node })
    }

    pub fn set_balance(&mut self, on: bool) -> Result<(), ClientError> {
        self.done(Request::SetBalance { on })
    }

    /// Declares a feature table.
    pub fn create_table(&mut self, t: TableDef) -> Result<(), ClientError> {
        self.done(Request::CreateTable(t))
    }

    pub fn drop_table(&mut self, name: &str) -> Result<(), ClientError> {
        self.done(Request::DropTable { name: name.into() })
    }

    /// The declared tables, sorted by name.
    pub fn tables(&mut self) -> Result<Vec<TableInfo>, ClientError> {
        match self.call(&Request::Tables)? {
            Response::Tables(x) => Ok(x),
            other => Err(unexpected(other)),
        }
    }

    /// A table's load, abort, rollback or unrollback ([`Command`]).
    pub fn table_command(&mut self, c: Command) -> Result<(), ClientError> {
        self.done(Request::Table(c))
    }

    fn done(&mut self, req: Request) -> Result<(), ClientError> {
        match self.call(&req)? {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(r: Response) -> ClientError {
    let s = format!("{r:?}");
    ClientError::Unexpected(s.chars().take(80).collect())
}

fn resolve(a: &str) -> Result<SocketAddr, ClientError> {
    let bad = |why: String| ClientError::BadAddress {
        addr: a.to_string(),
        why,
    };
    a.to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("resolves to no address".into()))
}

/// The routing table a node holds, with its epoch. Cheap to clone (the table is shared).
#[derive(Clone, Debug, Default)]
pub struct RoutingCache {
    table: Option<Arc<RoutingTable>>,
}

impl RoutingCache {
    /// The epoch of the table held (0: none yet).
    pub fn epoch(&self) -> u64 {
        self.table.as_ref().map_or(0, |t| t.epoch)
    }

    pub fn table(&self) -> Option<Arc<RoutingTable>> {
        self.table.clone()
    }

    /// Takes `t` if it is newer than the table held; true if it did.
    pub fn update(&mut self, t: RoutingTable) -> bool {
        if t.epoch <= self.epoch() {
            return false;
        }
        self.table = Some(Arc::new(t));
        true
    }

    /// The leader of `partition`, as the table held says.
    pub fn leader_of(&self, partition: PartitionId) -> Option<RouteNode> {
        self.table.as_ref()?.leader_of(partition).cloned()
    }

    pub fn replicas_of(&self, partition: PartitionId) -> Vec<NodeId> {
        self.table
            .as_ref()
            .map_or(Vec::new(), |t| t.replicas_of(partition))
    }
}

/// A node's registration and heartbeats. See the module doc.
pub struct NodeSession {
    pub client: MetaClient,
    pub registration: Registration,
    pub cache: RoutingCache,
    /// From the meta service at registration.
    pub heartbeat_interval: Duration,
    registered: bool,
}

/// What one heartbeat brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Beat {
    /// The table changed (the cache holds the new one).
    pub table_changed: bool,
    pub commands: Vec<NodeCommand>,
}

impl NodeSession {
    pub fn new(client: MetaClient, registration: Registration) -> NodeSession {
        NodeSession {
            client,
            registration,
            cache: RoutingCache::default(),
            heartbeat_interval: Duration::from_secs(1),
            registered: false,
        }
    }

    /// Registers (again). A refusal (id taken, partition count, unreachable peer address)
    /// comes back with the meta service's message.
    pub fn register(&mut self) -> Result<(), ClientError> {
        let r = self.client.register(&self.registration)?;
        self.heartbeat_interval = Duration::from_millis(r.heartbeat_interval_ms.max(1));
        self.cache.update(r.table);
        self.registered = true;
        Ok(())
    }

    /// One heartbeat with this report, registering first if the session is not registered.
    /// [`ClientError::NotRegistered`]: the meta service does not know the node (an operator
    /// removed it with `ctl remove`); the session forgets its registration, and the next call
    /// registers the node again as a new, empty one. A node that should stay out stops calling.
    pub fn heartbeat(&mut self, report: NodeReport) -> Result<Beat, ClientError> {
        if !self.registered {
            self.register()?;
        }
        let hb = Heartbeat {
            node: self.registration.node,
            epoch: self.cache.epoch(),
            report,
        };
        let reply = match self.client.heartbeat(&hb) {
            Err(ClientError::NotRegistered) => {
                self.registered = false;
                return Err(ClientError::NotRegistered);
            }
            r => r?,
        };
        let table_changed = reply.table.is_some_and(|t| self.cache.update(t));
        Ok(Beat {
            table_changed,
            commands: reply.commands,
        })
    }
}

/// A heartbeat thread's handle: the routing table it keeps current, and a stop switch.
pub struct Heartbeats {
    pub cache: Arc<Mutex<RoutingCache>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeats {
    /// Stops the thread after its current heartbeat and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `session` on a thread: a heartbeat every interval with the report `report` returns, each
/// reply's commands handed to `on_beat` (with the new table when it changed). A failed
/// heartbeat (meta unreachable) is reported to `on_error` and retried at the next interval;
/// the node keeps serving with the table it has.
pub fn spawn_heartbeats(
    mut session: NodeSession,
    mut report: impl FnMut() -> NodeReport + Send + 'static,
    mut on_beat: impl FnMut(&Beat, &RoutingCache) + Send + 'static,
    mut on_error: impl FnMut(&ClientError) + Send + 'static,
) -> std::io::Result<Heartbeats> {
    let cache = Arc::new(Mutex::new(session.cache.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let (c, s) = (cache.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("keel-meta-heartbeat".into())
        .spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let t0 = Instant::now();
                match session.heartbeat(report()) {
                    Ok(beat) => {
                        if beat.table_changed {
                            *c.lock().expect("not poisoned") = session.cache.clone();
                        }
                        on_beat(&beat, &session.cache);
                    }
                    Err(e) => on_error(&e),
                }
                let wait = session.heartbeat_interval.saturating_sub(t0.elapsed());
                std::thread::sleep(wait);
            }
        })?;
    Ok(Heartbeats {
        cache,
        stop,
        thread: Some(thread),
    })
}
