//! The global allocator: mimalloc, asked for plain `mi_malloc` blocks whenever those are
//! aligned enough.
//!
//! `mimalloc::MiMalloc` passes every request to `mi_malloc_aligned`. For a block over 1 KiB
//! mimalloc 3 then takes its over-allocating path even at an alignment of 8 (it allocates
//! `size + align - 1` and marks the page as holding interior pointers): about 430
//! instructions per allocation against about 50 (callgrind, h2load -c64 -m10: two such
//! allocations per HTTP/2 request, among them each stream's boxed future). Every mimalloc
//! block is aligned to the machine word (its size classes are whole words), so up to that
//! alignment the plain calls are exact; above it the aligned ones serve (a 24-byte block is
//! only 8-aligned; tokio's cache-line aligned state).
//!
//! The `unsafe` here is the allocator's FFI edge: `GlobalAlloc` is an unsafe trait and
//! mimalloc's functions are C.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// The alignment of every block mimalloc hands out: a word (`MI_INTPTR_SIZE`).
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc, with the plain calls up to a word's alignment.
pub struct Mimalloc;

// SAFETY: every block comes from mimalloc with at least the layout's size and alignment
// (the plain calls only up to a word's alignment, which every mimalloc block has), and goes back
// to mimalloc (`mi_free` and `mi_realloc` take blocks of either kind).
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocating calls, as `new_block` needs them.
        unsafe { new_block(layout, mi_malloc, mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`, the zeroing calls.
        unsafe { new_block(layout, mi_zalloc, mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi_free(ptr.cast::<c_void>()) };
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: `ptr` came from mimalloc; the new block is word-aligned.
            unsafe { mi_realloc(ptr.cast::<c_void>(), new_size).cast() }
        } else {
            // SAFETY: `ptr` came from mimalloc; the alignment is a power of two.
            unsafe { mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast() }
        }
    }
}

/// A new block for `layout`: from `plain(size)` when a word's alignment is enough (every
/// mimalloc block has it), else from `aligned(size, alignment)`. Always inlined: with
/// the two functions known at each call site, the calls are direct.
///
/// # Safety
/// `plain` and `aligned` are mimalloc's pair (`mi_malloc`/`mi_malloc_aligned`, or the
/// zeroing `mi_zalloc`/`mi_zalloc_aligned`).
#[allow(clippy::inline_always)] // the calls must stay direct on every allocation
#[inline(always)]
unsafe fn new_block(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    if layout.align() <= WORD {
        // SAFETY: any size; the block is word-aligned.
        unsafe { plain(layout.size()).cast() }
    } else {
        // SAFETY: the alignment is a power of two (a `Layout`'s).
        unsafe { aligned(layout.size(), layout.align()).cast() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_layouts_alignment_and_keep_their_bytes() {
        let heap = Mimalloc;
        for align in [1, 2, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 8, 24, 40, 1000, 1025, 1600, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).expect("a valid layout");
                // SAFETY: a non-zero size; the block is freed with the same allocator.
                unsafe {
                    let block = heap.alloc(layout);
                    assert!(!block.is_null());
                    assert_eq!(block as usize % align, 0, "size {size} align {align}");
                    block.write_bytes(0xab, size);
                    let grown = heap.realloc(block, layout, size * 2);
                    assert_eq!(
                        grown as usize % align,
                        0,
                        "realloc size {size} align {align}"
                    );
                    assert!((0..size).all(|i| *grown.add(i) == 0xab));
                    heap.dealloc(
                        grown,
                        Layout::from_size_align(size * 2, align).expect("valid"),
                    );
                    let zeroed = heap.alloc_zeroed(layout);
                    assert_eq!(zeroed as usize % align, 0);
                    assert!((0..size).all(|i| *zeroed.add(i) == 0));
                    heap.dealloc(zeroed, layout);
                }
            }
        }
    }
}
