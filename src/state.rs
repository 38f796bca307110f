//! Small durable state that is not a message: counters that must survive restarts (per-user daily
//! caps now; warm-up days, outcome windows and quarantine records later). Kept in redb.
//!
//! Rules:
//! - `state.redb` holds secrets (the complaint trace keys): it is created 0600 and an existing
//!   one readable by group or others is made 0600 at start; a `data_dir` poolrelay creates is
//!   0700 (one that exists, e.g. systemd's `StateDirectory=`, keeps its mode).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// Pool state (src/pool/store.rs): JSON records keyed `ipp|IP|PROVIDER` and `hold|IP|SCOPE`.
const POOL: TableDefinition<&str, &str> = TableDefinition::new("pool");
/// Queue ids the operator holds (`poolrelay queue hold`).
const QUEUE_HOLD: TableDefinition<&str, u64> = TableDefinition::new("queue_hold");
/// History (src/reputation/history.rs): hourly buckets keyed `IP|PROVIDER|HOUR` (JSON).
const HISTORY_HOURS: TableDefinition<&str, &str> = TableDefinition::new("history_hours");
/// Hold change events keyed `IP|AT|SEQ` (JSON).
const HISTORY_EVENTS: TableDefinition<&str, &str> = TableDefinition::new("history_events");
/// TLS-RPT results (src/tls_reports/store.rs): one RFC 8460 policy entry (JSON) per
/// `PERIOD|DOMAIN|POLICY`.
const TLS_REPORTS: TableDefinition<&str, &str> = TableDefinition::new("tls_reports");
/// MTA-STS policies (src/delivery/policy/mta_sts.rs) keyed by recipient domain (JSON).
const MTA_STS: TableDefinition<&str, &str> = TableDefinition::new("mta_sts");
/// Accounts (src/reputation/accounts/): one JSON record per `login|NAME` and `domain|NAME`.
const ACCOUNTS: TableDefinition<&str, &str> = TableDefinition::new("accounts");

pub struct State {
    db: Database,
}

#[derive(Debug)]
pub struct StateError(pub String);

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "state store: {}", self.0)
    }
}

impl std::error::Error for StateError {}

fn err(e: impl std::fmt::Display) -> StateError {
    StateError(e.to_string())
}

