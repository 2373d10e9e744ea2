//! DuckDB's errors as arrowport carries them: a kind to decide on, and DuckDB's own text to show.
//!
//! The kind comes from DuckDB's `duckdb_error_type` where the C API gives one (a query's result). Where it gives
//! only text (a prepared statement, a pending result, an Arrow stream), the kind is read once, here, from the
//! class DuckDB's text begins with (`Catalog Error: ...`, the name `duckdb_error_type` stands for); no other
//! code reads DuckDB's text to decide anything.

use duckdb::ffi as sys;

/// What kind of error DuckDB reported, as far as arrowport decides on it; every other kind is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// A name that does not exist (a table, a function, a schema).
    Catalog,
    /// The statement does not parse.
    Parser,
    /// The statement does not bind (a column, a type, a parameter that does not fit).
    Binder,
    /// A value breaks a constraint (NOT NULL, PRIMARY KEY, CHECK).
    Constraint,
    /// A value that cannot be converted, is out of range, or mismatches its type.
    Conversion,
    /// Input DuckDB refuses as invalid.
    InvalidInput,
    /// A transaction that could not commit (DuckDB's `TransactionContext`).
    Transaction,
    /// The statement was interrupted (`duckdb_interrupt`).
    Interrupted,
    /// DuckDB ran out of the memory `memory_limit` allows.
    OutOfMemory,
    /// A feature DuckDB (or an extension) does not have.
    NotImplemented,
    /// Something DuckDB does not allow (a setting, external access).
    Permission,
    /// Anything else DuckDB reported (I/O, internal errors, ...).
    Other,
    /// arrowport's own failure around DuckDB (a NUL in SQL text, a connection that would not open).
    Arrowport,
}

impl DbErrorKind {
    /// The kind of a `duckdb_error_type`.
    pub fn of_type(t: sys::duckdb_error_type) -> DbErrorKind {
        match t {
            sys::duckdb_error_type_DUCKDB_ERROR_CATALOG => DbErrorKind::Catalog,
            sys::duckdb_error_type_DUCKDB_ERROR_PARSER | sys::duckdb_error_type_DUCKDB_ERROR_SYNTAX => {
                DbErrorKind::Parser
            }
            sys::duckdb_error_type_DUCKDB_ERROR_BINDER
            | sys::duckdb_error_type_DUCKDB_ERROR_PARAMETER_NOT_RESOLVED
            | sys::duckdb_error_type_DUCKDB_ERROR_PARAMETER_NOT_ALLOWED => DbErrorKind::Binder,
            sys::duckdb_error_type_DUCKDB_ERROR_CONSTRAINT => DbErrorKind::Constraint,
            sys::duckdb_error_type_DUCKDB_ERROR_CONVERSION
            | sys::duckdb_error_type_DUCKDB_ERROR_OUT_OF_RANGE
            | sys::duckdb_error_type_DUCKDB_ERROR_MISMATCH_TYPE
            | sys::duckdb_error_type_DUCKDB_ERROR_DECIMAL
            | sys::duckdb_error_type_DUCKDB_ERROR_DIVIDE_BY_ZERO => DbErrorKind::Conversion,
            sys::duckdb_error_type_DUCKDB_ERROR_INVALID_INPUT => DbErrorKind::InvalidInput,
            sys::duckdb_error_type_DUCKDB_ERROR_TRANSACTION => DbErrorKind::Transaction,
            sys::duckdb_error_type_DUCKDB_ERROR_INTERRUPT => DbErrorKind::Interrupted,
            sys::duckdb_error_type_DUCKDB_ERROR_OUT_OF_MEMORY => DbErrorKind::OutOfMemory,
            sys::duckdb_error_type_DUCKDB_ERROR_NOT_IMPLEMENTED => DbErrorKind::NotImplemented,
            sys::duckdb_error_type_DUCKDB_ERROR_PERMISSION => DbErrorKind::Permission,
            _ => DbErrorKind::Other,
        }
    }

