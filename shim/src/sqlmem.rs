//! SQLite's memory through Rust's global allocator. mlenv-runtime ships linked against
//! musl, whose allocator maps and unmaps small blocks as SQLite allocates and frees
//! them: a fifth of a create's time went to that (docs/benchmarks.md). Routed here,
//! SQLite allocates from the same heap as the rest of the process.

use rusqlite::ffi;
use std::alloc::Layout;
use std::ffi::{c_int, c_void};

/// Room before each block for its size, which SQLite asks for (`xSize`) and `dealloc`
/// needs; 16 keeps the blocks 16-byte aligned, as malloc's are.
const HEADER: usize = 16;

fn layout(n: usize) -> Option<Layout> {
    Layout::from_size_align(n.checked_add(HEADER)?, HEADER).ok()
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    let Some(l) = usize::try_from(n).ok().and_then(layout) else {
        return std::ptr::null_mut();
    };
    // SAFETY: l has a non-zero size; the size is written into the header, which
    // the block returned starts after.
    unsafe {
        let base = std::alloc::alloc(l);
        if base.is_null() {
            return std::ptr::null_mut();
        }
        (base as *mut usize).write(n as usize);
        base.add(HEADER).cast()
    }
}

/// The block's base and the size SQLite asked for.
///
/// # Safety
/// `p` came from [`x_malloc`] or [`x_realloc`] and is live.
unsafe fn block(p: *mut c_void) -> (*mut u8, usize) {
    // SAFETY: per the contract, HEADER bytes before p hold the size.
    unsafe {
        let base = p.cast::<u8>().sub(HEADER);
        (base, (base as *const usize).read())
    }
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: SQLite frees only what its xMalloc/xRealloc returned, once; the layout
    // is the one it was allocated with.
    unsafe {
        let (base, n) = block(p);
        std::alloc::dealloc(base, Layout::from_size_align_unchecked(n + HEADER, HEADER));
    }
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    if p.is_null() {
        // SAFETY: as malloc.
        return unsafe { x_malloc(n) };
    }
    let Some(new) = usize::try_from(n).ok().and_then(layout) else {
        return std::ptr::null_mut();
    };
    // SAFETY: p is a live block of ours (SQLite's contract), reallocated with the
    // layout it has; on failure the old block stays valid, as realloc's does.
    unsafe {
        let (base, old) = block(p);
        let moved = std::alloc::realloc(
            base,
            Layout::from_size_align_unchecked(old + HEADER, HEADER),
            new.size(),
        );
        if moved.is_null() {
            return std::ptr::null_mut();
        }
        (moved as *mut usize).write(n as usize);
        moved.add(HEADER).cast()
    }
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: p is a live block of ours.
    unsafe { block(p).1 as c_int }
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    (n.max(0) + 7) & !7
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

/// Makes SQLite allocate through Rust's global allocator. Only before SQLite's first
/// use in this process (opening a connection initializes it); false, and nothing
/// changed, after.
pub fn use_global_allocator() -> bool {
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(x_malloc),
        xFree: Some(x_free),
        xRealloc: Some(x_realloc),
        xSize: Some(x_size),
        xRoundup: Some(x_roundup),
        xInit: Some(x_init),
        xShutdown: Some(x_shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to the methods, which SQLite copies
    // before returning; the functions are 'static.
    unsafe {
        ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_MALLOC,
            &methods as *const ffi::sqlite3_mem_methods,
        ) == ffi::SQLITE_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_size_and_contents() {
        unsafe {
            assert_eq!(x_size(std::ptr::null_mut()), 0);
            x_free(std::ptr::null_mut());
            assert!(x_malloc(-1).is_null());
            let p = x_malloc(24);
            assert!(!p.is_null());
            assert_eq!(p as usize % HEADER, 0);
            assert_eq!(x_size(p), 24);
            std::ptr::copy_nonoverlapping(b"mlenv inventory".as_ptr(), p.cast(), 15);
            let q = x_realloc(p, 100_000);
            assert_eq!(x_size(q), 100_000);
            assert_eq!(
                std::slice::from_raw_parts(q.cast::<u8>(), 15),
                b"mlenv inventory"
            );
            let r = x_realloc(q, 8);
            assert_eq!(
                (x_size(r), std::slice::from_raw_parts(r.cast::<u8>(), 8)),
                (8, &b"mlenv in"[..])
            );
            x_free(r);
            let s = x_realloc(std::ptr::null_mut(), 3);
            assert_eq!(x_size(s), 3);
            x_free(s);
            assert_eq!((x_roundup(1), x_roundup(8), x_roundup(9)), (8, 8, 16));
        }
    }

    /// Only from a process that has not used SQLite yet: the test binary has.
    #[test]
    fn refused_once_sqlite_is_in_use() {
        rusqlite::Connection::open_in_memory().unwrap();
        assert!(!use_global_allocator());
    }
}
