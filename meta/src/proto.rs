//! The meta service's wire protocol: frames over TCP, each with a version byte, carrying either
//! a Raft message between meta replicas or a request / response between a client (a node, ctl)
//! and a meta replica.
//!
//! Frame (little-endian): u8 version ([`WIRE_VERSION`]), u8 kind ([`Kind`]), u16 zero, u32
//! payload length (at most [`FRAME_BYTES_MAX`]), u32 CRC32C of the payload, payload. A Raft
//! payload is the protobuf `eraftpb.Message`; a request or response payload is the bincode 1
//! encoding (fixed-size little-endian integers) of [`Request`] / [`Response`]. A client sends
//! one request at a time on a connection and reads its response; a replica never answers a
//! Raft frame. A frame with another version, an unknown kind, a bad length or CRC closes the
//! connection (a request frame of another version is first answered with
//! [`Response::Refused`] naming both versions).

use serde::{Deserialize, Serialize};

use crate::machine::{codec, Registration};
use crate::placement::{Health, Move, NodeId, PartitionId, Placement};
use crate::tables::{TableDef, TableInfo};

/// 3: routing tables carry the declared tables, and the table requests.
pub const WIRE_VERSION: u8 = 3;
pub const FRAME_HEADER_BYTES: usize = 12;
/// A routing table of 65,536 partitions at RF 3 is about 4 MiB; a frame may be 64 MiB.
pub const FRAME_BYTES_MAX: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Raft = 1,
    Request = 2,
    Response = 3,
}

/// The role a node's replica of a partition has, as it reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Leader,
    Follower,
    Learner,
}

/// What a node reports about one partition it hosts, with every heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionFact {
    pub partition: PartitionId,
    pub role: Role,
    /// The Raft term the node is in for this partition (a leader's report wins over a lower
    /// term's).
    pub term: u64,
    pub applied_index: u64,
    /// Items and bytes of the partition. keel-node reports its shard's totals split evenly
    /// over the shard's partitions (a node's sum is exact; a partition's share is close).
    pub keys: u64,
    pub bytes: u64,
    /// The group's configuration as this replica knows it; the meta service reads the leader's
    /// to see a membership move done.
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: NodeId,
    /// The epoch of the routing table the node holds (0: none); the reply carries a table only
    /// when the meta service's epoch is newer.
    pub epoch: u64,
    pub report: NodeReport,
}

/// What a node says of itself with every heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub partitions: Vec<PartitionFact>,
    /// The peer nodes this node has received Raft traffic from, each with how long ago the
    /// latest arrived. The meta service does not mark a node Down while a node it hears says it
    /// heard from it within the failure timeout: cut off from the meta service only, the node
    /// still serves its groups, and rebuilding its replicas elsewhere would only add copies.
    pub peers_heard: Vec<PeerHeard>,
    /// Set once one of the node's devices failed (its value log or Raft log is poisoned: a
    /// write or sync returned an error). The meta service marks the node Down at once and keeps
    /// it so while it says this; the node stops serving (keel-node exits after the report).
    pub failure: Option<String>,
    /// The table slices the node holds (feature-table versions adopted on its devices).
    pub slices: Vec<SliceHeld>,
}

/// One partition of one table build that a node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SliceHeld {
    pub build_id: u64,
    pub partition: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHeard {
    pub node: NodeId,
    pub ms_ago: u64,
}

/// What a node must do, handed out with heartbeat replies (the planner's moves, turned into
/// per-node steps). Repeated in every reply until the meta service sees it done: a node carries
/// each out idempotently (a second Create of a group it has, an AddLearner of a learner already
/// added, ... are no-ops).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeCommand {
    /// Host a replica of the partition: with `voters`, create its Raft group with them (the one
    /// told to `campaign` starts an election at once); with no voters, an empty replica that
    /// waits to be added as a learner and catches up from the leader's snapshot.
    Create {
        partition: PartitionId,
        voters: Vec<NodeId>,
        campaign: bool,
    },
    /// (To the partition's leader.) Propose adding `node` as a learner.
    AddLearner {
        partition: PartitionId,
        node: NodeId,
    },
    /// (To the leader.) Propose making the learner `node` a voter, once it has caught up.
    Promote {
        partition: PartitionId,
        node: NodeId,
    },
    /// (To the leader.) Propose removing `node`'s replica.
    RemoveReplica {
        partition: PartitionId,
        node: NodeId,
    },
    /// (To the leader.) Hand leadership to the voter `to`.
    TransferLeader { partition: PartitionId, to: NodeId },
    /// The node hosts a replica the placement no longer has (removed): delete it.
    DropReplica { partition: PartitionId },
}

/// A node as the routing table shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteNode {
    pub id: NodeId,
    pub client_addr: String,
    pub peer_addr: String,
    pub zone: String,
    pub health: Health,
}