    /// The kind of an error DuckDB gave only as text, from the class its text begins with.
    pub fn of_text(message: &str) -> DbErrorKind {
        let Some((class, _)) = message.split_once(" Error: ") else { return DbErrorKind::Other };
        match class {
            "Catalog" => DbErrorKind::Catalog,
            "Parser" | "Syntax" => DbErrorKind::Parser,
            "Binder" | "Parameter Not Resolved" | "Parameter Not Allowed" => DbErrorKind::Binder,
            "Constraint" => DbErrorKind::Constraint,
            "Conversion" | "Out of Range" | "Mismatch Type" | "Decimal" | "Divide by Zero" => DbErrorKind::Conversion,
            "Invalid Input" => DbErrorKind::InvalidInput,
            "TransactionContext" => DbErrorKind::Transaction,
            "INTERRUPT" => DbErrorKind::Interrupted,
            "Out of Memory" => DbErrorKind::OutOfMemory,
            "Not implemented" => DbErrorKind::NotImplemented,
            "Permission" => DbErrorKind::Permission,
            _ => DbErrorKind::Other,
        }
    }
}

/// An error from DuckDB (or from arrowport around it): its kind, and the text verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DbError {
    pub kind: DbErrorKind,
    pub message: String,
}

impl DbError {
    /// The error a failed result holds, with its kind; `None` when it holds no text.
    ///
    /// # Safety
    /// `result` must point to a live result DuckDB filled.
    pub(crate) unsafe fn of_result(result: *mut sys::duckdb_result) -> Option<DbError> {
        // SAFETY: per the contract; the text is owned by the result and copied here, its type read from it.
        unsafe {
            let p = sys::duckdb_result_error(result);
            if p.is_null() {
                return None;
            }
            let kind = DbErrorKind::of_type(sys::duckdb_result_error_type(result));
            Some(DbError { kind, message: std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned() })
        }
    }

    /// arrowport's own failure around DuckDB.
    pub fn ours(message: impl Into<String>) -> DbError {
        DbError { kind: DbErrorKind::Arrowport, message: message.into() }
    }

    /// An error DuckDB gave as text only (its kind read from the text's class).
    pub fn from_text(message: impl Into<String>) -> DbError {
        let message = message.into();
        DbError { kind: DbErrorKind::of_text(&message), message }
    }

    /// The same kind with another text (DuckDB's, explained).
    pub fn with_message(&self, message: String) -> DbError {
        DbError { kind: self.kind, message }
    }

    pub fn is(&self, kind: DbErrorKind) -> bool {
        self.kind == kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_from_text_match_duckdbs_classes() {
        let cases = [
            ("Catalog Error: Table with name x does not exist!", DbErrorKind::Catalog),
            ("Parser Error: syntax error at or near \"SELEC\"", DbErrorKind::Parser),
            ("Binder Error: Referenced column \"y\" not found", DbErrorKind::Binder),
            ("Constraint Error: NOT NULL constraint failed: t.a", DbErrorKind::Constraint),
            ("Conversion Error: Could not convert string 'x' to INT32", DbErrorKind::Conversion),
            ("Mismatch Type Error: Type VARCHAR does not match with INTEGER", DbErrorKind::Conversion),
            ("TransactionContext Error: Failed to commit: Transaction conflict", DbErrorKind::Transaction),
            ("INTERRUPT Error: Interrupted!", DbErrorKind::Interrupted),
            ("Out of Memory Error: failed to allocate data of size 128.0 MiB", DbErrorKind::OutOfMemory),
            ("IO Error: disk full", DbErrorKind::Other),
            ("no class at all", DbErrorKind::Other),
        ];
        for (text, kind) in cases {
            assert_eq!(DbError::from_text(text).kind, kind, "{text}");
        }
        assert_eq!(DbErrorKind::of_type(sys::duckdb_error_type_DUCKDB_ERROR_CATALOG), DbErrorKind::Catalog);
        assert_eq!(DbErrorKind::of_type(sys::duckdb_error_type_DUCKDB_ERROR_INTERRUPT), DbErrorKind::Interrupted);
        assert_eq!(DbError::ours("x").to_string(), "x");
    }
}
