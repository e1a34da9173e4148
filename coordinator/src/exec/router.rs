//! Where an agent's exec output goes: the stream task of each node hands
//! `ExecOutput` and `ExecDone` messages to the exec session that ordered
//! them, without going through the fleet task (a thousand nodes answering at
//! once would queue behind reports there).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dfleet_proto::pb;
use tokio::sync::mpsc;

/// What an exec session hears about one node.
#[derive(Debug)]
pub enum Update {
    Output {
        node: String,
        stderr: bool,
        data: Vec<u8>,
    },
    Done {
        node: String,
        done: pb::ExecDone,
    },
    /// The node's stream ended before its result came.
    Lost {
        node: String,
        reason: String,
    },
}

/// (node, order id) → the session's channel and the connection the order
/// went out on.
type Routes = HashMap<(String, u64), (u64, mpsc::Sender<Update>)>;

#[derive(Debug, Clone, Default)]
pub struct ExecRouter {
    routes: Arc<Mutex<Routes>>,
}

impl ExecRouter {
    /// Sends `node`'s answers to order `id`, sent on connection `conn`, to `tx`.
    pub fn register(&self, node: &str, id: u64, conn: u64, tx: mpsc::Sender<Update>) {
        self.lock().insert((node.to_string(), id), (conn, tx));
    }

    /// Stops listening for `node`'s answers to `id` (timed out, or the
    /// session ended).
    pub fn forget(&self, node: &str, id: u64) {
        self.lock().remove(&(node.to_string(), id));
    }

    /// Hands an agent's exec message to its session; messages for orders no
    /// one waits for any more are dropped.
    pub async fn deliver(&self, node: &str, conn: u64, kind: pb::agent_message::Kind) {
        let (id, update, last) = match kind {
            pb::agent_message::Kind::ExecOutput(o) => (
                o.order_id,
                Update::Output {
                    node: node.to_string(),
                    stderr: o.stderr,
                    data: o.data,
                },
                false,
            ),
            pb::agent_message::Kind::ExecDone(d) => (
                d.order_id,
                Update::Done {
                    node: node.to_string(),
                    done: d,
                },
                true,
            ),
            _ => return,
        };
        let key = (node.to_string(), id);
        let tx = {
            let mut routes = self.lock();
            let tx = match routes.get(&key) {
                Some((c, tx)) if *c == conn => tx.clone(),
                _ => return,
            };
            if last {
                routes.remove(&key);
            }
            tx
        };
        // Waits when the session is behind: the agent's stream slows down
        // rather than the coordinator buffering without limit.
        let _ = tx.send(update).await;
    }

    /// `node`'s connection `conn` ended: every session waiting on it hears so.
    pub async fn lost(&self, node: &str, conn: u64, reason: &str) {
        let gone: Vec<mpsc::Sender<Update>> = {
            let mut routes = self.lock();
            let keys: Vec<(String, u64)> = routes
                .iter()
                .filter(|((n, _), (c, _))| n == node && *c == conn)
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter()
                .filter_map(|k| routes.remove(k).map(|(_, tx)| tx))
                .collect()
        };
        for tx in gone {
            let _ = tx
                .send(Update::Lost {
                    node: node.to_string(),
                    reason: reason.to_string(),
                })
                .await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        // A panic while holding it cannot leave the map half-changed.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }
}
