//! Group commit for the embedded job store and queue: one writer thread per database takes
//! every write waiting for it and commits them in one transaction, so many jobs in flight
//! share one fsync instead of paying one each, and each caller still returns only once its
//! change is durable.
//!
//! A change that fails aborts its whole batch and every change in it gets the error: only
//! used where a change's errors are storage failures (which spoil the transaction anyway),
//! never where a change may refuse after writing part of itself.

use redb::{Database, WriteTransaction};
use std::sync::Arc;
use std::sync::mpsc;

/// Reports a change's outcome once its batch is committed (or not).
type Completion = Box<dyn FnOnce(Option<String>) + Send>;
/// A change: applied to the batch's transaction (None: none could be begun); says whether
/// it succeeded and how to report it.
type Change = Box<dyn FnOnce(Option<&WriteTransaction>) -> (bool, Completion) + Send>;

/// Most changes committed together.
const MOST: usize = 512;

/// The writer of one database. When the last clone goes, the thread is stopped and joined,
/// so the database can be opened again at once.
#[derive(Clone)]
pub(crate) struct BatchWriter {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Option<mpsc::Sender<Change>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Called on the writer thread when a batch was not written, before the next batch starts:
/// state kept beside the database by the changes (an index) no longer matches it.
pub(crate) type OnFailure = Box<dyn Fn() + Send>;

impl BatchWriter {
    /// Starts the writer thread of `db`.
    pub(crate) fn new(db: Arc<Database>, name: &str) -> Self {
        Self::with_failure_hook(db, name, Box::new(|| {}))
    }

    /// Starts the writer thread of `db`; `on_failure` runs after every batch that failed.
    pub(crate) fn with_failure_hook(db: Arc<Database>, name: &str, on_failure: OnFailure) -> Self {
        let (tx, rx) = mpsc::channel::<Change>();
        let thread = std::thread::Builder::new()
            .name(format!("wafer-{name}-writer"))
            .spawn(move || run(&db, &rx, &on_failure))
            .expect("spawn writer thread");
        Self {
            inner: Arc::new(Inner {
                tx: Some(tx),
                thread: Some(thread),
            }),
        }
    }

    /// Applies `f` in a transaction shared with other waiting changes; returns once it is
    /// committed. Every failure becomes `fail(message)`.
    pub(crate) async fn write<R, E, F>(&self, fail: fn(String) -> E, f: F) -> Result<R, E>
    where
        R: Send + 'static,
        E: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<R, E> + Send + 'static,
    {
        let (done, wait) = tokio::sync::oneshot::channel::<Result<R, E>>();
        let change: Change = Box::new(move |txn| {
            let result = match txn {
                Some(t) => f(t),
                None => Err(fail("cannot begin a write transaction".into())),
            };
            let ok = result.is_ok();
            let complete: Completion = Box::new(move |commit_error| {
                let outcome = match (result, commit_error) {
                    (Ok(r), None) => Ok(r),
                    (Ok(_), Some(e)) => Err(fail(e)),
                    (Err(e), _) => Err(e),
                };
                let _ = done.send(outcome);
            });
            (ok, complete)
        });
        self.inner
            .tx
            .as_ref()
            .expect("sender lives as long as the writer")
            .send(change)
            .map_err(|_| fail("the writer thread is gone".into()))?;
        wait.await
            .map_err(|_| fail("the writer thread dropped a change".into()))?
    }
}

fn run(db: &Database, rx: &mpsc::Receiver<Change>, on_failure: &OnFailure) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MOST {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let txn = db.begin_write();
        let mut completions = Vec::with_capacity(batch.len());
        let mut all_ok = true;
        for change in batch {
            let (ok, complete) = change(txn.as_ref().ok());
            all_ok &= ok;
            completions.push(complete);
        }
        let error = match txn {
            Err(e) => Some(e.to_string()),
            Ok(t) if all_ok => t.commit().err().map(|e| e.to_string()),
            Ok(t) => {
                let _ = t.abort();
                Some("another change in the same commit failed; nothing was written".into())
            }
        };
        if error.is_some() {
            on_failure();
        }
        for complete in completions {
            complete(error.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    #[tokio::test]
    async fn concurrent_changes_all_land_and_a_failure_spoils_only_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("b.redb")).unwrap());
        let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = failures.clone();
        let w = BatchWriter::with_failure_hook(
            db.clone(),
            "test",
            Box::new(move || {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
        );
        let writes = (0..200u64).map(|i| {
            let w = w.clone();
            tokio::spawn(async move {
                w.write(
                    |e| e,
                    move |txn| {
                        txn.open_table(T)
                            .map_err(|e| e.to_string())?
                            .insert(i, i * 2)
                            .map_err(|e| e.to_string())?;
                        Ok::<_, String>(i)
                    },
                )
                .await
            })
        });
        for (i, h) in writes.enumerate() {
            assert_eq!(h.await.unwrap().unwrap(), i as u64);
        }
        let read = db.begin_read().unwrap();
        let t = read.open_table(T).unwrap();
        assert_eq!(t.len().unwrap(), 200);
        assert_eq!(t.get(7).unwrap().unwrap().value(), 14);
        drop((t, read));
        let failed: Result<(), String> =
            w.write(|e| e, |_| Err::<(), _>("refused".to_owned())).await;
        assert_eq!(failed.unwrap_err(), "refused");
        assert_eq!(
            failures.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "told once"
        );
        // The writer goes on after a failed batch.
        let after: Result<u64, String> = w.write(|e| e, |_| Ok(5)).await;
        assert_eq!(after.unwrap(), 5);
    }
}
