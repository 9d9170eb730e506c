//! What the session and call registries share to write a node's changes behind it: changes
//! queued on a channel are taken in batches (one transaction each), and a database that
//! refuses one is retried for a while before the batch is given up.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

/// Largest batch one transaction writes.
pub const MAX_BATCH: usize = 256;

/// Waits for one change, then takes whatever else has queued up, up to `MAX_BATCH`; None
/// once every sender is gone.
pub async fn next_batch<T>(rx: &mut UnboundedReceiver<T>) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(change) => batch.push(change),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// `write` up to six times, 50 ms apart and doubling (about 1.5 s in all); the last error
/// if every try failed.
pub async fn with_retries<T, E, F, Fut>(mut write: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut wait = Duration::from_millis(50);
    let mut tries = 1;
    loop {
        match write().await {
            Err(_) if tries < 6 => {
                tokio::time::sleep(wait).await;
                wait *= 2;
                tries += 1;
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_take_what_is_queued_and_retries_stop_at_six() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..300 {
            tx.send(i).unwrap();
        }
        assert_eq!(next_batch(&mut rx).await.unwrap().len(), MAX_BATCH);
        assert_eq!(next_batch(&mut rx).await.unwrap(), (256..300).collect::<Vec<_>>());
        drop(tx);
        assert!(next_batch(&mut rx).await.is_none());
        let mut tries = 0;
        let r: Result<(), u32> = with_retries(|| {
            tries += 1;
            let n = tries;
            async move { Err(n) }
        })
        .await;
        assert_eq!(r, Err(6));
        let mut tries = 0;
        let r: Result<u32, ()> = with_retries(|| {
            tries += 1;
            let n = tries;
            async move { if n < 3 { Err(()) } else { Ok(n) } }
        })
        .await;
        assert_eq!(r, Ok(3));
    }
}
