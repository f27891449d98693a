//! The command implementations that keep state or touch the kernel, one module per area; the
//! dispatch over them is [`crate::agent::Agent::handle`].

pub mod exec;
pub mod file;
pub mod fs;
pub mod sys;

/// The C library's description of an errno (`strerror`), as qemu-ga's messages carry it.
pub fn strerror(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// [`strerror`] of an I/O error (its own text when it has no errno).
pub fn io_desc(e: &std::io::Error) -> String {
    e.raw_os_error().map_or_else(|| e.to_string(), strerror)
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_wording() {
        assert_eq!(super::strerror(libc::EBADF), "Bad file descriptor");
        assert_eq!(super::strerror(libc::ENOENT), "No such file or directory");
    }
}
