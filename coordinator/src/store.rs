//! The coordinator's embedded store: one SQLite file (WAL) in the state
//! directory, owned by one thread.
//!
//! Writes are queued and applied in batches, one transaction per batch, so a
//! fleet of 10,000 reporting nodes costs a few commits a second rather than one
//! per report. Reads go through the same queue, so a read sees every write
//! queued before it.
//!
//! When the disk is full (or failing), a batch that cannot be written is
//! held in memory, not lost: later writes join it, a node's row replacing
//! its earlier one, and the whole is tried again every few seconds until it
//! is stored. Meanwhile [`Store::refusing`] says why, so administrators'
//! changes are refused up front, and reads go on (the event log includes
//! the held events).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use dfleet_proto::domain::{Event, EventKind, Generation, GenerationRef, NodeState, Report};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the store {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: the store thread has stopped")]
    Gone,
    #[error("the store {path} fails its integrity check: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("{0}")]
    Held(String),
}

/// A node's persisted record.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub name: String,
    /// The state last announced in the event log.
    pub state: NodeState,
    pub cert_serial: Option<String>,
    pub cert_not_after: i64,
    pub boot_id: String,
    pub last_seen_ms: i64,
    pub rearmed: bool,
    pub report: Option<Report>,
    /// Restored from a backup, and no certificate issued since: the fleet
    /// adopts, once, a certificate its CA issued after the backup's snapshot.
    pub restored: bool,
}

/// An enrollment request waiting for approval, or a machine the inventory does
/// not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    pub mac: String,
    pub ip: String,
    /// Empty for an unknown machine.
    pub node: String,
    pub reason: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub attempts: u32,
    /// The public key of the request, so an approval covers that key only.
    pub public_key: Vec<u8>,
    pub approved: bool,
}

/// A rollout's record: its policy (JSON, written once) and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRow {
    pub id: u64,
    /// `None` for a plain reboot.
    pub target: Option<GenerationRef>,
    pub policy: String,
    /// `running`, `paused`, `aborting`, `completed` or `aborted`.
    pub state: String,
    /// Why it is paused (or what ended it).
    pub reason: String,
    pub actor: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// One node of a rollout: where it is, and what the rollout must remember
/// about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutNodeRow {
    pub rollout: u64,
    /// Its place in the rollout's order.
    pub seq: u32,
    pub node: String,
    /// The step's name (`pending`, `draining`, …).
    pub step: String,
    /// When it entered the step.
    pub step_at_ms: i64,
    /// Rebooted by its power command rather than its agent.
    pub power: bool,
    /// Why it failed or was skipped.
    pub reason: String,
    pub canary: bool,
    pub wave: u32,
    /// The generation it was assigned before the rollout.
    pub previous: Option<GenerationRef>,
    /// The boot it ran when its reboot was ordered.
    pub boot_id: String,
    /// The rollout ran the drain command on it, so undrains it.
    pub drained: bool,
    /// Failed before the last resume.
    pub forgiven: bool,
}

/// Everything read at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    pub nodes: Vec<NodeRow>,
    pub pending: Vec<PendingRow>,
    pub last_event_id: u64,
    /// Node → the generation it boots next.
    pub assignments: std::collections::HashMap<String, GenerationRef>,
    /// Every rollout, oldest first.
    pub rollouts: Vec<RolloutRow>,
    /// The nodes of the rollouts not yet completed or aborted, by rollout
    /// and order.
    pub rollout_nodes: Vec<RolloutNodeRow>,
    /// Switches such as `reboots_frozen`.
    pub settings: std::collections::HashMap<String, String>,
    /// Set when the store came from `dfleet restore`.
    pub restore: Option<RestoreMark>,
}

/// When the restored store's snapshot was taken, and when it was restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreMark {
    pub snapshot_ms: i64,
    pub restored_ms: i64,
}

const RESTORE_SNAPSHOT: &str = "restore.snapshot_ms";
const RESTORE_AT: &str = "restore.at_ms";

#[derive(Debug)]
pub enum Write {
    Event(Event),
    Node(Box<NodeRow>),
    RemoveNode(String),
    Pending(PendingRow),
    RemovePending(String),
    /// Sets (or with `None` clears) a node's next-boot generation.
    Assign(String, Option<GenerationRef>),
    Rollout(RolloutRow),
    RolloutNode(RolloutNodeRow),
    /// Sets (or with `None` removes) a switch.
    Setting(String, Option<String>),
}

