//! The SPDK backend (cargo feature `spdk`): a [`Device`] over an SPDK bdev, driven from the
//! calling shard's own thread.
//!
//! Threads: SPDK's environment (DPDK's EAL: hugepages, its memory, its control threads) starts
//! once per process on a thread of its own, `keel-spdk`, which also runs SPDK's app thread: it
//! starts the subsystems from the profile's JSON config (which creates the bdevs) and answers
//! SPDK's management messages. The request path never goes there: each shard that opens a bdev
//! gets an SPDK thread of its own on its OS thread, its own bdev descriptor and I/O channel, and
//! polls that SPDK thread itself, from the futures of its I/Os (a future in flight polls and
//! wakes itself until its I/O completes, as SPDK's reactors busy-poll) and from a slow
//! background poll for messages while nothing is in flight.
//!
//! Buffers come from `spdk_dma_zmalloc` (hugepage memory the bdev can DMA from). An I/O keeps its
//! buffer until SPDK completes it, even when the future that started it is dropped.
//!
//! The C side is `spdk/shim.c`, compiled against the installed SPDK by build.rs.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::{Device, IoError, SpdkConfig, BLOCK_BYTES};

#[repr(C)]
struct SpdkThread {
    _private: [u8; 0],
}
#[repr(C)]
struct BdevDesc {
    _private: [u8; 0],
}
#[repr(C)]
struct IoChannel {
    _private: [u8; 0],
}

type DoneFn = extern "C" fn(ok: bool, arg: *mut c_void);
type StartedFn = extern "C" fn(rc: c_int, arg: *mut c_void);

