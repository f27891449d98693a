//! Argument and reply types of every command, with qemu-ga's member names (`qga/qapi-schema.json`
//! of QEMU 7.2, plus `guest-get-load` and `guest-network-get-route` as later versions define them)
//! and xenplug's own.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigDoc, ConfigError, NoCloudSeed};
use crate::message::ErrorBody;

/// Arguments of `guest-sync` / `guest-sync-delimited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncArgs {
    /// The nonce (qemu-ga: a 64-bit integer; keep below 2^53 for JSON peers).
    pub id: i64,
}

/// Arguments naming a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserArgs {
    /// The user.
    pub username: String,
}

/// Arguments of `guest-ssh-add-authorized-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshAddArgs {
    /// The user.
    pub username: String,
    /// Public keys (authorized_keys lines).
    pub keys: Vec<String>,
    /// Replace the user's keys instead of adding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<bool>,
}

/// Arguments of `guest-ssh-remove-authorized-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshRemoveArgs {
    /// The user.
    pub username: String,
    /// Keys to remove.
    pub keys: Vec<String>,
}

/// Arguments of `guest-set-user-password`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPasswordArgs {
    /// The user (must exist).
    pub username: String,
    /// Base64 of the password (or of its crypt(3) hash when `crypted`).
    pub password: String,
    /// The password is already a crypt(3) hash.
    pub crypted: bool,
}

/// `guest-shutdown` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownMode {
    /// Power off (default).
    #[default]
    Powerdown,
    /// Halt.
    Halt,
    /// Reboot.
    Reboot,
}

/// Arguments of `guest-shutdown`. `mode` is a free string in qemu-ga's schema; an unknown one is
/// refused by the command itself ([`ShutdownArgs::mode`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShutdownArgs {
    /// `powerdown` (default), `halt` or `reboot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl ShutdownArgs {
    /// The mode, refused as qemu-ga refuses it.
    pub fn mode(&self) -> Result<ShutdownMode, ErrorBody> {
        match self.mode.as_deref() {
            None | Some("powerdown") => Ok(ShutdownMode::Powerdown),
            Some("halt") => Ok(ShutdownMode::Halt),
            Some("reboot") => Ok(ShutdownMode::Reboot),
            // Sic: qemu-ga's message has no closing parenthesis.
            Some(_) => Err(ErrorBody::generic(
                "mode is invalid (valid values are: halt|powerdown|reboot",
            )),
        }
    }
}

/// Arguments of `xenplug-apply-config`: exactly one of `config` (the canonical document) or
/// `nocloud` (NoCloud seed files as text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum ApplyConfigArgs {
    /// `{"config": {…}}` (boxed: the document is much larger than a seed).
    Config(Box<ConfigDoc>),
    /// `{"nocloud": {"meta-data": "…", "user-data": "…", "network-config": "…", "generation": N}}`.
    Nocloud(NoCloudSeed),
}

impl ApplyConfigArgs {
    /// The validated document.
    pub fn into_doc(self) -> Result<ConfigDoc, ConfigError> {
        match self {
            ApplyConfigArgs::Config(d) => {
                d.validate()?;
                Ok(*d)
            }
            ApplyConfigArgs::Nocloud(s) => ConfigDoc::from_nocloud(&s),
        }
    }
}

/// Arguments of `guest-set-time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SetTimeArgs {
    /// Nanoseconds since the epoch; absent: set the system time from the RTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<i64>,
}

/// Arguments of `guest-file-open`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOpenArgs {
    /// The file.
    pub path: String,
    /// An fopen(3) mode (`r` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// Arguments naming a file handle (`guest-file-close`, `guest-file-flush`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandleArgs {
    /// A handle from `guest-file-open`.
    pub handle: i64,
}

/// Arguments of `guest-file-read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReadArgs {
    /// A handle from `guest-file-open`.
    pub handle: i64,
    /// Bytes to read (4096 when absent, at most 48 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}

/// Arguments of `guest-file-write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWriteArgs {
    /// A handle from `guest-file-open`.
    pub handle: i64,
    /// The bytes, base64.
    #[serde(rename = "buf-b64")]
    pub buf_b64: String,
    /// How many of the decoded bytes to write (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}

