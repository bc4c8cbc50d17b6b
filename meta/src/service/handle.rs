//! Requests (on the leader; the others redirect) and the leader's scheduler: bootstrap, failure
//! detection, stuck moves, and handing out the planner's moves.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::Service;
use crate::machine::{unknown_node, Command, MetaState, Registration};
use crate::placement::{Health, NodeId, Placement};
use crate::proto::{
    HeartbeatReply, MetaReplica, NodeStatus, Registered, Request, Response, RouteNode,
    RoutingTable, Status,
};
use crate::schedule::{self, Soft};

/// How often the scheduler looks at the state when nothing wakes it.
const SCHEDULE_INTERVAL: Duration = Duration::from_millis(100);
/// The planner runs at least this often even when nothing changed (moves abandoned elsewhere).
const PLAN_INTERVAL: Duration = Duration::from_secs(1);
const PLAN_GAP: Duration = Duration::from_millis(50);

pub(super) async fn handle(svc: &Rc<Service>, req: Request) -> Response {
    let role = svc.role();
    if !role.leader {
        return Response::NotLeader {
            leader: svc.leader_addr(),
        };
    }
    if !role.ready {
        return Response::Unavailable("the meta leader is just elected; retry".into());
    }
    if !svc.state.borrow().bootstrapped() {
        return Response::Unavailable("the meta service is bootstrapping; retry".into());
    }
    match req {
        Request::Register(r) => register(svc, r).await,
        Request::Heartbeat(hb) => {
            let now = Instant::now();
            if svc.state.borrow().node(hb.node).is_none() {
                return Response::NotRegistered;
            }
            let (partitions, nodes) = {
                let st = svc.state.borrow();
                (st.keyspace().map_or(0, |k| k.0), st.nodes().len())
            };
            let r = &hb.report;
            if r.partitions.len() > partitions as usize {
                return Response::Refused(format!(
                    "node {}: a heartbeat with {} partition facts; the keyspace has {partitions}",
                    hb.node,
                    r.partitions.len()
                ));
            }
            if r.peers_heard.len() > nodes {
                return Response::Refused(format!(
                    "node {}: a heartbeat naming {} peers heard; {nodes} nodes are registered",
                    hb.node,
                    r.peers_heard.len()
                ));
            }
            if r.failure
                .as_ref()
                .is_some_and(|f| f.len() > FAILURE_BYTES_MAX)
            {
                return Response::Refused(format!(
                    "node {}: a device failure report over {FAILURE_BYTES_MAX} bytes",
                    hb.node
                ));
            }
            if let Some(why) = &r.failure {
                if !svc.soft.borrow().failures.contains_key(&hb.node) {
                    eprintln!(
                        "keel-meta: node {} reports a device failure: {why}",
                        hb.node
                    );
                }
            }
            let reported: Vec<_> = r.partitions.iter().map(|f| f.partition).collect();
            let cmds = schedule::on_heartbeat(
                &svc.state.borrow(),
                &mut svc.soft.borrow_mut(),
                hb.node,
                hb.report,
                now,
            );
            if !cmds.is_empty() {
                if let Err(e) = svc.propose(cmds).await {
                    return Response::Unavailable(e);
                }
            }
            let st = svc.state.borrow();
            let mut commands = schedule::node_commands(&st, hb.node, &reported);
            if let Some(facts) = svc.soft.borrow().facts.get(&hb.node) {
                commands.extend(schedule::drift_commands(&st, hb.node, facts));
            }
            Response::Heartbeat(HeartbeatReply {
                table: (st.epoch() > hb.epoch).then(|| routing_table(&st)),
                commands,
            })
        }
        Request::GetRouting { epoch } => {
            let st = svc.state.borrow();
            Response::Routing((st.epoch() > epoch).then(|| routing_table(&st)))
        }
        Request::Status => Response::Status(Box::new(status_of(svc))),
        Request::Drain { node } => {
            ctl(
                svc,
                node,
                Command::SetDraining {
                    node,
                    draining: true,
                },
            )
            .await
        }
        Request::Undrain { node } => {
            ctl(
                svc,
                node,
                Command::SetDraining {
                    node,
                    draining: false,
                },
            )
            .await
        }
        Request::Remove { node } => ctl(svc, node, Command::Remove { node }).await,
        Request::SetBalance { on } => match svc.propose(vec![Command::SetBalance { on }]).await {
            Ok(_) => Response::Done,
            Err(e) => Response::Unavailable(e),
        },
        Request::CreateTable(t) => one(svc, Command::CreateTable(t)).await,
        Request::DropTable { name } => one(svc, Command::DropTable { name }).await,
        Request::Table(
            c @ (Command::StartLoad { .. }
            | Command::AbortLoad { .. }
            | Command::Rollback { .. }
            | Command::Unrollback { .. }),
        ) => one(svc, c).await,
        Request::Table(c) => Response::Refused(format!("{c:?} is not a client's table command")),
        Request::Tables => {
            Response::Tables(svc.state.borrow().tables().values().cloned().collect())
        }
    }
}

