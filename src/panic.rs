//! The panic boundary: the one way arrowport keeps a Rust panic from escaping into the host's process.
//!
//! Every place where a panic must not go further runs its code through [`contain`] (a closure),
//! [`contain_future`] (a network handler) or [`contain_stream`] (the IPC decoder): writer threads, the group
//! committer, DuckDB's calls into our Arrow stream, the entrypoint, the network handlers and the process-exit
//! hook. A contained panic becomes a [`Panicked`] value that the caller turns into its own error; the host keeps
//! running. [`quiet_reports`] keeps Rust's panic report off the host's stderr (the user's DuckDB session) unless
//! `ARROWPORT_LOG_PANICS=1`. This module uses only std and futures, so every layer may use it.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};

use futures::{FutureExt, Stream, StreamExt};

/// A panic caught at a boundary: where, and the panic's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("internal error while {what}: {message}")]
pub struct Panicked {
    pub what: &'static str,
    pub message: String,
}

impl Panicked {
    fn from_payload(what: &'static str, payload: &(dyn Any + Send)) -> Panicked {
        Panicked { what, message: message_of(payload) }
    }
}

/// The text a panic was raised with.
fn message_of(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// Runs `f`; a panic inside it becomes `Err(Panicked)` instead of unwinding further.
pub fn contain<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, Panicked> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| Panicked::from_payload(what, p.as_ref()))
}

/// Awaits `f`; a panic while polling it becomes `Err(Panicked)`.
pub async fn contain_future<F: Future>(what: &'static str, f: F) -> Result<F::Output, Panicked> {
    AssertUnwindSafe(f).catch_unwind().await.map_err(|p| Panicked::from_payload(what, p.as_ref()))
}

/// The items of `s`; a panic while polling it becomes one `Err(Panicked)` item, and the stream ends there.
pub fn contain_stream<S: Stream + Send>(
    what: &'static str,
    s: S,
) -> impl Stream<Item = Result<S::Item, Panicked>> + Send {
    AssertUnwindSafe(s).catch_unwind().map(move |item| item.map_err(|p| Panicked::from_payload(what, p.as_ref())))
}

/// Rust's default report would print every contained panic (and a backtrace note) on the host's stderr, which
/// is the user's DuckDB session. This hook stays silent unless `ARROWPORT_LOG_PANICS=1` is in the host's
/// environment. It belongs to arrowport's own copy of the Rust runtime (a cdylib links its own), so other Rust
/// code in the process keeps its own hook.
pub fn quiet_reports() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::env::var_os("ARROWPORT_LOG_PANICS").is_some_and(|v| v == "1") {
            report(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_value_with_its_message() {
        assert_eq!(contain("adding", || 1 + 1), Ok(2));
        let e = contain("dividing", || -> i32 { panic!("by {}", 0) }).unwrap_err();
        assert_eq!(e, Panicked { what: "dividing", message: "by 0".into() });
        assert_eq!(e.to_string(), "internal error while dividing: by 0");
    }

    #[tokio::test]
    async fn futures_and_streams_are_contained_too() {
        let e = contain_future("polling", async { panic!("boom") }).await.unwrap_err();
        assert_eq!(e.message, "boom");
        let items = futures::stream::iter([1, 2, 3]).map(|i| if i == 2 { panic!("two") } else { i });
        let got: Vec<_> = contain_stream("decoding", items).collect().await;
        assert_eq!(got, vec![Ok(1), Err(Panicked { what: "decoding", message: "two".into() })]);
    }
}