/// `QGASeek`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeekName {
    /// From the start.
    Set,
    /// From the current position.
    Cur,
    /// From the end.
    End,
}

/// `GuestFileWhence`: qemu-ga's numeric code (0 set, 1 cur, 2 end) or a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Whence {
    /// A numeric code.
    Value(i64),
    /// A name.
    Name(SeekName),
}

/// Arguments of `guest-file-seek`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSeekArgs {
    /// A handle from `guest-file-open`.
    pub handle: i64,
    /// Offset.
    pub offset: i64,
    /// Relative to what.
    pub whence: Whence,
}

/// Arguments of `guest-fsfreeze-freeze-list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FreezeListArgs {
    /// Mount points to freeze (every local filesystem when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mountpoints: Option<Vec<String>>,
}

/// Arguments of `guest-fstrim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FstrimArgs {
    /// Smallest free range worth discarding, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<i64>,
}

/// `GuestLogicalProcessor` (a `guest-get-vcpus` entry, a `guest-set-vcpus` request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogicalProcessor {
    /// The CPU number.
    pub logical_id: i64,
    /// Online.
    pub online: bool,
    /// Whether it can be taken offline (filled on output, ignored on input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_offline: Option<bool>,
}

/// Arguments of `guest-set-vcpus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetVcpusArgs {
    /// The CPUs to change, in order.
    pub vcpus: Vec<LogicalProcessor>,
}

/// `GuestMemoryBlock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MemoryBlock {
    /// The block number (`memoryN` in sysfs).
    pub phys_index: u64,
    /// Online.
    pub online: bool,
    /// Whether it can be taken offline (filled on output, ignored on input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_offline: Option<bool>,
}

/// Arguments of `guest-set-memory-blocks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMemoryBlocksArgs {
    /// The blocks to change, in order.
    #[serde(rename = "mem-blks")]
    pub mem_blks: Vec<MemoryBlock>,
}

/// `GuestExecCaptureOutputMode` (QEMU 8.0; 7.2 takes only the boolean).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// Nothing.
    None,
    /// stdout only.
    Stdout,
    /// stderr only.
    Stderr,
    /// Both, apart.
    Separated,
    /// Both, into `out-data`.
    Merged,
}

/// `GuestExecCaptureOutput`: a boolean (both streams, apart) or a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CaptureOutput {
    /// `true`: separated; `false`: none.
    Flag(bool),
    /// A mode.
    Mode(CaptureMode),
}

impl CaptureOutput {
    /// The mode this stands for.
    pub fn mode(self) -> CaptureMode {
        match self {
            CaptureOutput::Flag(true) => CaptureMode::Separated,
            CaptureOutput::Flag(false) => CaptureMode::None,
            CaptureOutput::Mode(m) => m,
        }
    }
}

/// Arguments of `guest-exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExecArgs {
    /// The program (searched in `PATH` when it has no `/`).
    pub path: String,
    /// Its arguments (after `argv[0]`, which is `path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg: Option<Vec<String>>,
    /// Its whole environment (`NAME=value`); absent: the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Bytes for its stdin, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_data: Option<String>,
    /// What to capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_output: Option<CaptureOutput>,
}

/// Arguments of `guest-exec-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecStatusArgs {
    /// A pid from `guest-exec`.
    pub pid: i64,
}

/// One entry of `guest-info`'s `supported_commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandInfo {
    /// Command name.
    pub name: String,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Whether it replies on success.
    #[serde(rename = "success-response")]
    pub success_response: bool,
}

/// `guest-info` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Agent version.
    pub version: String,
    /// Commands.
    pub supported_commands: Vec<CommandInfo>,
}

/// `guest-get-host-name` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostName {
    /// The kernel host name.
    #[serde(rename = "host-name")]
    pub host_name: String,
}

/// `guest-get-osinfo` reply (every member optional, as in qemu-ga).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OsInfo {
    /// `uname -r`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    /// `uname -v`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// `uname -m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// os-release `ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// os-release `NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// os-release `PRETTY_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
    /// os-release `VERSION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// os-release `VERSION_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// os-release `VARIANT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// os-release `VARIANT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_id: Option<String>,
}

