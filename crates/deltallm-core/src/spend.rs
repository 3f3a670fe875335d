//! Spend events written off the request path: requests `try_send` into a
//! bounded queue; one writer task batches them into the database. A full
//! queue drops the record and counts it rather than slowing requests down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deltallm_storage::{SpendRecord, Store};
use tokio::sync::{mpsc, oneshot};

const BATCH: usize = 256;
const LINGER: Duration = Duration::from_millis(200);

enum Msg {
    Record(Box<SpendRecord>),
    Flush(oneshot::Sender<()>),
}

/// Producer side of the spend queue.
pub struct SpendQueue {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl SpendQueue {
    /// Start the writer task.
    pub fn start(store: Store, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(writer(store, rx));
        Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queue a record without waiting.
    pub fn record(&self, record: SpendRecord) {
        if self.tx.try_send(Msg::Record(Box::new(record))).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped_total = n, "spend queue full; spend records dropped");
            }
        }
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Wait until everything queued before this call is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write(store: &Store, batch: &mut Vec<SpendRecord>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = store.insert_spend(batch).await {
        tracing::error!(error = %e, records = batch.len(), "failed to write spend records");
    }
    batch.clear();
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Msg>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let msg = if batch.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(LINGER, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    write(&store, &mut batch).await;
                    continue;
                }
            }
        };
        match msg {
            Some(Msg::Record(r)) => {
                batch.push(*r);
                if batch.len() >= BATCH {
                    write(&store, &mut batch).await;
                }
            }
            Some(Msg::Flush(done)) => {
                write(&store, &mut batch).await;
                let _ = done.send(());
            }
            None => {
                write(&store, &mut batch).await;
                return;
            }
        }
    }
}
