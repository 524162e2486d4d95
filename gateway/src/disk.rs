//! The data directory's disk: what it has free, and the reserve that uploads, submissions and
//! job results keep (`jobs.min_free_disk_mb`), since a store that fails a write on a full disk
//! is unusable until the server restarts.

use wafer_core::Problem;

/// 503 `storage-full` when storing `bytes` would leave the data directory's disk with less
/// than `min_free_mb` free: the store is never written to a full disk (where a failed write
/// would leave it unusable until the server restarts).
pub fn room(dir: &std::path::Path, bytes: u64, min_free_mb: u64) -> Result<(), Problem> {
    let Some(free) = free_bytes(dir) else {
        return Ok(());
    };
    let reserve = min_free_mb.saturating_mul(1 << 20);
    if free >= bytes.saturating_add(reserve) {
        return Ok(());
    }
    let mut refusal = Problem::new(
        503,
        "storage-full",
        "Storage full",
        format!(
            "the server's disk is nearly full ({} MiB free, {min_free_mb} MiB kept free: \
             jobs.min_free_disk_mb); nothing was stored: try again later",
            free >> 20
        ),
    );
    refusal.retry_after = Some(30);
    Err(refusal)
}

/// Bytes free to unprivileged writers on the file system of `dir`; None when unknown.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: statvfs(3) with a NUL-terminated path and a buffer of the right type; the
    // struct is read only when the call succeeded.
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}
