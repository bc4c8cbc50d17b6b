//! Test instruments: a real memcached on a free loopback port (stopped by PID when dropped), a
//! tiny in-process memcached-text server that can stall, corrupt or go silent, and a bounded
//! runner for the keel-loadgen binary.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_keel-loadgen");

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| {
                l.split_whitespace().nth(2) == Some("0") // effective uid
            })
        })
        .unwrap_or(false)
}

/// Waits (bounded) until something accepts on `port`.
fn wait_accepting(port: u16, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A memcached started by this test; killed (by its PID, via `Child`) on drop.
pub struct Memcached {
    child: Child,
    pub port: u16,
}

impl Memcached {
    /// Starts memcached on a free loopback port. Fails the test loudly when memcached is missing:
    /// CI installs it (`apt-get install memcached`), and a silent skip would hide a broken setup.
    pub fn start() -> Memcached {
        let bin = find_on_path("memcached").unwrap_or_else(|| {
            panic!(
                "memcached is not on PATH: these tests drive a real memcached. \
                 Install it (Debian/Ubuntu: apt-get install memcached) and rerun."
            )
        });
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(&bin);
            cmd.args([
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-t",
                "2",
                "-m",
                "64",
            ]);
            if is_root() {
                cmd.args(["-u", "root"]);
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn memcached");
            let mut m = Memcached { child, port };
            if wait_accepting(port, Duration::from_secs(5)) {
                return m;
            }
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
        panic!("memcached did not start accepting on a free port in 5 tries");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the test server misbehaves.
#[derive(Clone, Copy, Default)]
pub struct Faults {
    /// Sleep `stall` before answering every `stall_every`-th request (0: never).
    pub stall_every: u64,
    pub stall: Duration,
    /// Flip a byte in every `corrupt_every`-th value returned (0: never).
    pub corrupt_every: u64,
    /// Read requests but never answer.
    pub silent: bool,
}

/// A tiny memcached-text server (get/set/mg/delete, pipelined) for fault injection. Threads are
/// detached; the listener stops accepting when dropped (connections end with the test process).
pub struct TestServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    pub fn start(faults: Faults) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let store: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
        let counter = Arc::new(AtomicU64::new(0));
        let values = Arc::new(AtomicU64::new(0));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            // Bounded: stops when the TestServer is dropped.
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (store, counter, values, stop) = (
                            store.clone(),
                            counter.clone(),
                            values.clone(),
                            stop2.clone(),
                        );
                        std::thread::spawn(move || {
                            let _ = serve(s, faults, &store, &counter, &values, &stop);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TestServer { port, stop }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    s: TcpStream,
    f: Faults,
    store: &Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    counter: &AtomicU64,
    values: &AtomicU64,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e),
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let parts: Vec<&str> = text.split(' ').collect();
        let mut out = Vec::new();
        match parts[0] {
            "set" => {
                let n: usize = parts[4].parse().unwrap();
                let mut data = vec![0; n + 2];
                r.read_exact(&mut data)?;
                data.truncate(n);
                store
                    .lock()
                    .unwrap()
                    .insert(parts[1].as_bytes().to_vec(), data);
                out.extend_from_slice(b"STORED\r\n");
            }
            "get" | "mg" => {
                let keys = if parts[0] == "get" {
                    &parts[1..]
                } else {
                    &parts[1..2]
                };
                for k in keys {
                    if let Some(v) = store.lock().unwrap().get(k.as_bytes()) {
                        let mut v = v.clone();
                        let nth = values.fetch_add(1, Ordering::Relaxed) + 1;
                        if f.corrupt_every > 0 && nth % f.corrupt_every == 0 {
                            let last = v.len() - 1;
                            v[last] ^= 0x01;
                        }
                        if parts[0] == "get" {
                            out.extend_from_slice(
                                format!("VALUE {k} 0 {}\r\n", v.len()).as_bytes(),
                            );
                        } else {
                            out.extend_from_slice(format!("VA {}\r\n", v.len()).as_bytes());
                        }
                        out.extend_from_slice(&v);
                        out.extend_from_slice(b"\r\n");
                    } else if parts[0] == "mg" {
                        out.extend_from_slice(b"EN\r\n");
                    }
                }
                if parts[0] == "get" {
                    out.extend_from_slice(b"END\r\n");
                }
            }
            "delete" => {
                let found = store.lock().unwrap().remove(parts[1].as_bytes()).is_some();
                out.extend_from_slice(if found {
                    b"DELETED\r\n"
                } else {
                    b"NOT_FOUND\r\n"
                });
            }
            _ => out.extend_from_slice(b"ERROR\r\n"),
        }
        if f.silent {
            continue;
        }
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if f.stall_every > 0 && n % f.stall_every == 0 {
            std::thread::sleep(f.stall);
        }
        w.write_all(&out)?;
    }
}

/// Runs keel-loadgen with `args`, killing it (by PID) if it outlives `limit`.
pub fn loadgen(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keel-loadgen");
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "keel-loadgen {args:?} ran past {limit:?}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs and asserts success, returning the parsed summary.json.
pub fn run_ok(args: &[&str], out: &Path) -> serde_json::Value {
    let o = loadgen(args, Duration::from_secs(30));
    assert!(
        o.status.success(),
        "keel-loadgen {args:?} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    summary(out)
}

pub fn summary(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("summary.json")).expect("summary.json written");
    serde_json::from_str(&text).expect("summary.json parses")
}

/// A per-test output directory under the temp dir, removed when the test ends.
pub struct OutDir(PathBuf);

impl std::ops::Deref for OutDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn out_dir(name: &str) -> OutDir {
    let d = std::env::temp_dir().join(format!("keel-loadgen-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    OutDir(d)
}

/// Latency of command `cmd` at `key` (p50_us, p99_us, ...) in microseconds.
pub fn lat(s: &serde_json::Value, cmd: &str, key: &str) -> f64 {
    s["commands"][cmd]["latency"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("{cmd}.{key} in {s}"))
}

pub fn u(s: &serde_json::Value, key: &str) -> u64 {
    s[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in summary"))
}