impl State {
    pub fn open(data_dir: &Path) -> Result<State, StateError> {
        if !data_dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)
                .map_err(|e| StateError(format!("{}: {e}", data_dir.display())))?;
        }
        let path = data_dir.join("state.redb");
        private(&path)?;
        let db = Database::create(&path).map_err(|e| match e {
            // redb's own words ("Database already open") do not say who holds it.
            redb::DatabaseError::DatabaseAlreadyOpen => {
                // Absolute: the other relay may have been started from another directory.
                let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.into());
                StateError(format!(
                    "another poolrelay is running with data_dir {} (it holds the lock on \
                     {}); stop it first, or give this relay its own data_dir",
                    dir.display(),
                    dir.join("state.redb").display()
                ))
            }
            e => StateError(format!("{}: {e}", path.display())),
        })?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(COUNTERS).map_err(err)?;
        tx.open_table(POOL).map_err(err)?;
        tx.open_table(QUEUE_HOLD).map_err(err)?;
        tx.open_table(HISTORY_HOURS).map_err(err)?;
        tx.open_table(HISTORY_EVENTS).map_err(err)?;
        tx.open_table(TLS_REPORTS).map_err(err)?;
        tx.open_table(MTA_STS).map_err(err)?;
        tx.open_table(ACCOUNTS).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(State { db })
    }

    pub fn counter(&self, key: &str) -> Result<u64, StateError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(COUNTERS).map_err(err)?;
        Ok(table.get(key).map_err(err)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Adds `by` to `key` unless that would pass `limit`; returns the new value, or None when the
    /// limit is reached. Check and increment are one transaction, so concurrent sessions of one
    /// user cannot both slip under the cap.
    pub fn add_within(&self, key: &str, by: u64, limit: u64) -> Result<Option<u64>, StateError> {
        let tx = self.db.begin_write().map_err(err)?;
        let new = {
            let mut table = tx.open_table(COUNTERS).map_err(err)?;
            let cur = table.get(key).map_err(err)?.map(|v| v.value()).unwrap_or(0);
            if cur + by > limit {
                None
            } else {
                table.insert(key, cur + by).map_err(err)?;
                Some(cur + by)
            }
        };
        if new.is_some() {
            tx.commit().map_err(err)?;
        } else {
            tx.abort().map_err(err)?;
        }
        Ok(new)
    }

    /// Subtracts `by` from `key` (not below zero): gives back what `add_within` took when the
    /// work it counted did not happen.
    pub fn sub(&self, key: &str, by: u64) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut table = tx.open_table(COUNTERS).map_err(err)?;
            let cur = table.get(key).map_err(err)?.map(|v| v.value()).unwrap_or(0);
            table.insert(key, cur.saturating_sub(by)).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Removes every counter whose key starts with `prefix` but is not `keep` (old days).
    pub fn prune(&self, prefix: &str, keep: &str) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut table = tx.open_table(COUNTERS).map_err(err)?;
            let stale: Vec<String> = table
                .iter()
                .map_err(err)?
                .filter_map(|r| r.ok())
                .map(|(k, _)| k.value().to_string())
                .filter(|k| k.starts_with(prefix) && !k.starts_with(keep))
                .collect();
            for k in stale {
                table.remove(k.as_str()).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}

/// Creates `path` 0600 when it is missing; makes an existing one 0600 when group or others may
/// read it.
fn private(path: &Path) -> Result<(), StateError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| StateError(format!("{}: {e}", path.display())))?;
    let mode = file.metadata().map_err(err)?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StateError(format!("{}: cannot make it 0600: {e}", path.display())))?;
        tracing::warn!(file = %path.display(), "state store was readable by group or others (it holds the trace keys): made it 0600");
    }
    Ok(())
}

impl State {
    /// The database itself, for a stage that keeps its own tables (`feedback::store`).
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }
}

/// A table of text keys and text values (JSON, most of them).
type TextTable = TableDefinition<'static, &'static str, &'static str>;

impl State {
    /// Every record `(key, value)` of `table`.
    fn load_all(&self, table: TextTable) -> Result<Vec<(String, String)>, StateError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(table).map_err(err)?;
        let mut out = Vec::new();
        for r in table.iter().map_err(err)? {
            let (k, v) = r.map_err(err)?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// Writes (`Some`) or removes (`None`) records of `table` in one transaction.
    fn write_records(
        &self,
        table: TextTable,
        records: &[(String, Option<String>)],
    ) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut table = tx.open_table(table).map_err(err)?;
            for (k, v) in records {
                match v {
                    Some(v) => {
                        table.insert(k.as_str(), v.as_str()).map_err(err)?;
                    }
                    None => {
                        table.remove(k.as_str()).map_err(err)?;
                    }
                }
            }
        }
        tx.commit().map_err(err)
    }
}

impl State {
    /// Every pool record.
    pub fn pool_load(&self) -> Result<Vec<(String, String)>, StateError> {
        self.load_all(POOL)
    }

    /// Writes (`Some`) or removes (`None`) pool records in one transaction.
    pub fn pool_write(&self, records: &[(String, Option<String>)]) -> Result<(), StateError> {
        self.write_records(POOL, records)
    }
}

impl State {
    /// The cached MTA-STS policy record of `domain`.
    pub fn mta_sts_get(&self, domain: &str) -> Result<Option<String>, StateError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(MTA_STS).map_err(err)?;
        Ok(table
            .get(domain)
            .map_err(err)?
            .map(|v| v.value().to_string()))
    }

    /// Stores the MTA-STS policy record of `domain`.
    pub fn mta_sts_put(&self, domain: &str, record: &str) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(MTA_STS)
            .map_err(err)?
            .insert(domain, record)
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Every account record `(key, json)`.
    pub fn accounts_load(&self) -> Result<Vec<(String, String)>, StateError> {
        self.load_all(ACCOUNTS)
    }

    /// Writes (`Some`) or removes (`None`) account records in one transaction.
    pub fn accounts_write(&self, records: &[(String, Option<String>)]) -> Result<(), StateError> {
        if records.is_empty() {
            return Ok(());
        }
        self.write_records(ACCOUNTS, records)
    }
}

