//! Errors of the engine: a message for the Perl layer to croak with.

use std::fmt;
use std::io;

/// An engine error. The message is what the user sees (after " at FILE line N." from croak),
/// so it names the file, page or option involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    msg: String,
}

impl Error {
    pub fn new(msg: impl Into<String>) -> Error {
        Error { msg: msg.into() }
    }

    /// `what: <strerror of err>`, upstream's style for system call failures.
    pub fn os(what: impl fmt::Display, err: &io::Error) -> Error {
        let text = match err.raw_os_error() {
            // Plain strerror text, without Rust's " (os error N)" suffix.
            Some(code) => strerror(code),
            None => err.to_string(),
        };
        Error::new(format!("{what}: {text}"))
    }

    /// The last OS error (errno) for `what`.
    pub fn last_os(what: impl fmt::Display) -> Error {
        Error::os(what, &io::Error::last_os_error())
    }

    pub fn message(&self) -> &str {
        &self.msg
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// The C library's description of an errno value.
pub fn strerror(code: i32) -> String {
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: buf is writable for its whole length; the XSI strerror_r writes a NUL-terminated
    // string of at most buf.len() bytes into it.
    let rc = unsafe { libc::strerror_r(code, buf.as_mut_ptr(), buf.len()) };
    if rc != 0 {
        return format!("error {code}");
    }
    // SAFETY: strerror_r succeeded, so buf holds a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_error_reads_like_strerror() {
        let e = Error::os(
            "Open of share file /x failed",
            &io::Error::from_raw_os_error(2),
        );
        assert_eq!(
            e.message(),
            "Open of share file /x failed: No such file or directory"
        );
    }
}
