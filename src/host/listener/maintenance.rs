//! `arrowport_maintain`: compacting a DuckLake now, and on a timer of its own.

use super::*;

impl Host {
    /// `arrowport_maintain`: compacts a DuckLake catalog now; with `every`, also from then on at that interval
    /// (replacing an earlier schedule of that catalog; zero ends it) until the host stops. A scheduled run that
    /// fails says so on the host's stderr and runs again at the next interval.
    pub fn maintain(
        &self,
        catalog: &str,
        older_than: Duration,
        every: Option<Duration>,
    ) -> Result<Vec<Maintained>, String> {
        let (runtime, core) = self.engine()?;
        let done = runtime.block_on(core.maintain(catalog, older_than)).map_err(|e| e.to_string())?;
        if let Some(every) = every {
            let mut state = self.lock();
            let running = state.running.as_mut().ok_or("arrowport stopped meanwhile")?;
            if let Some(old) = running.schedules.remove(&catalog.to_lowercase()) {
                old.abort();
            }
            if !every.is_zero() {
                let (catalog_name, cancel) = (catalog.to_string(), running.cancel.clone());
                let task = running.runtime.spawn(async move {
                    loop {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(every) => {}
                        }
                        if let Err(e) = core.maintain(&catalog_name, older_than).await {
                            eprintln!("arrowport: scheduled maintenance of {catalog_name} failed: {e}");
                        }
                    }
                });
                running.schedules.insert(catalog.to_lowercase(), task);
            }
        }
        Ok(done)
    }
}