impl State {
    /// Queue ids on hold.
    pub fn queue_holds(&self) -> Result<Vec<String>, StateError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(QUEUE_HOLD).map_err(err)?;
        let mut out = Vec::new();
        for r in table.iter().map_err(err)? {
            out.push(r.map_err(err)?.0.value().to_string());
        }
        Ok(out)
    }

    /// Puts `ids` on hold (`on`) or takes them off, in one transaction.
    pub fn queue_hold_set(&self, ids: &[String], on: bool) -> Result<(), StateError> {
        if ids.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut table = tx.open_table(QUEUE_HOLD).map_err(err)?;
            let now = crate::spool::now_unix();
            for id in ids {
                if on {
                    table.insert(id.as_str(), now).map_err(err)?;
                } else {
                    table.remove(id.as_str()).map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)
    }
}

/// Keys of `table` from `prefix` up to the end of that prefix (`|` < `}`).
fn prefixed<T: ReadableTable<&'static str, &'static str>>(
    table: &T,
    prefix: &str,
) -> Result<Vec<(String, String)>, StateError> {
    let end = format!("{}}}", prefix.trim_end_matches('|'));
    let mut out = Vec::new();
    for r in table.range(prefix..end.as_str()).map_err(err)? {
        let (k, v) = r.map_err(err)?;
        out.push((k.value().to_string(), v.value().to_string()));
    }
    Ok(out)
}