/// One address of a [`NetworkInterface`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpAddress {
    /// The address.
    #[serde(rename = "ip-address")]
    pub ip_address: String,
    /// `ipv4` or `ipv6`.
    #[serde(rename = "ip-address-type")]
    pub ip_address_type: String,
    /// Prefix length.
    pub prefix: u8,
}

/// Interface counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NetworkStats {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errs: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errs: u64,
    /// Sent packets dropped.
    pub tx_dropped: u64,
}

/// One entry of `guest-network-get-interfaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NetworkInterface {
    /// Interface name.
    pub name: String,
    /// MAC address (`00:00:00:00:00:00` for loopback, as qemu-ga reports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_address: Option<String>,
    /// Addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_addresses: Option<Vec<IpAddress>>,
    /// Counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistics: Option<NetworkStats>,
}

/// `guest-ssh-get-authorized-keys` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizedKeys {
    /// The keys.
    pub keys: Vec<String>,
}

/// `xenplug-apply-config` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApplyResult {
    /// The applied document's instance id.
    pub instance_id: String,
    /// The applied generation.
    pub generation: u64,
    /// False when this instance id and generation were already applied (nothing was done).
    pub applied: bool,
    /// What changed, one short item per change (`hostname`, `file /etc/hostname`, …).
    pub changes: Vec<String>,
}

/// `xenplug-get-config-generation` reply; both members absent when nothing was ever applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ConfigGeneration {
    /// Instance id of the last applied document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Its generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// `guest-file-read` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRead {
    /// Bytes read.
    pub count: i64,
    /// The bytes, base64.
    #[serde(rename = "buf-b64")]
    pub buf_b64: String,
    /// End of file reached.
    pub eof: bool,
}

/// `guest-file-write` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWrite {
    /// Bytes written.
    pub count: i64,
    /// End of file reached.
    pub eof: bool,
}

/// `guest-file-seek` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSeek {
    /// The position after seeking.
    pub position: i64,
    /// End of file reached.
    pub eof: bool,
}

/// `guest-fsfreeze-status` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FreezeStatus {
    /// Not frozen.
    Thawed,
    /// Frozen by this agent.
    Frozen,
}

/// One path of a `guest-fstrim` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrimResult {
    /// The mount point.
    pub path: String,
    /// Bytes trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trimmed: Option<i64>,
    /// The minimum the filesystem used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<i64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `guest-fstrim` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrimResponse {
    /// One entry per filesystem.
    pub paths: Vec<TrimResult>,
}

/// `GuestPCIAddress` (every member -1 when the disk is not on PCI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciAddress {
    /// Domain.
    pub domain: i64,
    /// Bus.
    pub bus: i64,
    /// Slot.
    pub slot: i64,
    /// Function.
    pub function: i64,
}

impl PciAddress {
    /// "No PCI address" as qemu-ga writes it.
    pub const NONE: PciAddress = PciAddress {
        domain: -1,
        bus: -1,
        slot: -1,
        function: -1,
    };
}

/// `GuestDiskAddress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskAddress {
    /// The controller's PCI address.
    pub pci_controller: PciAddress,
    /// `GuestDiskBusType`: `ide`, `scsi`, `virtio`, `xen`, `sata`, `nvme`, `usb`, `unknown`, …
    pub bus_type: String,
    /// Bus.
    pub bus: i64,
    /// Target.
    pub target: i64,
    /// Unit.
    pub unit: i64,
    /// Serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Device node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// `GuestDiskInfo` (a `guest-get-disks` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Device node.
    pub name: String,
    /// A partition rather than a whole disk.
    pub partition: bool,
    /// What it is built on (a partition: its disk; a device-mapper or md device: its members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Vec<String>>,
    /// Hardware address (not for virtual devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<DiskAddress>,
    /// Device-mapper name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// `GuestFilesystemInfo` (a `guest-get-fsinfo` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FilesystemInfo {
    /// The block device's name (`vda1`, `dm-0`, `xvda1`).
    pub name: String,
    /// Mount point.
    pub mountpoint: String,
    /// Filesystem type.
    #[serde(rename = "type")]
    pub fs_type: String,
    /// Bytes used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// Bytes an unprivileged user can have (used + available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// The disks it lies on.
    pub disk: Vec<DiskAddress>,
}

