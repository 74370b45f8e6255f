//! Every table declared once.
//!
//! A table is a row struct declared with [`table!`] plus a [`TableSpec`]
//! (name, key, version column, partitioning). From that one declaration
//! come, for both backends:
//! - the DDL ([`clickhouse_create`], [`sqlite_create`]) and the migration of
//!   an existing table (declared columns it lacks are added, see
//!   [`missing_columns`]);
//! - the ClickHouse `SELECT` list ([`clickhouse_select`]), position by
//!   position the struct's field order, which RowBinary needs, with explicit
//!   casts because the client's schema validation is off; inserts use the
//!   struct's column names;
//! - the SQLite upsert ([`sqlite_upsert`]) and `SELECT` list, with every
//!   value bound and read by [`Columns::to_sqlite`] / [`Columns::from_sqlite`].
//!
//! Adding a column is one line in the row struct (a nullable or array
//! column, so existing tables can take it) plus the code that fills it.

use rusqlite::types::Value;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A column's type, as each backend spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    /// Text.
    String,
    /// Opaque bytes (a ClickHouse `String`, a SQLite `BLOB`).
    Bytes,
    /// Whole seconds since the epoch.
    DateTime,
    /// 0 or 1, or a small count.
    UInt8,
    /// Unsigned 32-bit.
    UInt32,
    /// Unsigned 64-bit (stored as the same bits in SQLite's signed integers).
    UInt64,
    /// Signed 64-bit.
    Int64,
    /// Double.
    Float64,
    /// Nullable `UInt8`.
    NullableUInt8,
    /// Nullable `UInt64`.
    NullableUInt64,
    /// Nullable `Float64`.
    NullableFloat64,
    /// Nullable text.
    NullableString,
    /// Array of text (JSON text in SQLite).
    ArrayString,
    /// Array of doubles (JSON text in SQLite).
    ArrayFloat64,
    /// Array of `UInt8` (JSON text in SQLite).
    ArrayUInt8,
    /// Array of signed 64-bit integers (JSON text in SQLite).
    ArrayInt64,
}

impl SqlType {
    /// The ClickHouse type.
    pub fn clickhouse(self) -> &'static str {
        match self {
            SqlType::String | SqlType::Bytes => "String",
            SqlType::DateTime => "DateTime",
            SqlType::UInt8 => "UInt8",
            SqlType::UInt32 => "UInt32",
            SqlType::UInt64 => "UInt64",
            SqlType::Int64 => "Int64",
            SqlType::Float64 => "Float64",
            SqlType::NullableUInt8 => "Nullable(UInt8)",
            SqlType::NullableUInt64 => "Nullable(UInt64)",
            SqlType::NullableFloat64 => "Nullable(Float64)",
            SqlType::NullableString => "Nullable(String)",
            SqlType::ArrayString => "Array(String)",
            SqlType::ArrayFloat64 => "Array(Float64)",
            SqlType::ArrayUInt8 => "Array(UInt8)",
            SqlType::ArrayInt64 => "Array(Int64)",
        }
    }

    /// The SQLite column definition (type and nullability).
    pub fn sqlite(self) -> &'static str {
        match self {
            SqlType::String => "TEXT NOT NULL",
            SqlType::Bytes => "BLOB NOT NULL",
            SqlType::DateTime
            | SqlType::UInt8
            | SqlType::UInt32
            | SqlType::UInt64
            | SqlType::Int64 => "INTEGER NOT NULL",
            SqlType::Float64 => "REAL NOT NULL",
            SqlType::NullableUInt8 | SqlType::NullableUInt64 => "INTEGER",
            SqlType::NullableFloat64 => "REAL",
            SqlType::NullableString => "TEXT",
            SqlType::ArrayString
            | SqlType::ArrayFloat64
            | SqlType::ArrayUInt8
            | SqlType::ArrayInt64 => "TEXT",
        }
    }

    /// How a ClickHouse `SELECT` reads the column, cast to exactly the type
    /// RowBinary decodes into the row struct.
    fn clickhouse_read(self, column: &str) -> String {
        match self {
            SqlType::String | SqlType::Bytes => format!("toString({column})"),
            SqlType::DateTime | SqlType::UInt32 => format!("toUInt32({column})"),
            SqlType::UInt8 => format!("toUInt8({column})"),
            SqlType::UInt64 => format!("toUInt64({column})"),
            SqlType::Int64 => format!("toInt64({column})"),
            SqlType::Float64 => format!("toFloat64({column})"),
            _ => column.to_owned(),
        }
    }

    /// Whether an existing table can take the column (it has a default:
    /// NULL or an empty array).
    pub fn can_be_added(self) -> bool {
        matches!(
            self,
            SqlType::NullableUInt8
                | SqlType::NullableUInt64
                | SqlType::NullableFloat64
                | SqlType::NullableString
                | SqlType::ArrayString
                | SqlType::ArrayFloat64
                | SqlType::ArrayUInt8
                | SqlType::ArrayInt64
        )
    }
}

