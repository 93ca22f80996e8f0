//! SQLite storage: WAL mode with `synchronous=FULL`, so a committed batch survives a power cut
//! before it is acknowledged.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
use tg_watch::{Event, Incident};

use crate::commit::Rows;
use crate::error::Error;

/// One registered run, as listed by `GET /v1/runs`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    /// The run id.
    pub run: String,
    /// When it was registered (collector clock), seconds since the Unix epoch.
    pub created_unix_s: f64,
    /// Events stored.
    pub events: u64,
    /// Incidents stored.
    pub incidents: u64,
}

/// Page size of a new database, in bytes.
const PAGE_SIZE: i64 = 16 * 1024;

pub(crate) struct Store {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    created_unix_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    rank INTEGER NOT NULL,
    received_unix_s REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events(run, id);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    detector TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_run ON incidents(run, id);
";

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Self, Error> {
        let err = |source| Error::Storage {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        // Only takes effect when the file is new (a WAL database keeps the page size it was
        // created with). Events are ~0.5 KiB each and arrive in thousands per commit: with
        // 16 KiB pages SQLite writes a quarter as many WAL frames and B-tree pages as with
        // the default 4 KiB, about 15% less collector CPU per event (bench/ingest.py).
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(err)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> Error {
        Error::Storage {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The token hashes of every run.
    pub(crate) fn tokens(&self) -> Result<Vec<(String, String)>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT run, token_sha256 FROM runs")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Insert a run, or replace its token (configured tokens win over stored ones).
    pub(crate) fn put_run(&self, run: &str, token_sha256: &str, now: f64) -> Result<(), Error> {
        self.conn
            .execute(
                "INSERT INTO runs (run, token_sha256, created_unix_s) VALUES (?1, ?2, ?3)
                 ON CONFLICT(run) DO UPDATE SET token_sha256 = excluded.token_sha256",
                params![run, token_sha256, now],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(crate) fn runs(&self) -> Result<Vec<RunInfo>, Error> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT r.run, r.created_unix_s,
                    (SELECT count(*) FROM events e WHERE e.run = r.run),
                    (SELECT count(*) FROM incidents i WHERE i.run = r.run)
                 FROM runs r ORDER BY r.created_unix_s DESC, r.run",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(RunInfo {
                    run: r.get(0)?,
                    created_unix_s: r.get(1)?,
                    events: r.get(2)?,
                    incidents: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Store rows of one or more batches (a commit group) and their incidents in one
    /// transaction: one fsync for all of them.
    pub(crate) fn append(&mut self, group: &[&Rows]) -> Result<(), Error> {
        let path = self.path.display().to_string();
        let err = |source| Error::Storage {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO events (run, rank, received_unix_s, body) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(err)?;
            for rows in group {
                for (rank, span) in &rows.events {
                    let body = &rows.text[span.clone()];
                    ins.execute(params![rows.run, rank, rows.now, body])
                        .map_err(err)?;
                }
            }
            for rows in group {
                insert_incidents(&tx, &rows.incidents).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn append_incidents(&mut self, incidents: &[Incident]) -> Result<(), Error> {
        let rows = Rows {
            incidents: incidents.to_vec(),
            ..Rows::default()
        };
        self.append(&[&rows])
    }

    pub(crate) fn incidents(&self, run: &str, limit: usize) -> Result<Vec<Incident>, Error> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, body FROM (SELECT id, body FROM incidents WHERE run = ?1
                 ORDER BY id DESC LIMIT ?2) ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row.map_err(|e| self.err(e))?;
            out.push(
                serde_json::from_str(&body).map_err(|source| Error::Corrupt {
                    what: "incident",
                    id,
                    source,
                })?,
            );
        }
        Ok(out)
    }

    /// Incident counts per (run, detector), for the metrics after a restart.
    pub(crate) fn incident_counts(&self) -> Result<Vec<(String, String, u64)>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT run, detector, count(*) FROM incidents GROUP BY run, detector")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Every stored event with the time it was received, in arrival order, for replay.
    pub(crate) fn replay(&self, mut f: impl FnMut(&str, Event, f64)) -> Result<(), Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, run, body, received_unix_s FROM events ORDER BY id")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let id: i64 = row.get(0).map_err(|e| self.err(e))?;
            let run: String = row.get(1).map_err(|e| self.err(e))?;
            let body: String = row.get(2).map_err(|e| self.err(e))?;
            let at: f64 = row.get(3).map_err(|e| self.err(e))?;
            let event = crate::decode::event(&body).map_err(|source| Error::Corrupt {
                what: "event",
                id,
                source,
            })?;
            f(&run, event, at);
        }
        Ok(())
    }
}

fn insert_incidents(
    tx: &rusqlite::Transaction<'_>,
    incidents: &[Incident],
) -> rusqlite::Result<()> {
    let mut ins =
        tx.prepare_cached("INSERT INTO incidents (run, detector, body) VALUES (?1, ?2, ?3)")?;
    for i in incidents {
        let body = serde_json::to_string(i)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
        ins.execute(params![i.run, i.detector.as_str(), body])?;
    }
    Ok(())
}