extern "C" {
    fn keel_spdk_env_init(
        name: *const c_char,
        mem_size_mb: c_int,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn keel_spdk_thread_start(name: *const c_char) -> *mut SpdkThread;
    fn keel_spdk_thread_poll(t: *mut SpdkThread) -> c_int;
    fn keel_spdk_thread_stop(t: *mut SpdkThread, first: bool) -> bool;
    fn keel_spdk_subsystems_start(json: *const c_char, done: StartedFn, arg: *mut c_void);
    fn keel_spdk_open(
        name: *const c_char,
        desc: *mut *mut BdevDesc,
        block_size: *mut u32,
        num_blocks: *mut u64,
        flush: *mut bool,
        ch: *mut *mut IoChannel,
    ) -> c_int;
    fn keel_spdk_close(desc: *mut BdevDesc, ch: *mut IoChannel);
    fn keel_spdk_dma_alloc(len: usize, align: usize) -> *mut c_void;
    fn keel_spdk_dma_free(buf: *mut c_void);
    fn keel_spdk_io(
        kind: c_int,
        desc: *mut BdevDesc,
        ch: *mut IoChannel,
        buf: *mut c_void,
        offset: u64,
        len: u64,
        done: DoneFn,
        arg: *mut c_void,
    ) -> c_int;
}

/// The process's one SPDK environment: the config it was started with, and the outcome.
static STARTED: Mutex<Option<(SpdkConfig, Result<(), String>)>> = Mutex::new(None);

fn start_spdk(cfg: &SpdkConfig) -> Result<(), String> {
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((have, r)) = &*started {
        if have != cfg {
            return Err(format!(
                "SPDK is already running with {have:?} in this process; {cfg:?} cannot start too"
            ));
        }
        return r.clone();
    }
    let (tx, rx) = mpsc::channel();
    let c = cfg.clone();
    let spawned = std::thread::Builder::new()
        .name("keel-spdk".into())
        .spawn(move || app_thread(c, tx));
    let r = match spawned {
        Ok(_) => rx
            .recv()
            .unwrap_or_else(|_| Err("the keel-spdk thread ended while starting".into())),
        Err(e) => Err(format!("cannot start the keel-spdk thread: {e}")),
    };
    *started = Some((cfg.clone(), r.clone()));
    r
}

extern "C" fn subsystems_started(rc: c_int, arg: *mut c_void) {
    // SAFETY: `arg` is the Cell<Option<c_int>> app_thread passed, alive while it polls.
    let slot = unsafe { &*(arg as *const Cell<Option<c_int>>) };
    slot.set(Some(rc));
}

/// The keel-spdk thread: the environment, SPDK's app thread, the subsystems; then it polls the
/// app thread for the life of the process.
fn app_thread(cfg: SpdkConfig, tx: mpsc::Sender<Result<(), String>>) {
    let fail = |msg: String| {
        let _ = tx.send(Err(msg));
    };
    let mut err = [0 as c_char; 256];
    let name = c"keel";
    // SAFETY: name and err outlive the call; err's length is passed.
    let rc = unsafe {
        keel_spdk_env_init(
            name.as_ptr(),
            cfg.mem_size_mb as c_int,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        // SAFETY: the shim wrote a NUL-terminated message into err.
        return fail(
            unsafe { CStr::from_ptr(err.as_ptr()) }
                .to_string_lossy()
                .into(),
        );
    }
    // SAFETY: the thread library is initialized above.
    let app = unsafe { keel_spdk_thread_start(c"keel-spdk-app".as_ptr()) };
    if app.is_null() {
        return fail("spdk_thread_create failed for the app thread".into());
    }
    let Ok(json) = CString::new(cfg.json_config.clone()) else {
        return fail(format!("{:?} contains a NUL byte", cfg.json_config));
    };
    let outcome: Cell<Option<c_int>> = Cell::new(None);
    // SAFETY: json and outcome live until the callback has run (polled below).
    unsafe {
        keel_spdk_subsystems_start(
            json.as_ptr(),
            subsystems_started,
            &outcome as *const _ as *mut c_void,
        )
    };
    while outcome.get().is_none() {
        // SAFETY: `app` is this OS thread's SPDK thread.
        if unsafe { keel_spdk_thread_poll(app) } == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    let rc = outcome.get().unwrap_or(0);
    if rc != 0 {
        return fail(format!(
            "SPDK could not start its subsystems from {}: {} (SPDK's log above says which \
             config entry)",
            cfg.json_config,
            std::io::Error::from_raw_os_error(-rc)
        ));
    }
    // SAFETY: a plain function pointer, registered once (this thread starts once).
    unsafe { libc::atexit(park_app_thread) };
    let _ = tx.send(Ok(()));
    while !EXITING.load(Ordering::Acquire) {
        // SAFETY: as above.
        if unsafe { keel_spdk_thread_poll(app) } == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    PARKED.store(true, Ordering::Release);
    loop {
        std::thread::park();
    }
}

/// Set at process exit: the app thread stops polling before DPDK's destructors free the memory
/// it polls (polling on through exit crashed the process).
static EXITING: AtomicBool = AtomicBool::new(false);
static PARKED: AtomicBool = AtomicBool::new(false);

extern "C" fn park_app_thread() {
    EXITING.store(true, Ordering::Release);
    for _ in 0..1000 {
        if PARKED.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The calling OS thread's SPDK thread, stopped (and destroyed) when the OS thread ends.
struct LocalThread(*mut SpdkThread);

impl Drop for LocalThread {
    fn drop(&mut self) {
        // SAFETY: self.0 is this OS thread's SPDK thread; it is polled until it has exited.
        // Bounded: an SPDK thread whose channels are all put exits within a few polls.
        unsafe {
            let mut first = true;
            for _ in 0..100_000 {
                if keel_spdk_thread_stop(self.0, first) {
                    return;
                }
                first = false;
            }
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<LocalThread>>> = const { RefCell::new(None) };
}

fn local_thread() -> Result<Rc<LocalThread>, String> {
    LOCAL.with(|l| {
        if let Some(t) = &*l.borrow() {
            return Ok(t.clone());
        }
        let name = CString::new(format!(
            "keel-{}",
            std::thread::current().name().unwrap_or("shard")
        ))
        .unwrap_or_else(|_| c"keel-shard".into());
        // SAFETY: the environment is started (start_spdk succeeded before any caller).
        let t = unsafe { keel_spdk_thread_start(name.as_ptr()) };
        if t.is_null() {
            return Err("spdk_thread_create failed".to_string());
        }
        let t = Rc::new(LocalThread(t));
        *l.borrow_mut() = Some(t.clone());
        Ok(t)
    })
}

/// A block-aligned buffer in SPDK's DMA memory.
pub struct SpdkBuf {
    ptr: *mut u8,
    len: usize,
}

impl Drop for SpdkBuf {
    fn drop(&mut self) {
        // SAFETY: ptr came from keel_spdk_dma_alloc and no I/O holds it (an I/O owns its
        // buffer until SPDK completes it).
        unsafe { keel_spdk_dma_free(self.ptr as *mut c_void) }
    }
}

impl Deref for SpdkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points at len initialized (zeroed at allocation) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl DerefMut for SpdkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// Bytes read from the bdev: exactly the requested range of a block-aligned read.
pub struct SpdkReadBuf {
    buf: SpdkBuf,
    start: usize,
    len: usize,
}

impl Deref for SpdkReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// An I/O SPDK has taken: its buffer stays here until the completion, which may come after the
/// future that started it is gone.
struct Op {
    done: Cell<Option<bool>>,
    buf: RefCell<Option<SpdkBuf>>,
    /// The device's count of I/Os SPDK holds, taken down at the completion.
    outstanding: Rc<Cell<usize>>,
}

extern "C" fn op_done(ok: bool, arg: *mut c_void) {
    // SAFETY: arg is the Rc<Op> leaked by IoFuture::poll for this I/O, taken back once here.
    let op = unsafe { Rc::from_raw(arg as *const Op) };
    op.done.set(Some(ok));
    op.outstanding.set(op.outstanding.get() - 1);
}

/// A bdev opened on the calling shard's thread.
///
/// Durability: a write is complete when the bdev says so; [`Device::sync`] sends a flush (aio:
/// fsync of the file, run on the shard's thread by SPDK's aio module; NVMe: the FLUSH command).
/// A bdev that cannot flush is refused at open.
pub struct SpdkDevice {
    desc: *mut BdevDesc,
    ch: *mut IoChannel,
    thread: Rc<LocalThread>,
    name: String,
    size: u64,
    /// I/Os SPDK holds (their futures may be gone: the completion frees the buffer then); the
    /// device closes only once they are done.
    outstanding: Rc<Cell<usize>>,
}

impl SpdkDevice {
    /// Opens bdev `bdev` (created by `cfg`'s JSON config) on the calling thread, starting SPDK
    /// in this process first if it is not yet running. The bdev must hold at least
    /// `size_bytes` (a multiple of 4096) and have a block size dividing 4096.
    pub async fn open(
        bdev: &str,
        cfg: &SpdkConfig,
        size_bytes: u64,
    ) -> Result<SpdkDevice, IoError> {
        let name = format!("spdk bdev {bdev}");
        let open_err = |msg: String| IoError::Open {
            path: name.clone(),
            msg,
        };
        if size_bytes == 0 || size_bytes % BLOCK_BYTES != 0 {
            return Err(open_err(format!(
                "size {size_bytes} is not a positive multiple of 4096"
            )));
        }
        if !Path::new(&cfg.json_config).is_file() {
            return Err(open_err(format!(
                "io.spdk_config {:?} is not a file",
                cfg.json_config
            )));
        }
        start_spdk(cfg).map_err(open_err)?;
        let thread = local_thread().map_err(open_err)?;
        let c_name = CString::new(bdev).map_err(|_| open_err("the name has a NUL byte".into()))?;
        let (mut desc, mut ch) = (std::ptr::null_mut(), std::ptr::null_mut());
        let (mut block_size, mut blocks, mut flush) = (0u32, 0u64, false);
        // SAFETY: every out-pointer points at a live local; this thread has its SPDK thread.
        let rc = unsafe {
            keel_spdk_open(
                c_name.as_ptr(),
                &mut desc,
                &mut block_size,
                &mut blocks,
                &mut flush,
                &mut ch,
            )
        };
        if rc != 0 {
            let why = std::io::Error::from_raw_os_error(-rc);
            return Err(open_err(format!(
                "cannot open it: {why} (is it created by {}?)",
                cfg.json_config
            )));
        }
        let dev = SpdkDevice {
            desc,
            ch,
            thread,
            name: name.clone(),
            size: size_bytes,
            outstanding: Rc::new(Cell::new(0)),
        };
        let have = block_size as u64 * blocks;
        if block_size == 0 || BLOCK_BYTES % block_size as u64 != 0 {
            return Err(open_err(format!(
                "its block size {block_size} does not divide 4096"
            )));
        }
        if have < size_bytes {
            return Err(open_err(format!(
                "it holds {have} bytes, the profile asks for {size_bytes}: lower \
                 device.size_bytes or create a larger bdev"
            )));
        }
        if !flush {
            return Err(open_err(
                "it does not support flush, so no write could be made durable".into(),
            ));
        }
        // Messages for this thread (a channel put, a bdev event) and the completions of I/Os
        // whose futures are gone, while no I/O future polls it.
        let t = Rc::downgrade(&dev.thread);
        glommio::spawn_local(async move {
            while let Some(t) = t.upgrade() {
                // SAFETY: t.0 is this OS thread's SPDK thread (the task runs on it).
                unsafe { keel_spdk_thread_poll(t.0) };
                drop(t);
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        })
        .detach();
        Ok(dev)
    }

    fn io(
        &self,
        kind: c_int,
        op: &'static str,
        buf: Option<SpdkBuf>,
        offset: u64,
        len: u64,
    ) -> IoFuture<'_> {
        IoFuture {
            dev: self,
            kind,
            what: op,
            offset,
            len,
            buf,
            op: None,
        }
    }

    fn err(&self, op: &'static str, offset: u64, len: u64, msg: String) -> IoError {
        IoError::Io {
            op,
            path: self.name.clone(),
            offset,
            len,
            source: std::io::Error::other(msg),
        }
    }
}

impl Drop for SpdkDevice {
    fn drop(&mut self) {
        // The channel must not go while SPDK still holds I/Os on it (those of dropped futures):
        // poll them home first. Bounded: a bdev completes or fails an I/O in far less.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.outstanding.get() > 0 && std::time::Instant::now() < deadline {
            // SAFETY: this OS thread's SPDK thread.
            unsafe { keel_spdk_thread_poll(self.thread.0) };
        }
        // SAFETY: desc and ch were opened on this thread; the put completes at a later poll of
        // the thread (the background task, or the thread's stop).
        unsafe { keel_spdk_close(self.desc, self.ch) }
    }
}

/// One I/O: submitted at its first poll, then polling the SPDK thread until it completes.
struct IoFuture<'a> {
    dev: &'a SpdkDevice,
    kind: c_int,
    what: &'static str,
    offset: u64,
    len: u64,
    buf: Option<SpdkBuf>,
    op: Option<Rc<Op>>,
}

impl Future for IoFuture<'_> {
    type Output = Result<Option<SpdkBuf>, IoError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let dev = self.dev;
        if self.op.is_none() {
            let op = Rc::new(Op {
                done: Cell::new(None),
                buf: RefCell::new(self.buf.take()),
                outstanding: dev.outstanding.clone(),
            });
            let ptr = op
                .buf
                .borrow()
                .as_ref()
                .map_or(std::ptr::null_mut(), |b| b.ptr);
            let arg = Rc::into_raw(op.clone()) as *mut c_void;
            // SAFETY: desc and ch are this thread's; the buffer (if any) lives in `op`, which
            // the completion holds through `arg` until SPDK is done with it.
            let rc = unsafe {
                keel_spdk_io(
                    self.kind,
                    dev.desc,
                    dev.ch,
                    ptr as *mut c_void,
                    self.offset,
                    self.len,
                    op_done,
                    arg,
                )
            };
            if rc == -libc::ENOMEM {
                // No bdev_io free now: give the buffer back and try again after a poll.
                // SAFETY: SPDK did not take arg; reclaim the reference it would have held.
                drop(unsafe { Rc::from_raw(arg as *const Op) });
                self.buf = op.buf.borrow_mut().take();
                // SAFETY: this thread's SPDK thread.
                unsafe { keel_spdk_thread_poll(dev.thread.0) };
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if rc != 0 {
                // SAFETY: as above.
                drop(unsafe { Rc::from_raw(arg as *const Op) });
                let why = std::io::Error::from_raw_os_error(-rc);
                return Poll::Ready(Err(dev.err(
                    self.what,
                    self.offset,
                    self.len,
                    why.to_string(),
                )));
            }
            dev.outstanding.set(dev.outstanding.get() + 1);
            self.op = Some(op);
        }
        let op = self.op.as_ref().expect("submitted above");
        if op.done.get().is_none() {
            // SAFETY: this thread's SPDK thread; completions run from this poll.
            unsafe { keel_spdk_thread_poll(dev.thread.0) };
        }
        match op.done.get() {
            None => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(ok) => {
                let buf = op.buf.borrow_mut().take();
                self.op = None;
                if ok {
                    Poll::Ready(Ok(buf))
                } else {
                    Poll::Ready(Err(dev.err(
                        self.what,
                        self.offset,
                        self.len,
                        "the bdev failed the I/O".into(),
                    )))
                }
            }
        }
    }
}

impl Device for SpdkDevice {
    type WriteBuf = SpdkBuf;
    type ReadBuf = SpdkReadBuf;

    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn alloc(&self, len: usize) -> SpdkBuf {
        assert!(
            len as u64 % BLOCK_BYTES == 0,
            "DMA buffer of {len} bytes is not block aligned"
        );
        // SAFETY: plain allocation; zeroed by SPDK.
        let ptr = unsafe { keel_spdk_dma_alloc(len.max(1), BLOCK_BYTES as usize) } as *mut u8;
        assert!(
            !ptr.is_null(),
            "SPDK has no DMA memory left for {len} bytes (raise the hugepages or io.spdk_mem_mb)"
        );
        SpdkBuf { ptr, len }
    }

    async fn write_at(&self, buf: SpdkBuf, offset: u64) -> Result<(), IoError> {
        let len = buf.len() as u64;
        crate::check_write(&self.name, offset, len, self.size)?;
        self.io(1, "write", Some(buf), offset, len).await.map(drop)
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<SpdkReadBuf, IoError> {
        let start = offset / BLOCK_BYTES * BLOCK_BYTES;
        crate::check_range("read", &self.name, offset, len as u64, self.size)?;
        let end = (offset + len as u64).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        let buf = self.alloc((end - start) as usize);
        let buf = self
            .io(0, "read", Some(buf), start, end - start)
            .await?
            .expect("a read gives its buffer back");
        Ok(SpdkReadBuf {
            buf,
            start: (offset - start) as usize,
            len,
        })
    }

    async fn sync(&self) -> Result<(), IoError> {
        self.io(2, "flush", None, 0, self.size).await.map(drop)
    }
}