/// Where every partition lives, under the placement epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    pub epoch: u64,
    pub partitions: u32,
    pub replication_factor: u32,
    pub nodes: Vec<RouteNode>,
    /// Indexed by partition id.
    pub placements: Vec<Placement>,
    /// The declared feature tables and their versions, sorted by name.
    pub tables: Vec<TableInfo>,
}

impl RoutingTable {
    pub fn node(&self, id: NodeId) -> Option<&RouteNode> {
        self.nodes
            .binary_search_by_key(&id, |n| n.id)
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// The node that leads `partition`, as last reported.
    pub fn leader_of(&self, partition: PartitionId) -> Option<&RouteNode> {
        let l = self.placements.get(partition as usize)?.leader?;
        self.node(l)
    }

    /// The voters and the learner of `partition`.
    pub fn replicas_of(&self, partition: PartitionId) -> Vec<NodeId> {
        self.placements
            .get(partition as usize)
            .map_or(Vec::new(), |p| {
                p.voters.iter().copied().chain(p.learner).collect()
            })
    }

    /// The declared table named `name`.
    pub fn table(&self, name: &[u8]) -> Option<&TableInfo> {
        self.tables
            .binary_search_by(|t| t.def.name.as_bytes().cmp(name))
            .ok()
            .map(|i| &self.tables[i])
    }

    /// The partitions `node` hosts (voter or learner).
    pub fn hosted_by(&self, node: NodeId) -> Vec<PartitionId> {
        (0..self.placements.len() as PartitionId)
            .filter(|&p| self.placements[p as usize].hosts(node))
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Register(Registration),
    Heartbeat(Heartbeat),
    /// The routing table if its epoch is above `epoch`.
    GetRouting {
        epoch: u64,
    },
    Status,
    Drain {
        node: NodeId,
    },
    /// Ends a drain: the node takes replicas again.
    Undrain {
        node: NodeId,
    },
    Remove {
        node: NodeId,
    },
    SetBalance {
        on: bool,
    },
    CreateTable(TableDef),
    DropTable {
        name: String,
    },
    /// The declared tables.
    Tables,
    /// `keel-bulk load`, `rollback`, `unrollback`: the table commands above, as the leader
    /// proposes them.
    Table(crate::machine::Command),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// How often the node should heartbeat, and after how long without one it is marked Down.
    pub heartbeat_interval_ms: u64,
    pub failure_timeout_ms: u64,
    pub table: RoutingTable,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Present when the meta service's epoch is above the one the heartbeat named.
    pub table: Option<RoutingTable>,
    pub commands: Vec<NodeCommand>,
}

/// One node in `ctl status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub client_addr: String,
    pub peer_addr: String,
    pub zone: String,
    pub health: Health,
    pub weight: u32,
    pub cores: u32,
    pub device_bytes: u64,
    pub memory_bytes: u64,
    /// Milliseconds since the leader last heard it (None: not since it took over).
    pub last_heartbeat_ms: Option<u64>,
    /// Milliseconds since a node the leader hears last reported hearing from it (None: none
    /// has since the leader took over). Recent while its heartbeat is old: cut off from the
    /// meta service only, and not marked Down for it.
    pub peers_heard_ms: Option<u64>,
    /// The device failure it reported (it is Down while it does).
    pub failure: Option<String>,
    pub replicas: u32,
    pub leaders: u32,
    pub learners: u32,
    /// Sums over the partitions it reported in its last heartbeat.
    pub keys: u64,
    pub bytes: u64,
}

/// One meta replica in `ctl status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaReplica {
    pub id: u64,
    pub addr: String,
    pub leader: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub meta_replicas: Vec<MetaReplica>,
    pub term: u64,
    pub applied_index: u64,
    pub epoch: u64,
    pub partitions: u32,
    pub replication_factor: u32,
    pub balance: bool,
    pub nodes: Vec<NodeStatus>,
    /// Nodes Up (neither Down nor Draining). Fewer than the replication factor: partitions
    /// keep the replicas they can and get the rest back as nodes return.
    pub nodes_up: u32,
    /// Partitions with fewer voters on serving nodes than the replication factor.
    pub under_replicated: u32,
    /// Partitions whose voters on serving nodes are no majority: they take no write (and no
    /// repair: a membership change needs a majority) until enough of their nodes return.
    pub without_majority: u32,
    /// Partitions with no known leader.
    pub leaderless: u32,
    /// Moves in flight that repair a partition (it is under-replicated, or has a voter on a
    /// Down node); `moves_in_flight` lists them with the rest.
    pub repairs_in_flight: u32,
    pub moves_in_flight: Vec<Move>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Registered(Registered),
    Heartbeat(HeartbeatReply),
    /// None: the caller's table is current.
    Routing(Option<RoutingTable>),
    Status(Box<Status>),
    Done,
    /// This replica does not lead; `leader` is the leader's address when it knows it.
    NotLeader {
        leader: Option<String>,
    },
    /// A heartbeat from a node the meta service does not know (removed, or never registered):
    /// the node registers again.
    NotRegistered,
    /// The request is wrong and retrying will not help; the message says what was wrong.
    Refused(String),
    /// Try again shortly (no leader yet, not bootstrapped, a commit that timed out).
    Unavailable(String),
    Tables(Vec<TableInfo>),
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame version {got}, this build speaks {WIRE_VERSION}")]
    Version { got: u8 },
    #[error("frame kind {0} is unknown")]
    Kind(u8),
    #[error("frame of {len} bytes exceeds {FRAME_BYTES_MAX}")]
    TooLarge { len: usize },
    #[error("frame CRC mismatch")]
    Crc,
    #[error("frame header reserved bytes are not zero")]
    Reserved,
    #[error("undecodable payload: {0}")]
    Payload(String),
}

