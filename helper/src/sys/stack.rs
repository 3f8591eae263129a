//! Stacks for children cloned with `CLONE_VM`: an anonymous mapping with
//! a `PROT_NONE` guard page below it, so an overflow faults instead of
//! writing into the memory the child shares with its parent.
#![allow(unsafe_code)]

use nix::errno::Errno;

/// A child's stack, unmapped on drop.
pub struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    /// `size` usable bytes above the guard page.
    pub fn new(size: usize) -> nix::Result<ChildStack> {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)?
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(4096);
        let len = size + page;
        // SAFETY: a fresh anonymous private mapping at an address of the
        // kernel's choosing; it aliases nothing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of our own fresh mapping, which nothing
        // uses yet.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(Errno::last());
        }
        Ok(stack)
    }

    /// The highest address: stacks grow down. Page-aligned, so 16-byte
    /// aligned as the ABIs want.
    pub fn top(&self) -> *mut libc::c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; the owner drops it only
        // after the child that ran on it has exec'd or exited (CLONE_VFORK
        // returns only then).
        unsafe { libc::munmap(self.base, self.len) };
    }
}