/// One column of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Column name (the row struct's field name).
    pub name: &'static str,
    /// Its type.
    pub sql: SqlType,
}

/// A Rust type that a column holds, and how SQLite binds and reads it.
pub trait ColumnValue: Sized {
    /// The column type of this Rust type.
    const SQL: SqlType;
    /// The value to bind.
    fn to_sqlite(&self) -> Value;
    /// The value read at `index`.
    fn from_sqlite(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Self>;
}

/// A row struct declared with [`table!`]: its columns in field order.
pub trait Columns: Sized {
    /// Columns in field order.
    const COLUMNS: &'static [Column];
    /// Every field as a SQLite value, in column order.
    fn to_sqlite(&self) -> Vec<Value>;
    /// The row from a SQLite row selected with [`sqlite_select`]'s list.
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

/// How rows of one key replace each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    /// Of the rows with one key, the one with the highest value of this
    /// column wins (ClickHouse `ReplacingMergeTree(column)`, a SQLite
    /// upsert guarded by the column).
    Column(&'static str),
    /// Rows with one key are equal; any one is kept.
    Equal,
    /// No key: every row is kept (a log). ClickHouse still sorts by the key.
    Append,
}

/// What a table is besides its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    /// Table name.
    pub name: &'static str,
    /// ClickHouse sorting key; SQLite primary key unless `Append`.
    pub key: &'static [&'static str],
    /// How rows replace each other.
    pub versioning: Versioning,
    /// ClickHouse partition expression.
    pub partition_by: Option<&'static str>,
    /// Columns of an extra SQLite index (for range scans).
    pub sqlite_index: &'static [&'static str],
    /// A SQLite `WITHOUT ROWID` table (the key is the table's only B-tree):
    /// for tables of many small rows written in key order that is random.
    pub sqlite_without_rowid: bool,
}

/// A table: its spec and its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableDef {
    /// Name, key, versioning, partitioning.
    pub spec: TableSpec,
    /// Columns in the row struct's field order.
    pub columns: &'static [Column],
}

/// A row struct and its table.
pub trait Table: Columns {
    /// The table.
    const SPEC: TableSpec;
    /// The table with its columns.
    const DEF: TableDef = TableDef {
        spec: Self::SPEC,
        columns: Self::COLUMNS,
    };
}

/// Declares a row struct (fields in column order) and implements
/// [`Columns`] for it. Each field's type must implement [`ColumnValue`].
macro_rules! table {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$field_meta:meta])* $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize, serde::Deserialize)]
        $vis struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl $crate::schema::Columns for $name {
            const COLUMNS: &'static [$crate::schema::Column] = &[
                $( $crate::schema::Column {
                    name: stringify!($field),
                    sql: <$ty as $crate::schema::ColumnValue>::SQL,
                }, )*
            ];

            fn to_sqlite(&self) -> Vec<rusqlite::types::Value> {
                vec![ $( $crate::schema::ColumnValue::to_sqlite(&self.$field), )* ]
            }

            #[allow(unused_assignments)]
            fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                let mut index = 0usize;
                Ok(Self {
                    $( $field: {
                        let value = <$ty as $crate::schema::ColumnValue>::from_sqlite(row, index)?;
                        index += 1;
                        value
                    }, )*
                })
            }
        }
    };
}
pub(crate) use table;

