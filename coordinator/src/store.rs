//! The coordinator's embedded store: one SQLite file (WAL) in the state
//! directory, owned by one thread.
//!
//! Writes are queued and applied in batches, one transaction per batch, so a
//! fleet of 10,000 reporting nodes costs a few commits a second rather than one
//! per report. Reads go through the same queue, so a read sees every write
//! queued before it.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use dfleet_proto::domain::{Event, EventKind, Generation, GenerationRef, NodeState, Report};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

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

/// Everything read at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    pub nodes: Vec<NodeRow>,
    pub pending: Vec<PendingRow>,
    pub last_event_id: u64,
    /// Node → the generation it boots next.
    pub assignments: std::collections::HashMap<String, GenerationRef>,
}

#[derive(Debug)]
pub enum Write {
    Event(Event),
    Node(Box<NodeRow>),
    RemoveNode(String),
    Pending(PendingRow),
    RemovePending(String),
    /// Sets (or with `None` clears) a node's next-boot generation.
    Assign(String, Option<GenerationRef>),
}

enum Op {
    Write(Write),
    Events {
        after_id: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Event>, StoreError>>,
    },
    Flush(oneshot::Sender<()>),
}

/// A handle to the store thread. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Store {
    tx: mpsc::Sender<Op>,
}

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
    report TEXT
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
        let loaded = load(&conn)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("dfleet-store".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok((Store { tx }, loaded))
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
        "SELECT name, state, cert_serial, cert_not_after, boot_id, last_seen_ms, rearmed, report FROM nodes",
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
    loaded.last_event_id = conn
        .query_row("SELECT MAX(id) FROM events", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .optional()?
        .flatten()
        .unwrap_or(0) as u64;
    Ok(loaded)
}

const BATCH: usize = 4096;

fn run(mut conn: Connection, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // Writes are applied in one transaction; a read or flush first commits
        // the writes queued before it, so it sees them.
        let mut writes = Vec::new();
        for op in batch {
            match op {
                Op::Write(w) => writes.push(w),
                other => {
                    if !writes.is_empty() {
                        apply(&mut conn, std::mem::take(&mut writes));
                    }
                    answer(&conn, other);
                }
            }
        }
        if !writes.is_empty() {
            apply(&mut conn, writes);
        }
    }
}

fn answer(conn: &Connection, op: Op) {
    match op {
        Op::Events {
            after_id,
            limit,
            reply,
        } => {
            let _ = reply.send(read_events(conn, after_id, limit));
        }
        Op::Flush(reply) => {
            let _ = reply.send(());
        }
        Op::Write(_) => unreachable!("writes are applied, not answered"),
    }
}

fn apply(conn: &mut Connection, writes: Vec<Write>) {
    let result = (|| -> Result<(), rusqlite::Error> {
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
                        "INSERT INTO nodes (name, state, cert_serial, cert_not_after, boot_id, last_seen_ms, rearmed, report)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT(name) DO UPDATE SET state=?2, cert_serial=?3, cert_not_after=?4,
                           boot_id=?5, last_seen_ms=?6, rearmed=?7, report=?8",
                    )?
                    .execute(params![
                        n.name,
                        n.state.as_str(),
                        n.cert_serial,
                        n.cert_not_after,
                        n.boot_id,
                        n.last_seen_ms,
                        n.rearmed as i64,
                        report
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
            }
        }
        tx.commit()
    })();
    if let Err(e) = result {
        tracing::error!(error = %e, "store: a batch of writes failed and was rolled back");
    }
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
}