/// Appends one frame to `out`.
pub fn encode_frame(kind: Kind, payload: &[u8], out: &mut Vec<u8>) {
    assert!(payload.len() <= FRAME_BYTES_MAX, "frame too large");
    out.push(WIRE_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A frame header's version, kind and payload length; checks everything but the CRC.
pub fn decode_header(h: &[u8; FRAME_HEADER_BYTES]) -> Result<(Kind, usize, u32), FrameError> {
    if h[0] != WIRE_VERSION {
        return Err(FrameError::Version { got: h[0] });
    }
    let kind = match h[1] {
        1 => Kind::Raft,
        2 => Kind::Request,
        3 => Kind::Response,
        k => return Err(FrameError::Kind(k)),
    };
    if h[2] != 0 || h[3] != 0 {
        return Err(FrameError::Reserved);
    }
    let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge { len });
    }
    let crc = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    Ok((kind, len, crc))
}

pub fn check_crc(payload: &[u8], crc: u32) -> Result<(), FrameError> {
    if crc32c::crc32c(payload) != crc {
        return Err(FrameError::Crc);
    }
    Ok(())
}

pub fn encode_request(r: &Request) -> Vec<u8> {
    use bincode::Options;
    codec(FRAME_BYTES_MAX as u64)
        .serialize(r)
        .expect("a request encodes")
}

pub fn decode_request(b: &[u8]) -> Result<Request, FrameError> {
    use bincode::Options;
    codec(FRAME_BYTES_MAX as u64)
        .deserialize(b)
        .map_err(|e| FrameError::Payload(e.to_string()))
}

pub fn encode_response(r: &Response) -> Vec<u8> {
    use bincode::Options;
    codec(FRAME_BYTES_MAX as u64)
        .serialize(r)
        .expect("a response encodes")
}

pub fn decode_response(b: &[u8]) -> Result<Response, FrameError> {
    use bincode::Options;
    codec(FRAME_BYTES_MAX as u64)
        .deserialize(b)
        .map_err(|e| FrameError::Payload(e.to_string()))
}

/// Reads one frame from a blocking stream: (kind, payload).
pub fn read_frame_blocking(r: &mut impl std::io::Read) -> std::io::Result<(Kind, Vec<u8>)> {
    let mut h = [0u8; FRAME_HEADER_BYTES];
    r.read_exact(&mut h)?;
    let bad = |e: FrameError| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
    let (kind, len, crc) = decode_header(&h).map_err(bad)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    check_crc(&payload, crc).map_err(bad)?;
    Ok((kind, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_damage_is_refused() {
        let req = Request::Drain { node: 7 };
        let mut buf = Vec::new();
        encode_frame(Kind::Request, &encode_request(&req), &mut buf);
        let (kind, payload) = read_frame_blocking(&mut &buf[..]).unwrap();
        assert_eq!(kind, Kind::Request);
        assert_eq!(decode_request(&payload).unwrap(), req);

        let mut v = buf.clone();
        v[0] = WIRE_VERSION + 1;
        let e = read_frame_blocking(&mut &v[..]).unwrap_err();
        let want = format!("version {}", WIRE_VERSION + 1);
        assert!(e.to_string().contains(&want), "{e}");
        let mut v = buf.clone();
        *v.last_mut().unwrap() ^= 1;
        assert!(read_frame_blocking(&mut &v[..]).is_err(), "CRC");
        let mut v = buf.clone();
        v[1] = 9;
        assert!(read_frame_blocking(&mut &v[..]).is_err(), "kind");
        let mut v = buf;
        v[4..8].copy_from_slice(&(FRAME_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(read_frame_blocking(&mut &v[..]).is_err(), "length");
    }

    #[test]
    fn a_payload_with_trailing_bytes_is_refused() {
        let mut b = encode_request(&Request::Status);
        b.push(0);
        assert!(decode_request(&b).is_err());
    }
}
