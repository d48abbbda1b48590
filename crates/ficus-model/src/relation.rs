//! Tables and their columns, as the source describes them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A table, by schema and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableRef {
    /// The schema, `public` unless said otherwise.
    pub schema: String,
    /// The table's name.
    pub name: String,
}

impl TableRef {
    /// `"orders"` is `public.orders`; `"sales.orders"` is `sales.orders`.
    pub fn parse(s: &str) -> TableRef {
        match s.split_once('.') {
            Some((schema, name)) => TableRef::new(schema, name),
            None => TableRef::new("public", s),
        }
    }

    /// A table from its schema and name.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> TableRef {
        TableRef {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The name quoted for SQL: `"public"."orders"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A column's type, resolved to what decides how its value is converted:
/// domains are their base type, enums are text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgType {
    /// `bool`
    Bool,
    /// `int2`, `int4`, `oid`: fit a JSON number exactly
    Int,
    /// `int8`
    Int8,
    /// `float4`, `float8`
    Float,
    /// `numeric`
    Numeric,
    /// `text`, `varchar`, `char`, `name`, enums, `uuid` and every type without a JSON form
    Text,
    /// `bytea`
    Bytea,
    /// `json`, `jsonb`
    Json,
    /// `timestamptz`
    Timestamptz,
    /// `timestamp`
    Timestamp,
    /// `date`
    Date,
    /// `time`, `timetz`
    Time,
    /// `interval`
    Interval,
    /// An array of the element type.
    Array(Box<PgType>),
}

impl PgType {
    /// The type of a built-in scalar type OID, `None` for the rest (which the
    /// source resolves from the catalog).
    pub fn builtin(oid: u32) -> Option<PgType> {
        Some(match oid {
            16 => PgType::Bool,
            17 => PgType::Bytea,
            20 => PgType::Int8,
            21 | 23 | 26 | 28 => PgType::Int,
            18 | 19 | 25 | 1042 | 1043 | 2950 => PgType::Text,
            114 | 3802 => PgType::Json,
            700 | 701 => PgType::Float,
            1700 => PgType::Numeric,
            1082 => PgType::Date,
            1083 | 1266 => PgType::Time,
            1114 => PgType::Timestamp,
            1184 => PgType::Timestamptz,
            1186 => PgType::Interval,
            _ => return None,
        })
    }

    /// The type of a Postgres type name as `format_type` or a `CREATE TABLE` writes it
    /// (`bigint`, `int8`, `numeric(10,2)`, `timestamp with time zone`, `text[]`): how a fixture
    /// names a column's type. Names without a JSON form (enums, `uuid`, domains written by
    /// their own name) are text, as ficus converts them live.
    pub fn from_name(name: &str) -> PgType {
        let name = name.trim().to_ascii_lowercase();
        if let Some(elem) = name.strip_suffix("[]") {
            return PgType::Array(Box::new(PgType::from_name(elem)));
        }
        // `numeric(10,2)`, `timestamp(3) with time zone`: the modifier does not change the type.
        let mut base = String::with_capacity(name.len());
        let mut depth = 0;
        for c in name.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                c if depth == 0 => base.push(c),
                _ => {}
            }
        }
        let base = base.split_whitespace().collect::<Vec<_>>().join(" ");
        match base.as_str() {
            "bool" | "boolean" => PgType::Bool,
            "int2" | "int4" | "smallint" | "integer" | "int" | "oid" | "smallserial" | "serial" => PgType::Int,
            "int8" | "bigint" | "bigserial" => PgType::Int8,
            "float4" | "float8" | "real" | "double precision" | "float" => PgType::Float,
            "numeric" | "decimal" => PgType::Numeric,
            "bytea" => PgType::Bytea,
            "json" | "jsonb" => PgType::Json,
            "timestamptz" | "timestamp with time zone" => PgType::Timestamptz,
            "timestamp" | "timestamp without time zone" => PgType::Timestamp,
            "date" => PgType::Date,
            "time" | "timetz" | "time with time zone" | "time without time zone" => PgType::Time,
            "interval" => PgType::Interval,
            _ => PgType::Text,
        }
    }

    /// Whether a value of this type can be an event's key.
    pub fn is_scalar(&self) -> bool {
        !matches!(self, PgType::Array(_) | PgType::Json | PgType::Bytea)
    }
}

/// Which old values the source sends for updates and deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaIdentity {
    /// The primary key's columns (`REPLICA IDENTITY DEFAULT`).
    Default,
    /// Every column (`REPLICA IDENTITY FULL`).
    Full,
    /// The columns of one unique index (`REPLICA IDENTITY USING INDEX`).
    Index,
    /// No old values (`REPLICA IDENTITY NOTHING`).
    Nothing,
}

impl ReplicaIdentity {
    /// From pgoutput's and `pg_class.relreplident`'s letter.
    pub fn from_letter(c: u8) -> ReplicaIdentity {
        match c {
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            b'n' => ReplicaIdentity::Nothing,
            _ => ReplicaIdentity::Default,
        }
    }
}

impl fmt::Display for ReplicaIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicaIdentity::Default => "DEFAULT",
            ReplicaIdentity::Full => "FULL",
            ReplicaIdentity::Index => "USING INDEX",
            ReplicaIdentity::Nothing => "NOTHING",
        })
    }
}

/// One column of a relation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// The column's name.
    pub name: String,
    /// The column's type, as ficus converts it.
    pub ty: PgType,
    /// The name of the type in Postgres, for messages.
    pub type_name: String,
    /// Whether the column belongs to the replica identity (sent in `old` for every update and delete).
    pub identity: bool,
}

/// A table as the stream describes it at one moment: columns in their order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relation {
    /// The table's OID on the source.
    pub oid: u32,
    /// The table.
    pub table: TableRef,
    /// The table's replica identity.
    pub replica_identity: ReplicaIdentity,
    /// The columns, in the order of the row changes' cells.
    pub columns: Vec<Column>,
}

impl Relation {
    /// The position of a column.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// A table as the catalog describes it, for checking mappings before anything streams: the
/// relation as the stream will describe it (the columns logical replication sends), and what the
/// stream will not send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogTable {
    /// The columns the stream sends, in its order.
    pub relation: Relation,
    /// Columns of the table the stream does not send, and why.
    pub unseen: Vec<UnseenColumn>,
    /// Columns whose values may be TOASTed (kept out of line): an update that leaves such a value
    /// unchanged does not send it.
    pub toastable: std::collections::BTreeSet<String>,
    /// Whether the table is partitioned (its partitions publish through it).
    pub partitioned: bool,
    /// Columns declared `NOT NULL`: their values in an event's data are never null.
    pub not_null: std::collections::BTreeSet<String>,
}

/// A column of a table that logical replication does not send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnseenColumn {
    /// The column.
    pub name: String,
    /// Why the stream does not send it.
    pub why: Unseen,
}

/// Why the stream does not send a column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unseen {
    /// A generated column (`GENERATED ALWAYS AS (...) STORED`): Postgres 15 does not send them.
    Generated {
        /// Its generation expression, in SQL.
        expression: String,
    },
    /// The publication's column list leaves it out.
    NotPublished {
        /// The publication.
        publication: String,
        /// The statement that publishes every column of its tables.
        fix: String,
    },
}

impl CatalogTable {
    /// Why the stream does not send the column, if it does not.
    pub fn unseen(&self, column: &str) -> Option<&Unseen> {
        self.unseen.iter().find(|u| u.name == column).map(|u| &u.why)
    }
}

impl From<Relation> for CatalogTable {
    fn from(relation: Relation) -> CatalogTable {
        CatalogTable {
            relation,
            unseen: vec![],
            toastable: Default::default(),
            partitioned: false,
            not_null: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PgType;

    #[test]
    fn type_names_are_read_as_a_schema_writes_them() {
        for (name, ty) in [
            ("bigint", PgType::Int8),
            ("INT4", PgType::Int),
            ("numeric(10,2)", PgType::Numeric),
            ("timestamp(3) with time zone", PgType::Timestamptz),
            ("timestamp without time zone", PgType::Timestamp),
            ("double precision", PgType::Float),
            ("order_status", PgType::Text),
            ("uuid", PgType::Text),
            ("text[]", PgType::Array(Box::new(PgType::Text))),
            (
                "int8[][]",
                PgType::Array(Box::new(PgType::Array(Box::new(PgType::Int8)))),
            ),
        ] {
            assert_eq!(PgType::from_name(name), ty, "{name}");
        }
    }
}
