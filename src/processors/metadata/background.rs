//! The thread a metadata processor's watch or event stream runs on.

use std::time::{Duration, Instant};

/// A background task of a metadata processor: one thread with a single-threaded tokio
/// runtime, so the watch or event stream runs the same under `run` and under `collect`, off
/// the exporters' workers and off the sweep thread. Dropping the handle stops the task.
pub struct BackgroundTask {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundTask {
    /// Starts `task` on its own thread named `name`. The future is dropped (cancelled) when the
    /// handle is dropped.
    pub fn spawn<F, Fut>(name: &str, task: F) -> std::io::Result<BackgroundTask>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(error) => {
                    tracing::error!(%error, "Cannot start a metadata processor's runtime.");
                    return;
                }
            };
            runtime.block_on(async move {
                tokio::select! {
                    _ = stop_rx => {}
                    _ = task() => {}
                }
            });
        })?;
        Ok(BackgroundTask { stop: Some(stop_tx), thread: Some(thread) })
    }
}

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // The task stops at its next await point; a task stuck in blocking code would hold
            // shutdown, so wait only briefly.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_task_stops_when_dropped() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let task = BackgroundTask::spawn("test-bg", move || async move {
            let _tx = tx; // dropped when the future is cancelled
            std::future::pending::<()>().await;
        })
        .unwrap();
        drop(task);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