/// Whole seconds since the epoch (a `DateTime` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seconds(pub u32);

impl Seconds {
    /// The same instant in milliseconds.
    pub fn millis(self) -> i64 {
        i64::from(self.0) * 1000
    }
}

/// Opaque bytes (a sketch).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_bytes::deserialize(deserializer).map(Bytes)
    }
}

macro_rules! integer_column {
    ($ty:ty, $sql:ident) => {
        impl ColumnValue for $ty {
            const SQL: SqlType = SqlType::$sql;
            fn to_sqlite(&self) -> Value {
                // u64 keeps its bits in SQLite's signed integers.
                Value::Integer(*self as i64)
            }
            fn from_sqlite(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Self> {
                Ok(row.get::<_, i64>(index)? as $ty)
            }
        }
    };
}
integer_column!(u8, UInt8);
integer_column!(u32, UInt32);
integer_column!(u64, UInt64);
integer_column!(i64, Int64);

macro_rules! nullable_integer_column {
    ($ty:ty, $sql:ident) => {
        impl ColumnValue for Option<$ty> {
            const SQL: SqlType = SqlType::$sql;
            fn to_sqlite(&self) -> Value {
                self.map_or(Value::Null, |value| Value::Integer(value as i64))
            }
            fn from_sqlite(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Self> {
                Ok(row.get::<_, Option<i64>>(index)?.map(|value| value as $ty))
            }
        }
    };
}
nullable_integer_column!(u8, NullableUInt8);
nullable_integer_column!(u64, NullableUInt64);

impl ColumnValue for Seconds {
    const SQL: SqlType = SqlType::DateTime;
    fn to_sqlite(&self) -> Value {
        Value::Integer(i64::from(self.0))
    }
    fn from_sqlite(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Self> {
        Ok(Seconds(row.get(index)?))
    }
}

impl ColumnValue for String {
    const SQL: SqlType = SqlType::String;
    fn to_sqlite(&self) -> Value {
        Value::Text(self.clone())
    }
    fn from_sqlite(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Self> {
        row.get(index)
    }
}

impl ColumnValue for Bytes {
    const SQL: SqlType = SqlType::Bytes;
    fn to_sqlite(&self) -> Value {
        Value::Blob(self.0.clone())
    }
    fn from_sqlite(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Self> {
        row.get(index).map(Bytes)
    }
}

impl ColumnValue for f64 {
    const SQL: SqlType = SqlType::Float64;
    fn to_sqlite(&self) -> Value {
        Value::Real(*self)
    }
    fn from_sqlite(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Self> {
        row.get(index)
    }
}

impl ColumnValue for Option<f64> {
    const SQL: SqlType = SqlType::NullableFloat64;
    fn to_sqlite(&self) -> Value {
        self.map_or(Value::Null, Value::Real)
    }
    fn from_sqlite(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Self> {
        row.get(index)
    }
}

impl ColumnValue for Option<String> {
    const SQL: SqlType = SqlType::NullableString;
    fn to_sqlite(&self) -> Value {
        self.clone().map_or(Value::Null, Value::Text)
    }
    fn from_sqlite(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Self> {
        row.get(index)
    }
}

macro_rules! array_column {
    ($ty:ty, $sql:ident) => {
        impl ColumnValue for Vec<$ty> {
            const SQL: SqlType = SqlType::$sql;
            fn to_sqlite(&self) -> Value {
                Value::Text(serde_json::to_string(self).expect("plain arrays serialize"))
            }
            /// NULL (a row written before the column existed) is empty.
            fn from_sqlite(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Self> {
                let Some(text) = row.get::<_, Option<String>>(index)? else {
                    return Ok(Vec::new());
                };
                serde_json::from_str(&text).map_err(|error| {
                    rusqlite::Error::FromSqlConversionFailure(
                        index,
                        rusqlite::types::Type::Text,
                        Box::new(error),
                    )
                })
            }
        }
    };
}
array_column!(String, ArrayString);
array_column!(f64, ArrayFloat64);
array_column!(u8, ArrayUInt8);
array_column!(i64, ArrayInt64);

/// `CREATE TABLE IF NOT EXISTS` for ClickHouse.
pub fn clickhouse_create(table: &TableDef) -> String {
    let spec = table.spec;
    let columns = table
        .columns
        .iter()
        .map(|column| format!("{} {}", column.name, column.sql.clickhouse()))
        .collect::<Vec<_>>()
        .join(", ");
    let engine = match spec.versioning {
        Versioning::Column(version) => format!("ReplacingMergeTree({version})"),
        Versioning::Equal => "ReplacingMergeTree".to_owned(),
        Versioning::Append => "MergeTree".to_owned(),
    };
    let partition = spec
        .partition_by
        .map(|expression| format!(" PARTITION BY {expression}"))
        .unwrap_or_default();
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({columns}) ENGINE = {engine}{partition} ORDER BY ({})",
        spec.name,
        spec.key.join(", ")
    )
}

/// `CREATE TABLE IF NOT EXISTS` (and its index) for SQLite.
pub fn sqlite_create(table: &TableDef) -> String {
    let spec = table.spec;
    let mut definitions: Vec<String> = table
        .columns
        .iter()
        .map(|column| format!("{} {}", column.name, column.sql.sqlite()))
        .collect();
    if spec.versioning != Versioning::Append {
        definitions.push(format!("PRIMARY KEY ({})", spec.key.join(", ")));
    }
    let without_rowid = if spec.sqlite_without_rowid && spec.versioning != Versioning::Append {
        " WITHOUT ROWID"
    } else {
        ""
    };
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {} ({}){without_rowid};",
        spec.name,
        definitions.join(", ")
    );
    if !spec.sqlite_index.is_empty() {
        sql.push_str(&format!(
            "\nCREATE INDEX IF NOT EXISTS {}_{} ON {} ({});",
            spec.name,
            spec.sqlite_index.join("_"),
            spec.name,
            spec.sqlite_index.join(", ")
        ));
    }
    sql
}

/// The declared columns of `table` that `existing` lacks. A column that an
/// existing table cannot take (no default) is an error: the stored table
/// is not one this version can use.
pub fn missing_columns(table: &TableDef, existing: &[String]) -> Result<Vec<Column>, crate::Error> {
    let mut missing = Vec::new();
    for column in table.columns {
        if existing.iter().any(|name| name == column.name) {
            continue;
        }
        if !column.sql.can_be_added() {
            return Err(crate::Error::Config(format!(
                "table `{}` exists without column `{}`, which cannot be added to it",
                table.spec.name, column.name
            )));
        }
        missing.push(*column);
    }
    Ok(missing)
}

/// The ClickHouse `SELECT` list of `T`, in field order. `replace` swaps a
/// column's expression (e.g. `("profile", "''")` to leave a large column out).
pub fn clickhouse_select<T: Columns>(replace: &[(&str, &str)]) -> String {
    T::COLUMNS
        .iter()
        .map(|column| {
            replace
                .iter()
                .find(|(name, _)| *name == column.name)
                .map_or_else(
                    || column.sql.clickhouse_read(column.name),
                    |(_, expression)| (*expression).to_owned(),
                )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SQLite `SELECT` list of `T`, in field order.
pub fn sqlite_select<T: Columns>() -> String {
    column_list(T::COLUMNS)
}

fn column_list(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|column| column.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `INSERT` of one row of `T` into SQLite, replacing a stored row of the
/// same key only as [`TableSpec::versioning`] says.
pub fn sqlite_upsert(table: &TableDef) -> String {
    let spec = table.spec;
    let insert = sqlite_insert(table, "INSERT");
    match spec.versioning {
        Versioning::Append => insert,
        Versioning::Equal => sqlite_insert(table, "INSERT OR REPLACE"),
        Versioning::Column(version) => {
            let updates = table
                .columns
                .iter()
                .filter(|column| !spec.key.contains(&column.name))
                .map(|column| format!("{0} = excluded.{0}", column.name))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "{insert} ON CONFLICT DO UPDATE SET {updates} WHERE excluded.{version} >= {}.{version}",
                spec.name
            )
        }
    }
}

/// `INSERT OR IGNORE` of one row of `T`: a stored row of the same key stays.
pub fn sqlite_insert_or_ignore(table: &TableDef) -> String {
    sqlite_insert(table, "INSERT OR IGNORE")
}

fn sqlite_insert(table: &TableDef, verb: &str) -> String {
    let placeholders = (1..=table.columns.len())
        .map(|index| format!("?{index}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{verb} INTO {} ({}) VALUES ({placeholders})",
        table.spec.name,
        column_list(table.columns)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    table! {
        /// A table for the tests.
        pub(crate) struct Sample {
            name: String,
            at: Seconds,
            version: u64,
            score: Option<f64>,
            tags: Vec<String>,
            blob: Bytes,
        }
    }

    impl Table for Sample {
        const SPEC: TableSpec = TableSpec {
            name: "sample",
            key: &["name", "at"],
            versioning: Versioning::Column("version"),
            partition_by: Some("toYYYYMMDD(at)"),
            sqlite_index: &[],
            sqlite_without_rowid: false,
        };
    }

    #[test]
    fn the_ddl_and_statements_come_from_the_declaration() {
        assert_eq!(
            clickhouse_create(&Sample::DEF),
            "CREATE TABLE IF NOT EXISTS sample (name String, at DateTime, version UInt64, \
             score Nullable(Float64), tags Array(String), blob String) \
             ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMMDD(at) ORDER BY (name, at)"
        );
        assert_eq!(
            sqlite_create(&Sample::DEF),
            "CREATE TABLE IF NOT EXISTS sample (name TEXT NOT NULL, at INTEGER NOT NULL, \
             version INTEGER NOT NULL, score REAL, tags TEXT, blob BLOB NOT NULL, \
             PRIMARY KEY (name, at));"
        );
        assert_eq!(
            clickhouse_select::<Sample>(&[("blob", "''")]),
            "toString(name), toUInt32(at), toUInt64(version), score, tags, ''"
        );
        assert_eq!(
            sqlite_upsert(&Sample::DEF),
            "INSERT INTO sample (name, at, version, score, tags, blob) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT DO UPDATE SET version = excluded.version, score = excluded.score, \
             tags = excluded.tags, blob = excluded.blob WHERE excluded.version >= sample.version"
        );
    }

    #[test]
    fn rows_round_trip_through_sqlite() {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        connection
            .execute_batch(&sqlite_create(&Sample::DEF))
            .unwrap();
        let row = Sample {
            name: "a".into(),
            at: Seconds(1_767_225_600),
            version: u64::MAX,
            score: None,
            tags: vec!["x".into(), "y".into()],
            blob: Bytes(vec![0, 255, 7]),
        };
        connection
            .execute(
                &sqlite_upsert(&Sample::DEF),
                rusqlite::params_from_iter(row.to_sqlite()),
            )
            .unwrap();
        let read = connection
            .query_row(
                &format!("SELECT {} FROM sample", sqlite_select::<Sample>()),
                [],
                Sample::from_sqlite,
            )
            .unwrap();
        assert_eq!(read, row);
    }

    #[test]
    fn only_columns_with_a_default_can_be_added() {
        let existing: Vec<String> = ["name", "at", "version", "blob"].map(String::from).to_vec();
        let missing = missing_columns(&Sample::DEF, &existing).unwrap();
        assert_eq!(
            missing.iter().map(|c| c.name).collect::<Vec<_>>(),
            ["score", "tags"]
        );
        let error = missing_columns(&Sample::DEF, &["name".into()]).unwrap_err();
        assert!(error.to_string().contains("without column `at`"), "{error}");
    }
}