enum Op {
    Write(Write),
    Events {
        after_id: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Event>, StoreError>>,
    },
    Flush(oneshot::Sender<()>),
    /// Like `Flush`, but answers whether every write since the last commit
    /// was stored.
    Commit(oneshot::Sender<Result<(), StoreError>>),
    Snapshot {
        path: PathBuf,
        reply: oneshot::Sender<Result<i64, StoreError>>,
    },
}

/// A handle to the store thread. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Store {
    tx: mpsc::Sender<Op>,
    health: Arc<Mutex<Health>>,
    path: Arc<PathBuf>,
}

/// How the store's writes fare, for metrics, status and refusals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// Writes that could not be stored yet, held in memory and tried again.
    pub held: usize,
    /// While writes are held: since when (unix ms), and why.
    pub failing: Option<(i64, String)>,
    /// Batches that could not be written, since the start.
    pub failures: u64,
}

/// While writes are held, how often they are tried again.
const RETRY: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Op")
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    cert_serial TEXT,
    cert_not_after INTEGER NOT NULL DEFAULT 0,
    boot_id TEXT NOT NULL DEFAULT '',
    last_seen_ms INTEGER NOT NULL DEFAULT 0,
    rearmed INTEGER NOT NULL DEFAULT 0,
    report TEXT,
    restored INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    node TEXT NOT NULL,
    detail TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_node ON events(node);
CREATE TABLE IF NOT EXISTS pending (
    mac TEXT PRIMARY KEY,
    ip TEXT NOT NULL,
    node TEXT NOT NULL,
    reason TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    approved INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    node TEXT PRIMARY KEY,
    image TEXT NOT NULL,
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY,
    image TEXT,
    generation INTEGER,
    policy TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_nodes (
    rollout INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    node TEXT NOT NULL,
    step TEXT NOT NULL,
    step_at_ms INTEGER NOT NULL,
    power INTEGER NOT NULL,
    reason TEXT NOT NULL,
    canary INTEGER NOT NULL,
    wave INTEGER NOT NULL,
    previous_image TEXT,
    previous_generation INTEGER,
    boot_id TEXT NOT NULL,
    drained INTEGER NOT NULL,
    forgiven INTEGER NOT NULL,
    PRIMARY KEY (rollout, node)
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

impl Store {
    /// Opens (or creates) `dir/dfleet.db`, loads what the coordinator needs to
    /// resume, and starts the store thread.
    pub fn open(dir: &Path) -> Result<(Store, Loaded), StoreError> {
        let path = dir.join("dfleet.db");
        let open = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open)?;
        conn.pragma_update(None, "busy_timeout", 5000)
            .map_err(open)?;
        conn.execute_batch(SCHEMA).map_err(open)?;
        migrate(&conn).map_err(open)?;
        let loaded = load(&conn)?;
        let (tx, rx) = mpsc::channel();
        let health = Arc::new(Mutex::new(Health::default()));
        let writer = Writer {
            conn,
            held: Held::default(),
            failed: None,
            next_try: None,
            health: health.clone(),
        };
        std::thread::Builder::new()
            .name("dfleet-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok((
            Store {
                tx,
                health,
                path: Arc::new(path),
            },
            loaded,
        ))
    }

    /// How writes fare now.
    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    /// Why a change must be refused now, if it must: the store holds writes
    /// it cannot write.
    pub fn refusing(&self) -> Option<String> {
        let h = self.health();
        let (since, why) = h.failing?;
        let since = jiff::Timestamp::from_millisecond(since)
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default();
        Some(format!(
            "the store {} cannot be written since {since} ({why}); {} writes are held in memory \
             and stored as soon as it can be. Changes are refused until then; reads still work. \
             Free space in {}",
            self.path.display(),
            h.held,
            self.path
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ))
    }

    /// Queues a write. Writes are applied in order.
    pub fn write(&self, w: Write) {
        if self.tx.send(Op::Write(w)).is_err() {
            tracing::error!("store thread is gone; a write was lost");
        }
    }

    /// Events with an id above `after_id`, oldest first, at most `limit`.
    pub async fn events(&self, after_id: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Events {
                after_id,
                limit,
                reply,
            })
            .map_err(|_| StoreError::Gone)?;
        rx.await.map_err(|_| StoreError::Gone)?
    }

    /// Waits until every write queued so far is committed, and says whether
    /// all of them since the last `commit` were, and none is held: what an
    /// actor that must store a step before acting on it waits for.
    pub async fn commit(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Commit(reply))
            .map_err(|_| StoreError::Gone)?;
        rx.await.map_err(|_| StoreError::Gone)?
    }

    /// Writes a consistent copy of the store, with every write queued so far,
    /// to `path` (`VACUUM INTO`); returns the time it was taken.
    pub async fn snapshot(&self, path: PathBuf) -> Result<i64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Snapshot { path, reply })
            .map_err(|_| StoreError::Gone)?;
        rx.await.map_err(|_| StoreError::Gone)?
    }

    /// Waits until every write queued so far is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Flush(reply))
            .map_err(|_| StoreError::Gone)?;
        rx.await.map_err(|_| StoreError::Gone)
    }
}

