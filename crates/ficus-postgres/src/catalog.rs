//! What the source's catalog says: settings, privileges, tables, types.

use std::collections::{BTreeMap, HashMap};

use ficus_model::{CatalogTable, Column, PgType, Relation, ReplicaIdentity, TableRef, Unseen, UnseenColumn};
use sqlx::{PgPool, Row};

use crate::SourceError;

/// How long connecting may take before the source counts as not answering.
pub(crate) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a small pool of ordinary connections to the source. A first connection is made on its
/// own, so that what went wrong is named (a pool would only say it timed out): nothing listens on
/// the port, the host is not found, TLS, the password.
pub async fn connect(url: &crate::SourceUrl) -> Result<PgPool, SourceError> {
    use sqlx::ConnectOptions;
    let options = url.query_options()?;
    let at = format!("{}:{}", url.host, url.port);
    let shown = url.redacted();
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
        }
        Ok(Err(e)) => return Err(connect_error(&shown, &at, e)),
        Err(_) => {
            return Err(SourceError::Transient(format!(
                "connecting to {shown}: {at} did not answer within {CONNECT_TIMEOUT:?} (a firewall dropping packets, or the host is down)"
            )));
        }
    }
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| connect_error(&shown, &at, e))
}

/// A failed connection, by its cause. Refused and not found are transient (a server restarting,
/// a DNS hiccup): `ficus run` retries them, and names them while it does.
pub(crate) fn connect_error(shown: &str, at: &str, e: sqlx::Error) -> SourceError {
    if let sqlx::Error::Io(io) = &e {
        let text = io.to_string();
        if io.kind() == std::io::ErrorKind::ConnectionRefused {
            return SourceError::Transient(format!(
                "connecting to {shown}: connection refused: nothing listens on {at} (is Postgres running, on that port?)"
            ));
        }
        if text.contains("lookup address")
            || text.contains("Name or service not known")
            || text.contains("nodename nor servname")
        {
            return SourceError::Transient(format!(
                "connecting to {shown}: host not found: {} does not resolve ({text})",
                at.rsplit_once(':').map_or(at, |(host, _)| host)
            ));
        }
    }
    SourceError::from_sqlx(&format!("connecting to {shown}"), e)
}

