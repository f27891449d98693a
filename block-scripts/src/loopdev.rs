//! Loop devices through the kernel API (never `losetup` as a subprocess).
//!
//! Attaching is race-free against every other loop user (udisks, `losetup`, other hotplug
//! scripts): ask `/dev/loop-control` for a free device (`LOOP_CTL_GET_FREE`), open it with
//! `O_EXCL` (which makes the kernel refuse a second exclusive opener while we configure it), and
//! bind the backing file with one `LOOP_CONFIGURE`. When another process wins the device between
//! those steps the open or the configure fails with `EBUSY` and we take the next free device, a
//! bounded number of times. Kernels older than 5.8 lack `LOOP_CONFIGURE` (`ENOTTY`/`EINVAL`); there
//! `LOOP_SET_FD` + `LOOP_SET_STATUS64` are used on the same exclusively-opened device.
//!
//! Devices are attached the way `losetup` does by default: no auto-clear (the device lives until
//! it is detached), no partition scan, `lo_file_name` set to the backing path, read-only when
//! asked (the backing file is then also opened read-only).
//!
//! Enumeration reads each bound device's backing `(st_dev, st_ino)` with `LOOP_GET_STATUS64`,
//! which stays exact when the backing file was renamed or deleted (unlike parsing `losetup -a`).
//!
//! **Recording the intent.** [`LoopOps::attach_with_intent`] calls back, after the device is
//! claimed (`O_EXCL`) and before it is bound, with the device and its current disk sequence
//! number ([`Binding`]); the block scripts save their state record there, durably, so a SIGKILL
//! at any later instant leaves a record naming the device (`diskseq` grows on every bind: a
//! bound device whose sequence number is higher than the recorded one was bound after the
//! record). A callback error aborts the attach before anything is bound.
//!
//! [`LoopOps`] is the narrow trait the block scripts apply through; [`KernelLoops`] is the real
//! implementation.

use crate::devnum::DevNum;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// `LO_FLAGS_READ_ONLY` (linux/loop.h).
pub const LO_FLAGS_READ_ONLY: u32 = 1;
/// `LO_FLAGS_AUTOCLEAR` (linux/loop.h).
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` from linux/loop.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

impl LoopInfo64 {
    fn zeroed() -> Self {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }
}

/// `struct loop_config` from linux/loop.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

// Sizes fixed by the kernel ABI.
const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

mod ioctl {
    use super::{LoopConfig, LoopInfo64};
    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
    nix::ioctl_write_int_bad!(loop_ctl_add, 0x4C80);
    nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
    nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
    nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
    nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
    nix::ioctl_read_bad!(loop_get_status64, 0x4C05, LoopInfo64);
    // BLKGETDISKSEQ = _IOR(0x12, 128, __u64)
    nix::ioctl_read!(blk_get_diskseq, 0x12, 128, u64);
}

/// What a loop device is backed by: the backing file's `st_dev` and `st_ino`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backing {
    /// Device of the filesystem holding the backing file.
    pub dev: DevNum,
    /// Inode number of the backing file.
    pub ino: u64,
}

impl Backing {
    /// The identity of an open or stat'ed file.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Backing {
            dev: DevNum::from_dev_t(meta.dev()),
            ino: meta.ino(),
        }
    }
}

/// A loop device this process just attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// N of `/dev/loopN`.
    pub number: u32,
    /// The device node, e.g. `/dev/loop3`.
    pub path: PathBuf,
    /// The device's own number (major 7; the minor depends on `max_part`).
    pub devnum: DevNum,
    /// The kernel's disk sequence number of this attachment (Linux ≥ 5.15), which changes on
    /// every attach: it tells our attachment apart from a later one reusing the same device.
    pub diskseq: Option<u64>,
    /// The backing file's identity.
    pub backing: Backing,
    /// Attached read-only.
    pub read_only: bool,
}

/// A loop device claimed exclusively and about to be bound (see [`LoopOps::attach_with_intent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// N of `/dev/loopN`.
    pub number: u32,
    /// The device node.
    pub path: PathBuf,
    /// The device's own number.
    pub devnum: DevNum,
    /// Its disk sequence number now, before the bind (Linux ≥ 5.15); the bind raises it.
    pub diskseq_before: Option<u64>,
    /// The identity of the file about to be bound (the one opened, whatever its path names now).
    pub backing: Backing,
}