fn load(conn: &Connection) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded::default();
    let mut stmt = conn.prepare(
        "SELECT name, state, cert_serial, cert_not_after, boot_id, last_seen_ms, rearmed, report, restored FROM nodes",
    )?;
    let rows = stmt.query_map([], |r| {
        let report: Option<String> = r.get(7)?;
        Ok(NodeRow {
            name: r.get(0)?,
            state: r.get::<_, String>(1)?.parse().unwrap_or(NodeState::Unknown),
            cert_serial: r.get(2)?,
            cert_not_after: r.get(3)?,
            boot_id: r.get(4)?,
            last_seen_ms: r.get(5)?,
            rearmed: r.get::<_, i64>(6)? != 0,
            // A report written by another version that no longer parses is
            // dropped: the node sends a fresh one when it reconnects.
            report: report.and_then(|s| serde_json::from_str(&s).ok()),
            restored: r.get::<_, i64>(8)? != 0,
        })
    })?;
    for row in rows {
        loaded.nodes.push(row?);
    }
    let mut stmt = conn.prepare(
        "SELECT mac, ip, node, reason, first_seen_ms, last_seen_ms, attempts, public_key, approved FROM pending",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(PendingRow {
            mac: r.get(0)?,
            ip: r.get(1)?,
            node: r.get(2)?,
            reason: r.get(3)?,
            first_seen_ms: r.get(4)?,
            last_seen_ms: r.get(5)?,
            attempts: r.get(6)?,
            public_key: r.get(7)?,
            approved: r.get::<_, i64>(8)? != 0,
        })
    })?;
    for row in rows {
        loaded.pending.push(row?);
    }
    let mut stmt = conn.prepare("SELECT node, image, generation FROM assignments")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            GenerationRef {
                image: r.get(1)?,
                generation: Generation(r.get::<_, i64>(2)? as u64),
            },
        ))
    })?;
    for row in rows {
        let (node, g) = row?;
        loaded.assignments.insert(node, g);
    }
    let generation_ref = |image: Option<String>, number: Option<i64>| {
        image.zip(number).map(|(image, n)| GenerationRef {
            image,
            generation: Generation(n as u64),
        })
    };
    let mut stmt = conn.prepare(
        "SELECT id, image, generation, policy, state, reason, actor, created_ms, updated_ms FROM rollouts ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(RolloutRow {
            id: r.get::<_, i64>(0)? as u64,
            target: generation_ref(r.get(1)?, r.get(2)?),
            policy: r.get(3)?,
            state: r.get(4)?,
            reason: r.get(5)?,
            actor: r.get(6)?,
            created_ms: r.get(7)?,
            updated_ms: r.get(8)?,
        })
    })?;
    for row in rows {
        loaded.rollouts.push(row?);
    }
    let mut stmt = conn.prepare(
        "SELECT n.rollout, n.seq, n.node, n.step, n.step_at_ms, n.power, n.reason, n.canary, n.wave,
                n.previous_image, n.previous_generation, n.boot_id, n.drained, n.forgiven
         FROM rollout_nodes n JOIN rollouts r ON r.id = n.rollout
         WHERE r.state NOT IN ('completed', 'aborted')
         ORDER BY n.rollout, n.seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(RolloutNodeRow {
            rollout: r.get::<_, i64>(0)? as u64,
            seq: r.get(1)?,
            node: r.get(2)?,
            step: r.get(3)?,
            step_at_ms: r.get(4)?,
            power: r.get::<_, i64>(5)? != 0,
            reason: r.get(6)?,
            canary: r.get::<_, i64>(7)? != 0,
            wave: r.get(8)?,
            previous: generation_ref(r.get(9)?, r.get(10)?),
            boot_id: r.get(11)?,
            drained: r.get::<_, i64>(12)? != 0,
            forgiven: r.get::<_, i64>(13)? != 0,
        })
    })?;
    for row in rows {
        loaded.rollout_nodes.push(row?);
    }
    let mut stmt = conn.prepare("SELECT key, value FROM settings")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    for row in rows {
        let (k, v) = row?;
        loaded.settings.insert(k, v);
    }
    let setting = |k: &str| loaded.settings.get(k).and_then(|v| v.parse::<i64>().ok());
    loaded.restore =
        setting(RESTORE_SNAPSHOT)
            .zip(setting(RESTORE_AT))
            .map(|(snapshot_ms, restored_ms)| RestoreMark {
                snapshot_ms,
                restored_ms,
            });
    loaded.last_event_id = conn
        .query_row("SELECT MAX(id) FROM events", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .optional()?
        .flatten()
        .unwrap_or(0) as u64;
    Ok(loaded)
}

