//! Bulk reads of numeric columns through SQLite's C API on a pooled connection. A comparison
//! reads thousands of rows per run; sqlx decodes a row in microseconds (a channel hop and an
//! owned row each), SQLite itself steps one in a fraction of that, and the difference is what
//! keeps a 50-run comparison interactive.

use std::ffi::{CStr, CString};
use std::ptr::{self, NonNull};

use libsqlite3_sys as ffi;
use sqlx::SqliteConnection;

/// A prepared statement, finalised when dropped.
struct Statement(NonNull<ffi::sqlite3_stmt>);

impl Drop for Statement {
    fn drop(&mut self) {
        // SAFETY: the statement came from sqlite3_prepare_v2 and is finalised once, here.
        unsafe {
            ffi::sqlite3_finalize(self.0.as_ptr());
        }
    }
}

fn sqlite_error(db: *mut ffi::sqlite3, what: &str) -> sqlx::Error {
    // SAFETY: `db` is the open connection handle; sqlite3_errmsg returns a string it owns.
    let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db)) }
        .to_string_lossy()
        .into_owned();
    sqlx::Error::Protocol(format!("{what}: {message}"))
}

/// Runs `sql` with integer parameters and returns its first `ncols` columns of every row as
/// `f64`, row after row (NaN for NULL).
pub(crate) async fn numeric_rows(
    conn: &mut SqliteConnection,
    sql: &str,
    params: &[i64],
    ncols: usize,
) -> sqlx::Result<Vec<f64>> {
    let text = CString::new(sql).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    let mut raw = ptr::null_mut();
    // SAFETY: `db` stays locked for this function (the handle guard); `text` is a valid C
    // string; every statement pointer below belongs to `stmt` and dies with it.
    unsafe {
        if ffi::sqlite3_prepare_v2(db, text.as_ptr(), -1, &mut raw, ptr::null_mut())
            != ffi::SQLITE_OK
        {
            return Err(sqlite_error(db, "preparing a bulk read"));
        }
    }
    let stmt = Statement(
        NonNull::new(raw).ok_or_else(|| sqlx::Error::Protocol("empty statement".into()))?,
    );
    let mut out = Vec::new();
    unsafe {
        for (i, p) in params.iter().enumerate() {
            ffi::sqlite3_bind_int64(stmt.0.as_ptr(), i as i32 + 1, *p);
        }
        loop {
            match ffi::sqlite3_step(stmt.0.as_ptr()) {
                ffi::SQLITE_ROW => {
                    for c in 0..ncols as i32 {
                        out.push(match ffi::sqlite3_column_type(stmt.0.as_ptr(), c) {
                            ffi::SQLITE_NULL => f64::NAN,
                            _ => ffi::sqlite3_column_double(stmt.0.as_ptr(), c),
                        });
                    }
                }
                ffi::SQLITE_DONE => break,
                _ => return Err(sqlite_error(db, "bulk read")),
            }
        }
    }
    Ok(out)
}