/// A bound loop device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopStatus {
    /// N of `/dev/loopN`.
    pub number: u32,
    /// The device node.
    pub path: PathBuf,
    /// The device's own number.
    pub devnum: DevNum,
    /// Backing file identity (`lo_device`, `lo_inode`).
    pub backing: Backing,
    /// `lo_file_name` (the path given at attach time, at most 63 bytes).
    pub file_name: PathBuf,
    /// `LO_FLAGS_READ_ONLY`.
    pub read_only: bool,
    /// `LO_FLAGS_AUTOCLEAR`.
    pub autoclear: bool,
    /// Disk sequence number, when the kernel has it.
    pub diskseq: Option<u64>,
}

/// What [`LoopOps::detach`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detached {
    /// The device was unbound.
    Cleared,
    /// The device is still open elsewhere (e.g. by blkback); the kernel set auto-clear and will
    /// unbind it at the last close.
    Deferred,
    /// The device was not bound (already detached).
    NotBound,
    /// The device node does not exist.
    NoDevice,
}

/// A failed loop operation.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The backing file cannot be opened for writing (read-only file or filesystem).
    #[error("{path}: cannot open read-write: {source}")]
    ReadOnlyBacking {
        /// The backing file.
        path: PathBuf,
        /// The open error.
        source: io::Error,
    },
    /// The intent callback refused (nothing was bound).
    #[error("{0}")]
    Intent(String),
    /// No free loop device could be claimed within the retry bound.
    #[error("failed to find an unused loop device after {attempts} attempts (last: {last})")]
    NoFreeDevice {
        /// Attempts made.
        attempts: u32,
        /// The last reason.
        last: String,
    },
    /// A system call failed.
    #[error("{what} {}: {source}", path.display())]
    Sys {
        /// The operation.
        what: &'static str,
        /// The object operated on.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl LoopError {
    fn sys(what: &'static str, path: &Path, source: impl Into<io::Error>) -> Self {
        LoopError::Sys {
            what,
            path: path.to_path_buf(),
            source: source.into(),
        }
    }
}

/// What [`LoopOps::attach_with_intent`] calls before binding a device.
pub type Intent<'a> = dyn FnMut(&Binding) -> Result<(), String> + 'a;

/// Loop device operations the block scripts need.
pub trait LoopOps {
    /// Attach `file` to a free loop device (read-only when `read_only`), calling `intent` with
    /// each device claimed, before it is bound (a later device is tried when another process
    /// wins this one; `intent` is then called again). An `intent` error aborts with
    /// [`LoopError::Intent`], nothing bound.
    fn attach_with_intent(
        &self,
        file: &Path,
        read_only: bool,
        intent: &mut Intent<'_>,
    ) -> Result<Attached, LoopError>;
    /// Attach `file` to a free loop device (read-only when `read_only`).
    fn attach(&self, file: &Path, read_only: bool) -> Result<Attached, LoopError> {
        self.attach_with_intent(file, read_only, &mut |_| Ok(()))
    }
    /// Detach a loop device (its node path).
    fn detach(&self, device: &Path) -> Result<Detached, LoopError>;
    /// The status of one loop device; `None` when it is not bound or does not exist.
    fn status(&self, device: &Path) -> Result<Option<LoopStatus>, LoopError>;
    /// Every bound loop device.
    fn list(&self) -> Result<Vec<LoopStatus>, LoopError>;
}

/// The real kernel loop driver.
#[derive(Debug, Clone)]
pub struct KernelLoops {
    /// Where device nodes live (`/dev`).
    pub dev_dir: PathBuf,
    /// sysfs block class (`/sys/block`), for enumeration.
    pub sys_block: PathBuf,
    /// How many devices to try before giving up when other processes keep winning them.
    pub max_attempts: u32,
}