async fn ctl(svc: &Service, node: NodeId, c: Command) -> Response {
    {
        let st = svc.state.borrow();
        if st.node(node).is_none() {
            let known: Vec<_> = st.nodes().keys().copied().collect();
            return Response::Refused(unknown_node(node, &known));
        }
    }
    one(svc, c).await
}

/// Proposes one command: Done, its refusal, or Unavailable.
async fn one(svc: &Service, c: Command) -> Response {
    match svc.propose(vec![c]).await {
        Ok(mut r) => match r.pop() {
            Some(Ok(())) => Response::Done,
            Some(Err(why)) => Response::Refused(why),
            None => Response::Unavailable("no result; retry".into()),
        },
        Err(e) => Response::Unavailable(e),
    }
}

/// Bytes an address or zone name may take.
const NAME_BYTES_MAX: usize = 255;
/// Bytes a node's device failure report may take.
const FAILURE_BYTES_MAX: usize = 4096;

async fn register(svc: &Service, r: Registration) -> Response {
    let now = Instant::now();
    for (what, v) in [
        ("client address", &r.client_addr),
        ("peer address", &r.peer_addr),
        ("zone", &r.zone),
    ] {
        if v.len() > NAME_BYTES_MAX {
            return Response::Refused(format!(
                "node {}: the {what} is {} bytes, more than {NAME_BYTES_MAX}",
                r.node,
                v.len()
            ));
        }
    }
    if let Err(why) = schedule::check_registration(
        &svc.state.borrow(),
        &svc.soft.borrow(),
        &r,
        now,
        svc.cfg.failure_timeout,
    ) {
        return Response::Refused(why);
    }
    if let Err(e) = super::net::reachable(&r.peer_addr).await {
        return Response::Refused(format!(
            "node {}: peer address {} is unreachable from the meta leader ({e}); the other nodes \
             must reach it there (is --peer-listen right, and the node listening?)",
            r.node, r.peer_addr
        ));
    }
    let node = r.node;
    match one(svc, Command::Register(r)).await {
        Response::Done => {
            svc.soft.borrow_mut().last_seen.insert(node, Instant::now());
            Response::Registered(Registered {
                heartbeat_interval_ms: svc.cfg.heartbeat_interval.as_millis() as u64,
                failure_timeout_ms: svc.cfg.failure_timeout.as_millis() as u64,
                table: routing_table(&svc.state.borrow()),
            })
        }
        other => other,
    }
}

/// The routing table of `st` (bootstrapped).
pub(super) fn routing_table(st: &MetaState) -> RoutingTable {
    let cl = st.cluster().expect("bootstrapped");
    RoutingTable {
        epoch: st.epoch(),
        partitions: cl.partition_count(),
        replication_factor: cl.replication_factor() as u32,
        nodes: st
            .nodes()
            .values()
            .map(|n| RouteNode {
                id: n.id,
                client_addr: n.client_addr.clone(),
                peer_addr: n.peer_addr.clone(),
                zone: n.zone.clone(),
                health: n.health(),
            })
            .collect(),
        placements: cl.placements().to_vec(),
        tables: st.tables().values().cloned().collect(),
    }
}

/// What `ctl status` shows, from the leader's state and soft state.
pub(super) fn status_of(svc: &Service) -> Status {
    let st = svc.state.borrow();
    let soft = svc.soft.borrow();
    let role = svc.role();
    let now = Instant::now();
    let mut meta_replicas: Vec<MetaReplica> = if svc.cfg.peers.is_empty() {
        vec![MetaReplica {
            id: svc.cfg.id,
            addr: svc.cfg.listen.clone(),
            leader: role.leader,
        }]
    } else {
        svc.cfg
            .peers
            .iter()
            .map(|(&id, a)| MetaReplica {
                id,
                addr: a.clone(),
                leader: id == role.leader_id,
            })
            .collect()
    };
    meta_replicas.sort_by_key(|m| m.id);
    status(
        &st,
        &soft,
        now,
        role.term,
        svc.applied.get().0,
        meta_replicas,
    )
}