/// Columns added after a store's first release, added to older stores.
fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let has_restored: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('nodes') WHERE name = 'restored'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_restored {
        conn.execute_batch("ALTER TABLE nodes ADD COLUMN restored INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

/// `PRAGMA integrity_check` on an open store: `Ok` when SQLite says "ok".
pub fn integrity_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    if lines.len() == 1 && lines[0] == "ok" {
        Ok(())
    } else {
        Err(StoreError::Damaged {
            path: path.to_path_buf(),
            detail: lines.join("; "),
        })
    }
}

/// Opens the store at `path` and runs `PRAGMA integrity_check` (a stopped
/// coordinator's, or a copy).
pub fn check_file(path: &Path) -> Result<(), StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    integrity_check(&conn, path)
}

/// Prepares a store copied out of a backup to be served again: checks its
/// integrity, brings its schema up to date, marks every node row as
/// restored and records when the snapshot was taken and restored. Returns
/// the number of nodes it holds.
pub fn mark_restored(path: &Path, snapshot_ms: i64, now_ms: i64) -> Result<usize, StoreError> {
    let open = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open)?;
    integrity_check(&conn, path)?;
    conn.execute_batch(SCHEMA).map_err(open)?;
    migrate(&conn).map_err(open)?;
    let tx = conn.transaction()?;
    let nodes = tx.execute("UPDATE nodes SET restored = 1", [])?;
    for (k, v) in [(RESTORE_SNAPSHOT, snapshot_ms), (RESTORE_AT, now_ms)] {
        tx.execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
            params![k, v.to_string()],
        )?;
    }
    tx.commit()?;
    conn.close().map_err(|(_, e)| open(e))?;
    Ok(nodes)
}

const BATCH: usize = 4096;

fn lock(h: &Mutex<Health>) -> std::sync::MutexGuard<'_, Health> {
    // Plain data: a panic elsewhere cannot leave it half-changed.
    h.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes waiting for the disk. A node's row replaces the one held before
/// it, so a fleet reporting for hours while the disk is full holds one row
/// per node, plus the events.
#[derive(Default)]
struct Held {
    writes: Vec<Option<Write>>,
    /// Node → the index of its held row (or removal).
    node_at: HashMap<String, usize>,
    live: usize,
}

impl Held {
    fn push(&mut self, w: Write) {
        let node = match &w {
            Write::Node(n) => Some(n.name.clone()),
            Write::RemoveNode(name) => Some(name.clone()),
            _ => None,
        };
        if let Some(node) = node
            && let Some(i) = self.node_at.insert(node, self.writes.len())
            && self.writes[i].take().is_some()
        {
            self.live -= 1;
        }
        self.writes.push(Some(w));
        self.live += 1;
    }

    fn take(&mut self) -> Vec<Write> {
        self.node_at.clear();
        self.live = 0;
        std::mem::take(&mut self.writes)
            .into_iter()
            .flatten()
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn events(&self) -> impl Iterator<Item = &Event> {
        self.writes.iter().filter_map(|w| match w {
            Some(Write::Event(e)) => Some(e),
            _ => None,
        })
    }
}

/// Whether a failed write may succeed later unchanged: the disk is full or
/// failing, or the file is read-only or locked for now.
fn retryable(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(DiskFull | SystemIoFailure | ReadOnly | DatabaseBusy | DatabaseLocked | CannotOpen)
    )
}