impl Default for KernelLoops {
    fn default() -> Self {
        KernelLoops {
            dev_dir: PathBuf::from("/dev"),
            sys_block: PathBuf::from("/sys/block"),
            max_attempts: 64,
        }
    }
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Parse `loopN` into N.
pub fn loop_number(name: &OsStr) -> Option<u32> {
    let s = name.to_str()?;
    let digits = s.strip_prefix("loop")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn file_name_bytes(path: &Path) -> [u8; LO_NAME_SIZE] {
    let mut name = [0u8; LO_NAME_SIZE];
    let bytes = path.as_os_str().as_bytes();
    let n = bytes.len().min(LO_NAME_SIZE - 1);
    name[..n].copy_from_slice(&bytes[..n]);
    name
}

fn diskseq_of(dev: &File) -> Option<u64> {
    let mut seq = 0u64;
    // SAFETY: BLKGETDISKSEQ writes one u64 through the pointer, which points at a live local; the
    // fd is open for the duration of the call.
    match unsafe { ioctl::blk_get_diskseq(dev.as_raw_fd(), &mut seq) } {
        Ok(_) => Some(seq),
        Err(_) => None,
    }
}

enum Claim {
    Won(Attached),
    Lost(String),
}

impl KernelLoops {
    fn device_path(&self, n: u32) -> PathBuf {
        self.dev_dir.join(format!("loop{n}"))
    }

    fn open_control(&self) -> Result<File, LoopError> {
        let path = self.dev_dir.join("loop-control");
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| LoopError::sys("open", &path, e))
    }

    /// Make sure `/dev/loopN` exists: devtmpfs creates it synchronously; without devtmpfs
    /// (some containers) create the node from sysfs' `dev`. `None` when the device is not
    /// there at all: another attacher's `LOOP_CTL_ADD` of it has not registered it yet (ours
    /// got `EEXIST` meanwhile), or it was just removed.
    fn ensure_node(&self, n: u32) -> Result<Option<PathBuf>, LoopError> {
        let path = self.device_path(n);
        if path.exists() {
            return Ok(Some(path));
        }
        let sys_dev = self.sys_block.join(format!("loop{n}/dev"));
        let text = match std::fs::read_to_string(&sys_dev) {
            Ok(t) => t,
            // Not (or no longer) registered: not a device to claim now, unless devtmpfs has
            // made its node meanwhile (the device is being registered right now).
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(path.exists().then_some(path));
            }
            Err(e) => return Err(LoopError::sys("read", &sys_dev, e)),
        };
        let num = DevNum::parse_decimal(&text).ok_or_else(|| {
            LoopError::sys(
                "parse",
                &sys_dev,
                io::Error::new(io::ErrorKind::InvalidData, text.trim().to_string()),
            )
        })?;
        match nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o660),
            libc::makedev(num.major, num.minor),
        ) {
            Ok(()) => Ok(Some(path)),
            Err(nix::errno::Errno::EEXIST) => Ok(Some(path)),
            Err(e) => Err(LoopError::sys("mknod", &path, e)),
        }
    }

    fn try_claim(
        &self,
        n: u32,
        backing: &File,
        backing_path: &Path,
        read_only: bool,
        intent: &mut Intent<'_>,
    ) -> Result<Claim, LoopError> {
        let Some(path) = self.ensure_node(n)? else {
            return Ok(Claim::Lost(format!(
                "loop{n}: not registered yet (being added)"
            )));
        };
        let dev = match OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            // Another process holds it exclusively (it is configuring it right now).
            Err(e) if errno_of(&e) == libc::EBUSY => {
                return Ok(Claim::Lost(format!("{}: busy", path.display())))
            }
            // Removed by LOOP_CTL_REMOVE between GET_FREE and open.
            Err(e) if matches!(errno_of(&e), libc::ENXIO | libc::ENOENT | libc::ENODEV) => {
                return Ok(Claim::Lost(format!("{}: {e}", path.display())))
            }
            Err(e) => return Err(LoopError::sys("open", &path, e)),
        };
        // Held exclusively, nobody else can bind it now (the kernel's bind claims the device
        // exclusively too). Bound already (someone won it between GET_FREE and our open)? Let
        // go at once: a bound device may be about to be mounted or formatted by its owner.
        let mut info = LoopInfo64::zeroed();
        // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64` into a live local with the
        // kernel's layout; the fd is open.
        match unsafe { ioctl::loop_get_status64(dev.as_raw_fd(), &mut info) } {
            Err(nix::errno::Errno::ENXIO) => {}
            Ok(_) => return Ok(Claim::Lost(format!("{}: bound meanwhile", path.display()))),
            Err(e) => return Err(LoopError::sys("LOOP_GET_STATUS64", &path, e)),
        }
        // Free and ours until we close it. Tell the caller what is about to happen.
        let binding = Binding {
            number: n,
            path: path.clone(),
            devnum: DevNum::from_dev_t(
                dev.metadata()
                    .map_err(|e| LoopError::sys("fstat", &path, e))?
                    .rdev(),
            ),
            diskseq_before: diskseq_of(&dev),
            backing: Backing::of(
                &backing
                    .metadata()
                    .map_err(|e| LoopError::sys("fstat", backing_path, e))?,
            ),
        };
        intent(&binding).map_err(LoopError::Intent)?;
        let fd = u32::try_from(backing.as_raw_fd()).expect("open fds are non-negative");
        let mut info = LoopInfo64::zeroed();
        info.lo_flags = if read_only { LO_FLAGS_READ_ONLY } else { 0 };
        info.lo_file_name = file_name_bytes(backing_path);
        let config = LoopConfig {
            fd,
            block_size: 0,
            info,
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config` through the pointer, which points at
        // a live, fully initialised local with the kernel's layout (size asserted above); both fds
        // stay open for the call.
        let configured = unsafe { ioctl::loop_configure(dev.as_raw_fd(), &config) };
        match configured {
            Ok(_) => {}
            Err(nix::errno::Errno::EBUSY) => {
                return Ok(Claim::Lost(format!("{}: bound meanwhile", path.display())))
            }
            Err(nix::errno::Errno::ENOTTY) | Err(nix::errno::Errno::EINVAL) => {
                // Pre-5.8 kernel: two-step attach on the device we hold exclusively.
                // SAFETY: LOOP_SET_FD takes the backing fd by value; both fds are open.
                match unsafe { ioctl::loop_set_fd(dev.as_raw_fd(), backing.as_raw_fd()) } {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EBUSY) => {
                        return Ok(Claim::Lost(format!("{}: bound meanwhile", path.display())))
                    }
                    Err(e) => return Err(LoopError::sys("LOOP_SET_FD", &path, e)),
                }
                // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64` from a live local
                // with the kernel's layout; the fd is open.
                if let Err(e) = unsafe { ioctl::loop_set_status64(dev.as_raw_fd(), &config.info) } {
                    // SAFETY: LOOP_CLR_FD takes no argument; the fd is open.
                    let _ = unsafe { ioctl::loop_clr_fd(dev.as_raw_fd()) };
                    return Err(LoopError::sys("LOOP_SET_STATUS64", &path, e));
                }
            }
            Err(e) => return Err(LoopError::sys("LOOP_CONFIGURE", &path, e)),
        }
        let meta = dev
            .metadata()
            .map_err(|e| LoopError::sys("fstat", &path, e))?;
        let backing_meta = backing
            .metadata()
            .map_err(|e| LoopError::sys("fstat", backing_path, e))?;
        Ok(Claim::Won(Attached {
            number: n,
            devnum: DevNum::from_dev_t(meta.rdev()),
            diskseq: diskseq_of(&dev),
            backing: Backing::of(&backing_meta),
            read_only,
            path,
        }))
    }

    fn status_of_open(
        &self,
        n: u32,
        path: &Path,
        dev: &File,
    ) -> Result<Option<LoopStatus>, LoopError> {
        let mut info = LoopInfo64::zeroed();
        // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64` into a live local with the
        // kernel's layout; the fd is open.
        match unsafe { ioctl::loop_get_status64(dev.as_raw_fd(), &mut info) } {
            Ok(_) => {}
            Err(nix::errno::Errno::ENXIO) => return Ok(None),
            Err(e) => return Err(LoopError::sys("LOOP_GET_STATUS64", path, e)),
        }
        let meta = dev
            .metadata()
            .map_err(|e| LoopError::sys("fstat", path, e))?;
        let name_len = info
            .lo_file_name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(LO_NAME_SIZE);
        Ok(Some(LoopStatus {
            number: n,
            path: path.to_path_buf(),
            devnum: DevNum::from_dev_t(meta.rdev()),
            backing: Backing {
                dev: DevNum::from_kernel_encoded(info.lo_device),
                ino: info.lo_inode,
            },
            file_name: PathBuf::from(OsStr::from_bytes(&info.lo_file_name[..name_len])),
            read_only: info.lo_flags & LO_FLAGS_READ_ONLY != 0,
            autoclear: info.lo_flags & LO_FLAGS_AUTOCLEAR != 0,
            diskseq: diskseq_of(dev),
        }))
    }

    fn open_device(path: &Path) -> Result<Option<File>, LoopError> {
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => Ok(Some(f)),
            Err(e) if matches!(errno_of(&e), libc::ENOENT | libc::ENXIO | libc::ENODEV) => Ok(None),
            Err(e) => Err(LoopError::sys("open", path, e)),
        }
    }
}