/// `GuestMemoryBlockResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MemoryBlockResponse {
    /// The block.
    pub phys_index: u64,
    /// `success`, `not-found`, `operation-not-supported` or `operation-failed`.
    pub response: String,
    /// errno, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
}

/// `guest-get-memory-block-info` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBlockInfo {
    /// Block size in bytes.
    pub size: u64,
}

/// `guest-exec` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecPid {
    /// The child's pid.
    pub pid: i64,
}

/// `guest-exec-status` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ExecStatus {
    /// The process ended (and its output was collected).
    pub exited: bool,
    /// Its exit code, when it exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exitcode: Option<i64>,
    /// The signal that killed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i64>,
    /// Captured stdout, base64 (only when captured and not empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_data: Option<String>,
    /// Captured stderr, base64 (only when captured and not empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err_data: Option<String>,
    /// stdout went over the capture limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_truncated: Option<bool>,
    /// stderr went over the capture limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err_truncated: Option<bool>,
}

/// `GuestUser` (a `guest-get-users` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct User {
    /// User name.
    pub user: String,
    /// Earliest login of this user, seconds since the epoch.
    pub login_time: f64,
    /// Logon domain (Windows only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// `guest-get-timezone` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timezone {
    /// Zone abbreviation in force now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Seconds east of UTC.
    pub offset: i64,
}

/// `GuestDiskStats`: every member optional (older kernels have fewer fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(missing_docs)]
pub struct DiskStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_sectors: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ios: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_merges: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_sectors: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_ios: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_merges: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard_sectors: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard_ios: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard_merges: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_ios: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ticks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_ticks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard_ticks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_ticks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ios_pgr: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ticks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_ticks: Option<u64>,
}

/// `GuestDiskStatsInfo` (a `guest-get-diskstats` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStatsInfo {
    /// Device name.
    pub name: String,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Counters.
    pub stats: DiskStats,
}

/// `GuestCpuStats` of type `linux` (a `guest-get-cpustats` entry), times in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct CpuStats {
    /// Always `linux`.
    #[serde(rename = "type")]
    pub kind: String,
    pub cpu: i64,
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iowait: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub softirq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steal: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guestnice: Option<u64>,
}

/// `guest-get-load` reply (QEMU 10.0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadAverage {
    /// 1-minute load average.
    pub load1m: f64,
    /// 5-minute load average.
    pub load5m: f64,
    /// 15-minute load average.
    pub load15m: f64,
}

/// `GuestNetworkRoute` (a `guest-network-get-route` entry, QEMU 9.1): the kernel's
/// `/proc/net/route` and `/proc/net/ipv6_route` rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct NetworkRoute {
    pub iface: String,
    pub destination: String,
    pub metric: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irtt: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refcnt: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "use")]
    pub use_: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desprefixlen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srcprefixlen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nexthop: Option<String>,
    pub version: i64,
}

/// The guest's state as xenplug-agent publishes it: in xenstore (`data/os_*`, `attr/vif/…`,
/// `data/meminfo_*`) and to a subscribed dom0 peer as `xenplug-guest-state` events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestState {
    /// os-release `PRETTY_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_name: Option<String>,
    /// os-release `ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_distro: Option<String>,
    /// First component of os-release `VERSION_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_majorver: Option<String>,
    /// Second component of os-release `VERSION_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_minorver: Option<String>,
    /// `uname -r`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_uname: Option<String>,
    /// The kernel host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `MemTotal`, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meminfo_total: Option<u64>,
    /// `MemAvailable` (or `MemFree`), KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meminfo_free: Option<u64>,
    /// One entry per interface: Xen vifs (matched by MAC to `device/vif/<devid>/mac`) and, for
    /// the dom0 peer, the guest's other interfaces with a MAC.
    #[serde(default)]
    pub interfaces: Vec<GuestInterface>,
}

/// One interface of a [`GuestState`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestInterface {
    /// The guest's name for it.
    pub name: String,
    /// MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The vif's devid, when it is a Xen vif.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vif: Option<u32>,
    /// IPv4 addresses.
    #[serde(default)]
    pub ipv4: Vec<String>,
    /// IPv6 addresses.
    #[serde(default)]
    pub ipv6: Vec<String>,
}