/// Checks that the source can stream: `wal_level = logical` and a user with
/// the REPLICATION attribute.
pub async fn preflight(pool: &PgPool) -> Result<(), SourceError> {
    match preflight_problems(pool).await?.into_iter().next() {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// Everything [`preflight`] checks, every problem at once (for `ficus check`).
pub async fn preflight_problems(pool: &PgPool) -> Result<Vec<SourceError>, SourceError> {
    let row = sqlx::query(
        "select current_setting('wal_level'), rolsuper, rolreplication, current_user::text
         from pg_roles where rolname = current_user",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| SourceError::from_sqlx("reading wal_level and the user's attributes", e))?;
    let (wal_level, superuser, replication, user): (String, bool, bool, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let mut problems = Vec::new();
    if wal_level != "logical" {
        problems.push(SourceError::definite(
            format!("the source has wal_level = {wal_level}, and logical replication needs wal_level = logical"),
            "run ALTER SYSTEM SET wal_level = logical; then restart Postgres (on a managed service, turn on its logical replication setting)",
        ));
    }
    if !superuser && !replication {
        problems.push(SourceError::definite(
            format!("user {user} may not stream changes: it lacks the REPLICATION attribute"),
            format!(
                "run ALTER ROLE {user} WITH REPLICATION; as a superuser (on a managed service, grant its replication role)"
            ),
        ));
    }
    Ok(problems)
}

/// Every user table: its relation as the stream will describe it (generated columns, which
/// logical replication does not send, apart), which columns may be TOASTed, whether it is
/// partitioned. For checking mappings and for the backfill, whose rows must look like streamed ones.
pub async fn tables(pool: &PgPool) -> Result<BTreeMap<TableRef, CatalogTable>, SourceError> {
    let rows = sqlx::query(
        "select n.nspname::text, c.relname::text, c.oid::int8, c.relreplident::text, a.attname::text, a.atttypid::int8,
                format_type(a.atttypid, a.atttypmod),
                coalesce(a.attnum = any(i.indkey), false),
                a.attgenerated <> '', pg_get_expr(d.adbin, d.adrelid),
                a.attlen = -1 and a.attstorage <> 'p',
                c.relkind = 'p', a.attnotnull
         from pg_class c
         join pg_namespace n on n.oid = c.relnamespace
         join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
         left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         left join pg_index i on i.indrelid = c.oid
              and ((c.relreplident = 'd' and i.indisprimary) or (c.relreplident = 'i' and i.indisreplident))
         where c.relkind in ('r', 'p') and not c.relispartition
           and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%'
         order by 1, 2, a.attnum",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| SourceError::from_sqlx("reading the tables", e))?;
    let mut types = TypeCache::default();
    let mut out: BTreeMap<TableRef, CatalogTable> = BTreeMap::new();
    for row in rows {
        let table = TableRef::new(row.get::<String, _>(0), row.get::<String, _>(1));
        let entry = out.entry(table.clone()).or_insert_with(|| {
            let mut t = CatalogTable::from(Relation {
                oid: row.get::<i64, _>(2) as u32,
                table,
                replica_identity: ReplicaIdentity::from_letter(row.get::<String, _>(3).as_bytes()[0]),
                columns: vec![],
            });
            t.partitioned = row.get(11);
            t
        });
        let name: String = row.get(4);
        if row.get::<bool, _>(8) {
            let expression = row.get::<Option<String>, _>(9).unwrap_or_default();
            entry.unseen.push(UnseenColumn {
                name,
                why: Unseen::Generated { expression },
            });
            continue;
        }
        if row.get::<bool, _>(10) {
            entry.toastable.insert(name.clone());
        }
        if row.get::<bool, _>(12) {
            entry.not_null.insert(name.clone());
        }
        let oid = row.get::<i64, _>(5) as u32;
        entry.relation.columns.push(Column {
            name,
            ty: types.resolve(pool, oid).await?,
            type_name: row.get(6),
            identity: row.get(7),
        });
    }
    Ok(out)
}

/// The base type of every column whose type is a domain, as `format_type` names it (a domain of
/// a domain resolved to the last base): what a fixture declares so that the value converts as
/// the stream converts it.
pub async fn domain_bases(pool: &PgPool) -> Result<BTreeMap<TableRef, HashMap<String, String>>, SourceError> {
    let rows = sqlx::query(
        "with recursive d(attrelid, attname, oid, typmod, depth) as (
             select a.attrelid, a.attname, a.atttypid, a.atttypmod, 0
             from pg_attribute a join pg_type t on t.oid = a.atttypid
             where t.typtype = 'd' and a.attnum > 0 and not a.attisdropped
           union all
             select d.attrelid, d.attname, t.typbasetype, t.typtypmod, d.depth + 1
             from d join pg_type t on t.oid = d.oid
             where t.typtype = 'd' and d.depth < 16
         )
         select distinct on (d.attrelid, d.attname)
                n.nspname::text, c.relname::text, d.attname::text, format_type(d.oid, d.typmod)
         from d join pg_class c on c.oid = d.attrelid join pg_namespace n on n.oid = c.relnamespace
         where c.relkind in ('r', 'p')
           and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%'
         order by d.attrelid, d.attname, d.depth desc",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| SourceError::from_sqlx("reading the columns' domains", e))?;
    let mut out: BTreeMap<TableRef, HashMap<String, String>> = BTreeMap::new();
    for row in rows {
        out.entry(TableRef::new(row.get::<String, _>(0), row.get::<String, _>(1)))
            .or_default()
            .insert(row.get(2), row.get(3));
    }
    Ok(out)
}

/// Type OIDs resolved to how ficus converts them, cached.
#[derive(Default)]
pub struct TypeCache {
    types: HashMap<u32, PgType>,
}

impl TypeCache {
    /// Resolves a type OID: built-in types at once, others from `pg_type`
    /// (domains to their base type, enums to text, arrays to their element).
    pub async fn resolve(&mut self, pool: &PgPool, oid: u32) -> Result<PgType, SourceError> {
        if let Some(t) = PgType::builtin(oid) {
            return Ok(t);
        }
        if let Some(t) = self.types.get(&oid) {
            return Ok(t.clone());
        }
        let mut current = oid;
        let mut depth = 0;
        let resolved = loop {
            if let Some(t) = PgType::builtin(current).or_else(|| self.types.get(&current).cloned()) {
                break t;
            }
            let row = sqlx::query(
                "select typtype::text, typbasetype::int8, typelem::int8, typcategory::text from pg_type where oid = $1",
            )
            .bind(i64::from(current))
            .fetch_optional(pool)
            .await
            .map_err(|e| SourceError::from_sqlx("reading a column type", e))?;
            let Some(row) = row else { break PgType::Text };
            let (typtype, base, elem, category): (String, i64, i64, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            depth += 1;
            if typtype == "d" && depth < 16 {
                current = base as u32;
            } else if category == "A" && elem != 0 && depth < 16 {
                let inner = Box::pin(self.resolve(pool, elem as u32)).await?;
                break PgType::Array(Box::new(inner));
            } else {
                break PgType::Text;
            }
        };
        self.types.insert(oid, resolved.clone());
        Ok(resolved)
    }
}

/// The current end of the WAL.
pub async fn current_wal_lsn(pool: &PgPool) -> Result<ficus_model::Lsn, SourceError> {
    let s: String = sqlx::query_scalar("select pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await
        .map_err(|e| SourceError::from_sqlx("reading the WAL position", e))?;
    s.parse()
        .map_err(|e: ficus_model::lsn::ParseLsnError| SourceError::definite(e.to_string(), "report this as a bug"))
}