impl LoopOps for KernelLoops {
    fn attach_with_intent(
        &self,
        file: &Path,
        read_only: bool,
        intent: &mut Intent<'_>,
    ) -> Result<Attached, LoopError> {
        let backing = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(file)
            .map_err(|e| {
                if !read_only && matches!(errno_of(&e), libc::EROFS | libc::EACCES | libc::EPERM) {
                    LoopError::ReadOnlyBacking {
                        path: file.to_path_buf(),
                        source: e,
                    }
                } else {
                    LoopError::sys("open", file, e)
                }
            })?;
        let control = self.open_control()?;
        let control_path = self.dev_dir.join("loop-control");
        let mut last = String::from("none");
        let mut lost: Option<u32> = None;
        for attempt in 0..self.max_attempts {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument; the control fd is open.
            let free = unsafe { ioctl::loop_ctl_get_free(control.as_raw_fd()) }
                .map_err(|e| LoopError::sys("LOOP_CTL_GET_FREE", &control_path, e))?;
            let free = u32::try_from(free).expect("loop numbers are non-negative");
            // GET_FREE names the lowest unbound device, so every attacher racing us is told the
            // same one until its winner has bound it. After losing a device, look above it
            // instead (adding the device if the kernel has none there yet): racing attachers
            // spread over distinct devices rather than queueing on one.
            let n = match lost {
                Some(l) if free <= l => {
                    let n = l + 1;
                    // SAFETY: LOOP_CTL_ADD takes the device number by value; the control fd is
                    // open. EEXIST (someone made it already) is what we want too.
                    match unsafe { ioctl::loop_ctl_add(control.as_raw_fd(), n as libc::c_int) } {
                        Ok(_) | Err(nix::errno::Errno::EEXIST) => n,
                        // Cannot add devices (a max_loop limit, say): wait for GET_FREE's.
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(
                                u64::from(attempt.min(10)) + 1,
                            ));
                            free
                        }
                    }
                }
                _ => free,
            };
            match self.try_claim(n, &backing, file, read_only, intent)? {
                Claim::Won(attached) => return Ok(attached),
                Claim::Lost(why) => {
                    last = why;
                    lost = Some(n);
                }
            }
        }
        Err(LoopError::NoFreeDevice {
            attempts: self.max_attempts,
            last,
        })
    }

    fn detach(&self, device: &Path) -> Result<Detached, LoopError> {
        let Some(dev) = Self::open_device(device)? else {
            return Ok(Detached::NoDevice);
        };
        // SAFETY: LOOP_CLR_FD takes no argument; the fd is open.
        match unsafe { ioctl::loop_clr_fd(dev.as_raw_fd()) } {
            Ok(_) => {}
            Err(nix::errno::Errno::ENXIO) => return Ok(Detached::NotBound),
            Err(nix::errno::Errno::EBUSY) => {
                // Old kernels refuse while others hold it open: ask for auto-clear instead.
                let mut info = LoopInfo64::zeroed();
                // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64` into a live local.
                unsafe { ioctl::loop_get_status64(dev.as_raw_fd(), &mut info) }
                    .map_err(|e| LoopError::sys("LOOP_GET_STATUS64", device, e))?;
                info.lo_flags |= LO_FLAGS_AUTOCLEAR;
                // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64` from a live local.
                unsafe { ioctl::loop_set_status64(dev.as_raw_fd(), &info) }
                    .map_err(|e| LoopError::sys("LOOP_SET_STATUS64", device, e))?;
                return Ok(Detached::Deferred);
            }
            Err(e) => return Err(LoopError::sys("LOOP_CLR_FD", device, e)),
        }
        // Recent kernels turn a clear of a device others hold open into auto-clear.
        let n = device.file_name().and_then(loop_number).unwrap_or(0);
        match self.status_of_open(n, device, &dev)? {
            Some(st) if st.autoclear => Ok(Detached::Deferred),
            _ => Ok(Detached::Cleared),
        }
    }

    fn status(&self, device: &Path) -> Result<Option<LoopStatus>, LoopError> {
        let Some(n) = device.file_name().and_then(loop_number) else {
            return Ok(None);
        };
        let Some(dev) = Self::open_device(device)? else {
            return Ok(None);
        };
        self.status_of_open(n, device, &dev)
    }

    fn list(&self) -> Result<Vec<LoopStatus>, LoopError> {
        let entries = std::fs::read_dir(&self.sys_block)
            .map_err(|e| LoopError::sys("read_dir", &self.sys_block, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| LoopError::sys("read_dir", &self.sys_block, e))?;
            let Some(n) = loop_number(&entry.file_name()) else {
                continue;
            };
            // `loop/` exists only while the device is bound.
            if !entry.path().join("loop").exists() {
                continue;
            }
            let path = self.device_path(n);
            let Some(dev) = Self::open_device(&path)? else {
                continue;
            };
            if let Some(st) = self.status_of_open(n, &path, &dev)? {
                out.push(st);
            }
        }
        out.sort_by_key(|s| s.number);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_numbers() {
        assert_eq!(loop_number(OsStr::new("loop0")), Some(0));
        assert_eq!(loop_number(OsStr::new("loop123")), Some(123));
        assert_eq!(loop_number(OsStr::new("loop")), None);
        assert_eq!(loop_number(OsStr::new("loop-control")), None);
        assert_eq!(loop_number(OsStr::new("loop1p2")), None);
        assert_eq!(loop_number(OsStr::new("sda")), None);
    }

    #[test]
    fn a_device_not_registered_yet_is_none_and_a_bad_sysfs_entry_an_error() {
        let d = tempfile::tempdir().unwrap();
        let loops = KernelLoops {
            dev_dir: d.path().join("dev"),
            sys_block: d.path().join("sys"),
            max_attempts: 1,
        };
        std::fs::create_dir_all(&loops.dev_dir).unwrap();
        // Another attacher's LOOP_CTL_ADD of loop12 has not registered it: no node, no sysfs.
        assert!(loops.ensure_node(12).unwrap().is_none());
        // devtmpfs made the node meanwhile: that is the device.
        std::fs::write(loops.dev_dir.join("loop12"), "").unwrap();
        assert_eq!(
            loops.ensure_node(12).unwrap(),
            Some(loops.dev_dir.join("loop12"))
        );
        // Registered but unreadable as a device number: an error, not a device lost.
        std::fs::create_dir_all(loops.sys_block.join("loop13")).unwrap();
        std::fs::write(loops.sys_block.join("loop13/dev"), "garbage\n").unwrap();
        assert!(loops.ensure_node(13).is_err());
    }

    #[test]
    fn file_name_is_truncated_and_terminated() {
        let long = PathBuf::from(format!("/{}", "x".repeat(100)));
        let b = file_name_bytes(&long);
        assert_eq!(b[LO_NAME_SIZE - 1], 0);
        assert_eq!(b[0], b'/');
        assert_eq!(b[62], b'x');
        let short = file_name_bytes(Path::new("/a"));
        assert_eq!(&short[..3], b"/a\0");
    }
}