/// The store thread's state.
struct Writer {
    conn: Connection,
    held: Held,
    /// The first failure since the last `Commit`, which reports it.
    failed: Option<rusqlite::Error>,
    /// While writes are held: when they are tried next.
    next_try: Option<Instant>,
    health: Arc<Mutex<Health>>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        loop {
            // Held writes are tried again when due, however busy the queue.
            if self.next_try.is_some_and(|at| at <= Instant::now()) {
                let held = self.held.take();
                self.store(held);
            }
            let first = match self.next_try {
                None => match rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                },
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(op) => op,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            // Writes are applied in one transaction; a read or flush first
            // commits the writes queued before it, so it sees them.
            let mut writes = Vec::new();
            for op in batch {
                match op {
                    Op::Write(w) => writes.push(w),
                    other => {
                        if !writes.is_empty() {
                            self.write(std::mem::take(&mut writes));
                        }
                        self.answer(other);
                    }
                }
            }
            if !writes.is_empty() {
                self.write(writes);
            }
        }
        // Shutting down: a last try for what is held.
        if !self.held.is_empty() {
            let held = self.held.take();
            let n = held.len();
            if let Err(e) = apply(&mut self.conn, &held) {
                tracing::error!(error = %e, writes = n, "store: writes still held at shutdown are lost");
            }
        }
    }

    /// Stores `writes`, or holds them behind writes already held (which are
    /// tried again on their own schedule, not at every batch).
    fn write(&mut self, writes: Vec<Write>) {
        if self.held.is_empty() {
            self.store(writes);
        } else {
            for w in writes {
                self.held.push(w);
            }
            self.publish();
        }
    }

    fn store(&mut self, writes: Vec<Write>) {
        match apply(&mut self.conn, &writes) {
            Ok(()) => {
                let recovered = lock(&self.health).failing.take();
                if let Some((since, _)) = recovered {
                    tracing::info!(
                        writes = writes.len(),
                        after_seconds = (crate::fleet::now_ms() - since) / 1000,
                        "store: writes stored again; the held writes are written"
                    );
                }
                self.next_try = None;
            }
            Err(e) if retryable(&e) => {
                let first = {
                    let mut h = lock(&self.health);
                    h.failures += 1;
                    let first = h.failing.is_none();
                    if first {
                        h.failing = Some((crate::fleet::now_ms(), e.to_string()));
                    }
                    first
                };
                if first {
                    tracing::error!(
                        error = %e,
                        writes = writes.len(),
                        "store: writes fail; held in memory and tried again every {}s, \
                         changes refused until they are stored",
                        RETRY.as_secs()
                    );
                }
                for w in writes {
                    self.held.push(w);
                }
                self.next_try = Some(Instant::now() + RETRY);
            }
            Err(e) => {
                // Not the disk: trying again would fail again. (Nothing is
                // held now: `store` is only given all of it.)
                tracing::error!(error = %e, "store: a batch of writes failed and was rolled back");
                let mut h = lock(&self.health);
                h.failures += 1;
                h.failing = None;
                self.next_try = None;
                self.failed.get_or_insert(e);
            }
        }
        self.publish();
    }

    fn publish(&self) {
        lock(&self.health).held = self.held.live;
    }

    fn held_error(&self) -> Option<StoreError> {
        if self.held.is_empty() {
            return None;
        }
        let why = lock(&self.health)
            .failing
            .as_ref()
            .map(|(_, why)| why.clone())
            .unwrap_or_default();
        Some(StoreError::Held(format!(
            "not stored yet: {why}; {} writes are held in memory until the store can be written",
            self.held.live
        )))
    }

    fn answer(&mut self, op: Op) {
        match op {
            Op::Commit(reply) => {
                let result = match (self.held_error(), self.failed.take()) {
                    (Some(e), _) => Err(e),
                    (None, Some(e)) => Err(StoreError::Sql(e)),
                    (None, None) => Ok(()),
                };
                let _ = reply.send(result);
            }
            Op::Events {
                after_id,
                limit,
                reply,
            } => {
                let _ = reply.send(self.read_events(after_id, limit));
            }
            Op::Flush(reply) => {
                let _ = reply.send(());
            }
            Op::Snapshot { path, reply } => {
                let result = match self.held_error() {
                    // A copy without them would not be what the daemon holds.
                    Some(e) => Err(e),
                    None => {
                        let at = crate::fleet::now_ms();
                        self.conn
                            .execute("VACUUM INTO ?1", params![path.to_string_lossy()])
                            .map(|_| at)
                            .map_err(StoreError::from)
                    }
                };
                let _ = reply.send(result);
            }
            Op::Write(_) => unreachable!("writes are applied, not answered"),
        }
    }

    /// Stored events, then held ones, after `after_id`, at most `limit`.
    fn read_events(&self, after_id: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut out = read_events(&self.conn, after_id, limit)?;
        if !self.held.is_empty() {
            out.extend(self.held.events().filter(|e| e.id > after_id).cloned());
            out.sort_by_key(|e| e.id);
            out.dedup_by_key(|e| e.id);
            out.truncate(limit);
        }
        Ok(out)
    }
}