impl State {
    /// Merges history buckets into what is stored, in one transaction.
    pub fn history_merge(
        &self,
        records: &[(String, String)],
        merge: impl Fn(Option<&str>, &str) -> String,
    ) -> Result<(), StateError> {
        if records.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut table = tx.open_table(HISTORY_HOURS).map_err(err)?;
            for (k, v) in records {
                let old = table
                    .get(k.as_str())
                    .map_err(err)?
                    .map(|o| o.value().to_string());
                let merged = merge(old.as_deref(), v);
                table.insert(k.as_str(), merged.as_str()).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Appends events `(ip, json)`.
    pub fn history_events(&self, events: &[(String, String)]) -> Result<(), StateError> {
        if events.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut table = tx.open_table(HISTORY_EVENTS).map_err(err)?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            for (i, (ip, json)) in events.iter().enumerate() {
                let key = format!("{ip}|{nanos:024}|{i:04}");
                table.insert(key.as_str(), json.as_str()).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Hourly buckets `(key, json)` and events (json, oldest first) of one IP.
    #[allow(clippy::type_complexity)]
    pub fn history_of(&self, ip: &str) -> Result<(Vec<(String, String)>, Vec<String>), StateError> {
        let tx = self.db.begin_read().map_err(err)?;
        let prefix = format!("{ip}|");
        let hours = prefixed(&tx.open_table(HISTORY_HOURS).map_err(err)?, &prefix)?;
        let events = prefixed(&tx.open_table(HISTORY_EVENTS).map_err(err)?, &prefix)?;
        Ok((hours, events.into_iter().map(|(_, v)| v).collect()))
    }

    /// Hourly buckets `(key, json)` of one IP × provider from the hour `from` (unix seconds) on.
    pub fn history_hours_from(
        &self,
        ip: &str,
        provider: &str,
        from: u64,
    ) -> Result<Vec<(String, String)>, StateError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(HISTORY_HOURS).map_err(err)?;
        // Keys are `ip|provider|hour` with the hour zero-padded to 12 digits: one range.
        let start = format!("{ip}|{provider}|{from:012}");
        let end = format!("{ip}|{provider}}}");
        let mut out = Vec::new();
        for r in table.range(start.as_str()..end.as_str()).map_err(err)? {
            let (k, v) = r.map_err(err)?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// Drops buckets of hours before `cutoff` (unix seconds), events before it, and the oldest
    /// events of an IP past `max_events`.
    pub fn history_prune(&self, cutoff: u64, max_events: usize) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut hours = tx.open_table(HISTORY_HOURS).map_err(err)?;
            let mut stale = Vec::new();
            for r in hours.iter().map_err(err)? {
                let (k, _) = r.map_err(err)?;
                let k = k.value().to_string();
                let hour: u64 = k
                    .rsplit('|')
                    .next()
                    .and_then(|h| h.parse().ok())
                    .unwrap_or(0);
                if hour < cutoff {
                    stale.push(k);
                }
            }
            for k in stale {
                hours.remove(k.as_str()).map_err(err)?;
            }
            let mut events = tx.open_table(HISTORY_EVENTS).map_err(err)?;
            let cutoff_ns = u128::from(cutoff) * 1_000_000_000;
            let mut per_ip: std::collections::HashMap<String, Vec<(String, u128)>> =
                std::collections::HashMap::new();
            for r in events.iter().map_err(err)? {
                let (k, _) = r.map_err(err)?;
                let k = k.value().to_string();
                let mut parts = k.split('|');
                let ip = parts.next().unwrap_or("").to_string();
                let at: u128 = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
                per_ip.entry(ip).or_default().push((k, at));
            }
            for (_, list) in per_ip {
                let excess = list.len().saturating_sub(max_events);
                for (i, (k, at)) in list.iter().enumerate() {
                    if i < excess || *at < cutoff_ns {
                        events.remove(k.as_str()).map_err(err)?;
                    }
                }
            }
        }
        tx.commit().map_err(err)
    }
}

impl State {
    /// Every TLS-RPT record (key, JSON).
    pub fn tls_reports_load(&self) -> Result<Vec<(String, String)>, StateError> {
        self.load_all(TLS_REPORTS)
    }

    /// Folds `entries` into the TLS-RPT records in one transaction: `merge(old, new)` gives the
    /// value to keep for a key that exists already.
    pub fn tls_reports_merge(
        &self,
        entries: &[(String, String)],
        merge: impl Fn(&str, &str) -> String,
    ) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut table = tx.open_table(TLS_REPORTS).map_err(err)?;
            for (key, value) in entries {
                let old = table
                    .get(key.as_str())
                    .map_err(err)?
                    .map(|v| v.value().to_string());
                let keep = match old {
                    Some(old) => merge(&old, value),
                    None => value.clone(),
                };
                table.insert(key.as_str(), keep.as_str()).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Removes TLS-RPT records (reported ones).
    pub fn tls_reports_remove(&self, keys: &[String]) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut table = tx.open_table(TLS_REPORTS).map_err(err)?;
            for key in keys {
                table.remove(key.as_str()).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_and_a_new_data_dir_are_private() {
        let dir = crate::util::test_dir::tempdir("state").join("data");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        drop(State::open(&dir).unwrap());
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("state.redb")), 0o600);
        // One made before (umask 022): made private at the next start.
        let file = dir.join("state.redb");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = State::open(&dir).unwrap();
        assert_eq!(mode(&file), 0o600);
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn counters_respect_limit_and_persist() {
        let dir = crate::util::test_dir::tempdir("state").join("data");
        {
            let s = State::open(&dir).unwrap();
            assert_eq!(s.add_within("u|1", 1, 2).unwrap(), Some(1));
            assert_eq!(s.add_within("u|1", 1, 2).unwrap(), Some(2));
            assert_eq!(s.add_within("u|1", 1, 2).unwrap(), None);
        }
        let s = State::open(&dir).unwrap();
        assert_eq!(s.counter("u|1").unwrap(), 2);
        s.prune("u|", "u|2").unwrap();
        assert_eq!(s.counter("u|1").unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