fn status(
    st: &MetaState,
    soft: &Soft,
    now: Instant,
    term: u64,
    applied_index: u64,
    meta_replicas: Vec<MetaReplica>,
) -> Status {
    let cl = st.cluster().expect("bootstrapped");
    let ago = |t: Option<&Instant>| t.map(|&t| now.saturating_duration_since(t).as_millis() as u64);
    let loads = crate::placement::measure::node_loads(cl);
    let nodes = st
        .nodes()
        .values()
        .zip(loads)
        .map(|(n, l)| {
            debug_assert_eq!(n.id, l.id);
            let facts = soft.facts.get(&n.id);
            NodeStatus {
                id: n.id,
                client_addr: n.client_addr.clone(),
                peer_addr: n.peer_addr.clone(),
                zone: n.zone.clone(),
                health: n.health(),
                weight: n.weight,
                cores: n.cores,
                device_bytes: n.device_bytes,
                memory_bytes: n.memory_bytes,
                last_heartbeat_ms: ago(soft.last_seen.get(&n.id)),
                peers_heard_ms: ago(soft.vouched.get(&n.id)),
                failure: soft.failures.get(&n.id).cloned(),
                replicas: l.replicas,
                leaders: l.leaders,
                learners: l.replicas - l.voters,
                keys: facts.map_or(0, |f| f.iter().map(|x| x.keys).sum()),
                bytes: facts.map_or(0, |f| f.iter().map(|x| x.bytes).sum()),
            }
        })
        .collect();
    let rf = cl.replication_factor();
    let serving = |id: &NodeId| st.node(*id).is_some_and(|n| n.health() != Health::Down);
    let serving_voters = |p: &Placement| p.voters.iter().filter(|v| serving(v)).count();
    let count =
        |f: &dyn Fn(&Placement) -> bool| cl.placements().iter().filter(|p| f(p)).count() as u32;
    let under_replicated = count(&|p| serving_voters(p) < rf);
    let without_majority =
        count(&|p| !p.voters.is_empty() && serving_voters(p) * 2 <= p.voters.len());
    let leaderless = count(&|p| p.leader.is_none());
    let repairs_in_flight = st
        .in_flight()
        .keys()
        .filter_map(|&p| cl.placement(p))
        .filter(|p| serving_voters(p) < rf || p.voters.iter().any(|v| !serving(v)))
        .count() as u32;
    let nodes_up = st
        .nodes()
        .values()
        .filter(|n| n.health() == Health::Up)
        .count() as u32;
    Status {
        meta_replicas,
        term,
        applied_index,
        epoch: st.epoch(),
        partitions: cl.partition_count(),
        replication_factor: rf as u32,
        balance: st.balance(),
        nodes,
        nodes_up,
        under_replicated,
        without_majority,
        leaderless,
        repairs_in_flight,
        moves_in_flight: st.in_flight().values().cloned().collect(),
    }
}

/// The leader's periodic work: bootstrap the keyspace, mark silent nodes Down, give up stuck
/// moves, hand out the planner's next moves. Runs on every replica; acts only while leading.
pub(super) async fn scheduler(svc: Rc<Service>) {
    let mut planned_at: Option<(u64, usize, Instant)> = None;
    let mut keyspace_checked = false;
    loop {
        futures_lite::future::or(svc.changed.wait(), glommio::timer::sleep(SCHEDULE_INTERVAL))
            .await;
        if !svc.role().ready {
            planned_at = None;
            continue;
        }
        if !svc.state.borrow().bootstrapped() {
            let c = Command::Bootstrap {
                partitions: svc.cfg.partitions,
                replication_factor: svc.cfg.replication_factor,
            };
            if let Ok(r) = svc.propose(vec![c]).await {
                if let Some(Err(why)) = r.first() {
                    eprintln!("keel-meta: bootstrap refused: {why}");
                }
            }
            continue;
        }
        if !keyspace_checked {
            keyspace_checked = true;
            let want = (svc.cfg.partitions, svc.cfg.replication_factor);
            if let Some(have) = svc.state.borrow().keyspace().filter(|&k| k != want) {
                eprintln!(
                    "keel-meta: the keyspace was bootstrapped with {} partitions at replication \
                     factor {}; --partitions {} --replicas {} are ignored",
                    have.0, have.1, want.0, want.1
                );
            }
        }
        let now = Instant::now();
        let mut cmds = {
            let st = svc.state.borrow();
            let mut soft = svc.soft.borrow_mut();
            let mut c = schedule::silent_nodes(&st, &soft, now, svc.cfg.failure_timeout);
            c.extend(schedule::loads_done(&st, &soft));
            c.extend(schedule::stuck_moves(
                &st,
                &mut soft,
                now,
                svc.cfg.move_timeout,
            ));
            c
        };
        let key = {
            let st = svc.state.borrow();
            (st.epoch(), st.in_flight().len())
        };
        // On a change, but at most every PLAN_GAP (a plan of 65,536 partitions takes tens of
        // milliseconds); and every PLAN_INTERVAL regardless.
        let due = planned_at.is_none_or(|(e, n, at)| {
            ((e, n) != key && at.elapsed() >= PLAN_GAP) || at.elapsed() >= PLAN_INTERVAL
        });
        if due && cmds.is_empty() {
            planned_at = Some((key.0, key.1, now));
            let round = schedule::moves_to_start(&svc.state.borrow(), &svc.cfg.limits);
            for partition in round.stale {
                cmds.push(Command::AbortMove { partition });
            }
            if !round.start.is_empty() {
                cmds.push(Command::StartMoves { moves: round.start });
            }
        }
        if cmds.is_empty() {
            continue;
        }
        match svc.propose(cmds).await {
            Ok(results) => {
                for why in results.into_iter().filter_map(|r| r.err()) {
                    eprintln!("keel-meta: scheduler: refused: {why}");
                }
            }
            Err(e) => eprintln!("keel-meta: scheduler: {e}"),
        }
    }
}