fn apply(conn: &mut Connection, writes: &[Write]) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    for w in writes {
        match w {
            Write::Event(e) => {
                tx.prepare_cached(
                        "INSERT OR REPLACE INTO events (id, at_ms, kind, node, detail, actor) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![e.id as i64, e.at_unix_ms, e.kind.as_str(), e.node, e.detail, e.actor])?;
            }
            Write::Node(n) => {
                let report = n
                    .report
                    .as_ref()
                    .and_then(|r| serde_json::to_string(r).ok());
                tx.prepare_cached(
                        "INSERT INTO nodes (name, state, cert_serial, cert_not_after, boot_id, last_seen_ms, rearmed, report, restored)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                         ON CONFLICT(name) DO UPDATE SET state=?2, cert_serial=?3, cert_not_after=?4,
                           boot_id=?5, last_seen_ms=?6, rearmed=?7, report=?8, restored=?9",
                    )?
                    .execute(params![
                        n.name,
                        n.state.as_str(),
                        n.cert_serial,
                        n.cert_not_after,
                        n.boot_id,
                        n.last_seen_ms,
                        n.rearmed as i64,
                        report,
                        n.restored as i64
                    ])?;
            }
            Write::RemoveNode(name) => {
                tx.prepare_cached("DELETE FROM nodes WHERE name = ?1")?
                    .execute(params![name])?;
            }
            Write::Pending(p) => {
                tx.prepare_cached(
                        "INSERT OR REPLACE INTO pending (mac, ip, node, reason, first_seen_ms, last_seen_ms, attempts, public_key, approved)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )?
                    .execute(params![
                        p.mac,
                        p.ip,
                        p.node,
                        p.reason,
                        p.first_seen_ms,
                        p.last_seen_ms,
                        p.attempts,
                        p.public_key,
                        p.approved as i64
                    ])?;
            }
            Write::Assign(node, Some(g)) => {
                tx.prepare_cached(
                        "INSERT OR REPLACE INTO assignments (node, image, generation) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![node, g.image, g.generation.0 as i64])?;
            }
            Write::Assign(node, None) => {
                tx.prepare_cached("DELETE FROM assignments WHERE node = ?1")?
                    .execute(params![node])?;
            }
            Write::RemovePending(mac) => {
                tx.prepare_cached("DELETE FROM pending WHERE mac = ?1")?
                    .execute(params![mac])?;
            }
            Write::Rollout(r) => {
                tx.prepare_cached(
                        "INSERT INTO rollouts (id, image, generation, policy, state, reason, actor, created_ms, updated_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                         ON CONFLICT(id) DO UPDATE SET state=?5, reason=?6, updated_ms=?9",
                    )?
                    .execute(params![
                        r.id as i64,
                        r.target.as_ref().map(|g| g.image.clone()),
                        r.target.as_ref().map(|g| g.generation.0 as i64),
                        r.policy,
                        r.state,
                        r.reason,
                        r.actor,
                        r.created_ms,
                        r.updated_ms
                    ])?;
            }
            Write::RolloutNode(n) => {
                tx.prepare_cached(
                        "INSERT OR REPLACE INTO rollout_nodes (rollout, seq, node, step, step_at_ms, power, reason,
                           canary, wave, previous_image, previous_generation, boot_id, drained, forgiven)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                    )?
                    .execute(params![
                        n.rollout as i64,
                        n.seq,
                        n.node,
                        n.step,
                        n.step_at_ms,
                        n.power as i64,
                        n.reason,
                        n.canary as i64,
                        n.wave,
                        n.previous.as_ref().map(|g| g.image.clone()),
                        n.previous.as_ref().map(|g| g.generation.0 as i64),
                        n.boot_id,
                        n.drained as i64,
                        n.forgiven as i64
                    ])?;
            }
            Write::Setting(key, Some(value)) => {
                tx.prepare_cached("INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)")?
                    .execute(params![key, value])?;
            }
            Write::Setting(key, None) => {
                tx.prepare_cached("DELETE FROM settings WHERE key = ?1")?
                    .execute(params![key])?;
            }
        }
    }
    tx.commit()
}

fn read_events(conn: &Connection, after_id: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, at_ms, kind, node, detail, actor FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after_id as i64, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, at, kind, node, detail, actor) = row?;
        // Kinds this build does not know (written by a newer one) are skipped.
        let Ok(kind) = kind.parse::<EventKind>() else {
            continue;
        };
        out.push(Event {
            id: id as u64,
            at_unix_ms: at,
            kind,
            node,
            detail,
            actor,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, kind: EventKind) -> Event {
        Event {
            id,
            at_unix_ms: 1000 + id as i64,
            kind,
            node: "cn1".into(),
            detail: format!("d{id}"),
            actor: String::new(),
        }
    }

    #[tokio::test]
    async fn writes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, loaded) = Store::open(dir.path()).unwrap();
            assert!(loaded.nodes.is_empty());
            store.write(Write::Event(event(1, EventKind::Enrolled)));
            store.write(Write::Event(event(2, EventKind::Ready)));
            store.write(Write::Node(Box::new(NodeRow {
                name: "cn1".into(),
                state: NodeState::Ready,
                cert_serial: Some("ab".into()),
                cert_not_after: 99,
                boot_id: "b1".into(),
                last_seen_ms: 5,
                rearmed: false,
                report: Some(Report::default()),
                restored: false,
            })));
            store.flush().await.unwrap();
        }
        let (store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.last_event_id, 2);
        assert_eq!(loaded.nodes.len(), 1);
        assert_eq!(loaded.nodes[0].state, NodeState::Ready);
        assert_eq!(loaded.nodes[0].cert_serial.as_deref(), Some("ab"));
        assert_eq!(loaded.nodes[0].report, Some(Report::default()));
        let events = store.events(1, 10).await.unwrap();
        assert_eq!(events, vec![event(2, EventKind::Ready)]);
    }

    fn rollout_node(rollout: u64, seq: u32, node: &str, step: &str) -> RolloutNodeRow {
        RolloutNodeRow {
            rollout,
            seq,
            node: node.into(),
            step: step.into(),
            step_at_ms: 1234,
            power: seq == 1,
            reason: String::new(),
            canary: seq == 0,
            wave: 1,
            previous: (seq == 0).then(|| GenerationRef {
                image: "compute".into(),
                generation: Generation(7),
            }),
            boot_id: "b".into(),
            drained: true,
            forgiven: seq == 1,
        }
    }

    fn rollout(id: u64, state: &str) -> RolloutRow {
        RolloutRow {
            id,
            target: (id != 3).then(|| GenerationRef {
                image: "compute".into(),
                generation: Generation(8),
            }),
            policy: "{}".into(),
            state: state.into(),
            reason: String::new(),
            actor: "uid:0".into(),
            created_ms: 1,
            updated_ms: 2,
        }
    }

    #[tokio::test]
    async fn rollouts_and_switches_survive_a_reopen_and_finished_ones_load_without_nodes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            store.write(Write::Rollout(rollout(1, "completed")));
            store.write(Write::RolloutNode(rollout_node(1, 0, "cn1", "done")));
            store.write(Write::Rollout(rollout(2, "running")));
            store.write(Write::RolloutNode(rollout_node(2, 1, "cn2", "pending")));
            store.write(Write::RolloutNode(rollout_node(2, 0, "cn1", "pending")));
            // A later step of the same node replaces the earlier one.
            store.write(Write::RolloutNode(rollout_node(2, 0, "cn1", "rebooting")));
            // A state change keeps the policy written first.
            let mut paused = rollout(2, "paused");
            paused.policy = "changed".into();
            paused.reason = "canary cn1 failed".into();
            store.write(Write::Rollout(paused));
            // A plain reboot has no target.
            store.write(Write::Rollout(rollout(3, "completed")));
            store.write(Write::Setting(
                "reboots_frozen".into(),
                Some("uid:0".into()),
            ));
            store.write(Write::Setting("gone".into(), Some("x".into())));
            store.write(Write::Setting("gone".into(), None));
            store.commit().await.unwrap();
        }
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.rollouts.len(), 3);
        assert_eq!(loaded.rollouts[2].target, None);
        assert_eq!(loaded.rollouts[1].state, "paused");
        assert_eq!(loaded.rollouts[1].reason, "canary cn1 failed");
        assert_eq!(loaded.rollouts[1].policy, "{}");
        assert_eq!(
            loaded.rollout_nodes,
            vec![
                rollout_node(2, 0, "cn1", "rebooting"),
                rollout_node(2, 1, "cn2", "pending")
            ]
        );
        assert_eq!(
            loaded.settings,
            [("reboots_frozen".to_string(), "uid:0".to_string())].into()
        );
    }

    #[tokio::test]
    async fn a_commit_reports_a_write_that_failed_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        store.commit().await.unwrap();
        // Another process broke the schema under the store.
        Connection::open(dir.path().join("dfleet.db"))
            .unwrap()
            .execute_batch("DROP TABLE settings")
            .unwrap();
        store.write(Write::Setting("reboots_frozen".into(), Some("x".into())));
        let e = store.commit().await.unwrap_err().to_string();
        assert!(e.contains("settings"), "{e}");
        store.write(Write::Event(event(1, EventKind::Connected)));
        store.commit().await.unwrap();
    }

    #[test]
    fn held_writes_keep_one_row_per_node_and_every_event() {
        let mut held = Held::default();
        held.push(node("cn1", "a"));
        held.push(Write::Event(event(1, EventKind::Connected)));
        held.push(node("cn2", "b"));
        held.push(node("cn1", "c"));
        held.push(Write::RemoveNode("cn2".into()));
        held.push(Write::Event(event(2, EventKind::Ready)));
        assert_eq!(held.live, 4);
        assert_eq!(held.events().map(|e| e.id).collect::<Vec<_>>(), [1, 2]);
        let order: Vec<String> = held
            .take()
            .iter()
            .map(|w| match w {
                Write::Node(n) => format!("node {} {:?}", n.name, n.cert_serial),
                Write::RemoveNode(n) => format!("remove {n}"),
                Write::Event(e) => format!("event {}", e.id),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(
            order,
            ["event 1", "node cn1 Some(\"c\")", "remove cn2", "event 2"]
        );
        assert!(held.is_empty());
    }

    #[test]
    fn a_full_disk_is_worth_retrying_a_broken_schema_is_not() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert!(retryable(&full));
        let io = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_WRITE),
            None,
        );
        assert!(retryable(&io));
        let conn = Connection::open_in_memory().unwrap();
        let missing = conn
            .execute("INSERT INTO nowhere VALUES (1)", [])
            .unwrap_err();
        assert!(!retryable(&missing));
    }

    #[tokio::test]
    async fn reads_see_earlier_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        for id in 1..=100 {
            store.write(Write::Event(event(id, EventKind::Connected)));
        }
        let events = store.events(0, 1000).await.unwrap();
        assert_eq!(events.len(), 100);
        assert_eq!(store.events(95, 2).await.unwrap().len(), 2);
    }

    fn node(name: &str, serial: &str) -> Write {
        Write::Node(Box::new(NodeRow {
            name: name.into(),
            state: NodeState::Ready,
            cert_serial: Some(serial.into()),
            cert_not_after: 99,
            boot_id: "b1".into(),
            last_seen_ms: 5,
            rearmed: false,
            report: None,
            restored: false,
        }))
    }

    #[tokio::test]
    async fn a_snapshot_holds_what_was_queued_before_it_and_restores_marked() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        store.write(node("cn1", "ab"));
        let snap = dir.path().join("snap.db");
        let at = store.snapshot(snap.clone()).await.unwrap();
        store.write(node("cn2", "cd"));
        store.flush().await.unwrap();

        assert_eq!(mark_restored(&snap, at, at + 5).unwrap(), 1);
        let fresh = tempfile::tempdir().unwrap();
        std::fs::copy(&snap, fresh.path().join("dfleet.db")).unwrap();
        let (_, loaded) = Store::open(fresh.path()).unwrap();
        assert_eq!(loaded.nodes.len(), 1);
        assert_eq!(loaded.nodes[0].name, "cn1");
        assert!(loaded.nodes[0].restored);
        assert_eq!(
            loaded.restore,
            Some(RestoreMark {
                snapshot_ms: at,
                restored_ms: at + 5
            })
        );
        // The live store is not marked.
        drop(store);
        let (_, live) = Store::open(dir.path()).unwrap();
        assert_eq!(live.nodes.len(), 2);
        assert!(live.nodes.iter().all(|n| !n.restored));
        assert_eq!(live.restore, None);
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dfleet.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(
                "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2000)
                 INSERT INTO events (id, at_ms, kind, node, detail, actor)
                 SELECT i, 0, 'ready', 'cn1', 'x', '' FROM c",
            )
            .unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        // The type byte of a b-tree page in the middle of the file (4 KiB
        // pages): no page has type 0xff.
        let pages = bytes.len() / 4096;
        bytes[(pages / 2) * 4096] = 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = mark_restored(&path, 1, 2).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Damaged { .. } | StoreError::Sql(_) | StoreError::Open { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn an_older_store_gains_the_restored_column() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("dfleet.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE nodes (name TEXT PRIMARY KEY, state TEXT NOT NULL, cert_serial TEXT,
                   cert_not_after INTEGER NOT NULL DEFAULT 0, boot_id TEXT NOT NULL DEFAULT '',
                   last_seen_ms INTEGER NOT NULL DEFAULT 0, rearmed INTEGER NOT NULL DEFAULT 0, report TEXT);
                 INSERT INTO nodes (name, state, cert_serial) VALUES ('cn1', 'ready', 'ab');",
            )
            .unwrap();
        }
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.nodes.len(), 1);
        assert_eq!(loaded.nodes[0].cert_serial.as_deref(), Some("ab"));
        assert!(!loaded.nodes[0].restored);
    }
}
