//! Typed commands: every qemu-ga command that means something on Linux (qemu-ga's names,
//! argument schemas and reply shapes: QEMU 7.2's `qga/qapi-schema.json`, plus `guest-get-load`
//! and `guest-network-get-route` from later versions) and xenplug's own commands (namespaced
//! `xenplug-…` per the QMP convention for downstream extensions).
//!
//! [`SPECS`] is the one table of commands: name, argument schema ([`schema`]) and whether a
//! successful call is answered. [`Command::from_request`] checks a request's arguments against
//! it with qemu-ga's wording, then decodes them into the typed arguments of [`types`].

pub mod schema;
pub mod types;

use serde_json::{Map, Value};

use crate::message::{ErrorBody, Request};
use schema::{opt, req, Member, Ty};
pub use types::*;

macro_rules! names {
    ($($(#[$m:meta])* $c:ident = $n:literal;)*) => {
        $($(#[$m])* pub const $c: &str = $n;)*
    };
}

names! {
    /// `guest-sync {id}`: echo `id` (an integer).
    GUEST_SYNC = "guest-sync";
    /// `guest-sync-delimited {id}`: echo `id`, reply preceded by `0xFF`.
    GUEST_SYNC_DELIMITED = "guest-sync-delimited";
    /// `guest-ping`: `{}`.
    GUEST_PING = "guest-ping";
    /// `guest-get-time`: nanoseconds since the epoch.
    GUEST_GET_TIME = "guest-get-time";
    /// `guest-set-time {time?}`.
    GUEST_SET_TIME = "guest-set-time";
    /// `guest-info`: [`AgentInfo`].
    GUEST_INFO = "guest-info";
    /// `guest-shutdown {mode?}`: no reply on success.
    GUEST_SHUTDOWN = "guest-shutdown";
    /// `guest-file-open {path, mode?}`: a handle.
    GUEST_FILE_OPEN = "guest-file-open";
    /// `guest-file-close {handle}`.
    GUEST_FILE_CLOSE = "guest-file-close";
    /// `guest-file-read {handle, count?}`: [`FileRead`].
    GUEST_FILE_READ = "guest-file-read";
    /// `guest-file-write {handle, buf-b64, count?}`: [`FileWrite`].
    GUEST_FILE_WRITE = "guest-file-write";
    /// `guest-file-seek {handle, offset, whence}`: [`FileSeek`].
    GUEST_FILE_SEEK = "guest-file-seek";
    /// `guest-file-flush {handle}`.
    GUEST_FILE_FLUSH = "guest-file-flush";
    /// `guest-fsfreeze-status`: [`FreezeStatus`].
    GUEST_FSFREEZE_STATUS = "guest-fsfreeze-status";
    /// `guest-fsfreeze-freeze`: filesystems frozen.
    GUEST_FSFREEZE_FREEZE = "guest-fsfreeze-freeze";
    /// `guest-fsfreeze-freeze-list {mountpoints?}`: filesystems frozen.
    GUEST_FSFREEZE_FREEZE_LIST = "guest-fsfreeze-freeze-list";
    /// `guest-fsfreeze-thaw`: filesystems thawed.
    GUEST_FSFREEZE_THAW = "guest-fsfreeze-thaw";
    /// `guest-fstrim {minimum?}`: [`TrimResponse`].
    GUEST_FSTRIM = "guest-fstrim";
    /// `guest-suspend-disk`: no reply on success.
    GUEST_SUSPEND_DISK = "guest-suspend-disk";
    /// `guest-suspend-ram`: no reply on success.
    GUEST_SUSPEND_RAM = "guest-suspend-ram";
    /// `guest-suspend-hybrid`: no reply on success.
    GUEST_SUSPEND_HYBRID = "guest-suspend-hybrid";
    /// `guest-network-get-interfaces`: a list of [`NetworkInterface`].
    GUEST_NETWORK_GET_INTERFACES = "guest-network-get-interfaces";
    /// `guest-get-vcpus`: a list of [`LogicalProcessor`].
    GUEST_GET_VCPUS = "guest-get-vcpus";
    /// `guest-set-vcpus {vcpus}`: how many were processed.
    GUEST_SET_VCPUS = "guest-set-vcpus";
    /// `guest-get-disks`: a list of [`DiskInfo`].
    GUEST_GET_DISKS = "guest-get-disks";
    /// `guest-get-fsinfo`: a list of [`FilesystemInfo`].
    GUEST_GET_FSINFO = "guest-get-fsinfo";
    /// `guest-set-user-password {username, password, crypted}`.
    GUEST_SET_USER_PASSWORD = "guest-set-user-password";
    /// `guest-get-memory-blocks`: a list of [`MemoryBlock`].
    GUEST_GET_MEMORY_BLOCKS = "guest-get-memory-blocks";
    /// `guest-set-memory-blocks {mem-blks}`: a list of [`MemoryBlockResponse`].
    GUEST_SET_MEMORY_BLOCKS = "guest-set-memory-blocks";
    /// `guest-get-memory-block-info`: [`MemoryBlockInfo`].
    GUEST_GET_MEMORY_BLOCK_INFO = "guest-get-memory-block-info";
    /// `guest-exec-status {pid}`: [`ExecStatus`].
    GUEST_EXEC_STATUS = "guest-exec-status";
    /// `guest-exec {path, arg?, env?, input-data?, capture-output?}`: [`ExecPid`].
    GUEST_EXEC = "guest-exec";
    /// `guest-get-host-name`: [`HostName`].
    GUEST_GET_HOST_NAME = "guest-get-host-name";
    /// `guest-get-users`: a list of [`User`].
    GUEST_GET_USERS = "guest-get-users";
    /// `guest-get-timezone`: [`Timezone`].
    GUEST_GET_TIMEZONE = "guest-get-timezone";
    /// `guest-get-osinfo`: [`OsInfo`].
    GUEST_GET_OSINFO = "guest-get-osinfo";
    /// `guest-get-devices`: Windows only; registered and always disabled, as qemu-ga 7.2 on Linux.
    GUEST_GET_DEVICES = "guest-get-devices";
    /// `guest-ssh-get-authorized-keys {username}`: [`AuthorizedKeys`].
    GUEST_SSH_GET_AUTHORIZED_KEYS = "guest-ssh-get-authorized-keys";
    /// `guest-ssh-add-authorized-keys {username, keys, reset?}`.
    GUEST_SSH_ADD_AUTHORIZED_KEYS = "guest-ssh-add-authorized-keys";
    /// `guest-ssh-remove-authorized-keys {username, keys}`.
    GUEST_SSH_REMOVE_AUTHORIZED_KEYS = "guest-ssh-remove-authorized-keys";
    /// `guest-get-diskstats`: a list of [`DiskStatsInfo`].
    GUEST_GET_DISKSTATS = "guest-get-diskstats";
    /// `guest-get-cpustats`: a list of [`CpuStats`].
    GUEST_GET_CPUSTATS = "guest-get-cpustats";
    /// `guest-get-load` (QEMU 10.0): [`LoadAverage`].
    GUEST_GET_LOAD = "guest-get-load";
    /// `guest-network-get-route` (QEMU 9.1): a list of [`NetworkRoute`].
    GUEST_NETWORK_GET_ROUTE = "guest-network-get-route";
    /// `xenplug-apply-config {config} | {nocloud}`: [`ApplyResult`].
    XENPLUG_APPLY_CONFIG = "xenplug-apply-config";
    /// `xenplug-get-config-generation`: [`ConfigGeneration`].
    XENPLUG_GET_CONFIG_GENERATION = "xenplug-get-config-generation";
    /// `xenplug-get-guest-state`: [`GuestState`].
    XENPLUG_GET_GUEST_STATE = "xenplug-get-guest-state";
    /// `xenplug-subscribe-guest-state`: `{}`, then a [`GUEST_STATE_EVENT`] now and after every
    /// change, on this channel, until the next `guest-sync`/`guest-sync-delimited`.
    XENPLUG_SUBSCRIBE_GUEST_STATE = "xenplug-subscribe-guest-state";
}

/// The event a subscribed channel receives: `{"event": "xenplug-guest-state", "data": GuestState}`.
pub const GUEST_STATE_EVENT: &str = "xenplug-guest-state";

/// One command: its name, argument schema and whether success is answered.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Wire name.
    pub name: &'static str,
    /// Its arguments.
    pub args: &'static [Member],
    /// False for commands that send nothing on success (`guest-shutdown`, `guest-suspend-*`).
    pub success_response: bool,
}

const fn spec(name: &'static str, args: &'static [Member]) -> Spec {
    Spec {
        name,
        args,
        success_response: true,
    }
}

const fn no_reply(name: &'static str, args: &'static [Member]) -> Spec {
    Spec {
        name,
        args,
        success_response: false,
    }
}

const ID: &[Member] = &[req("id", Ty::Int)];
const USERNAME: &[Member] = &[req("username", Ty::Str)];
const HANDLE: &[Member] = &[req("handle", Ty::Int)];
const LOGICAL_PROCESSOR: &[Member] = &[
    req("logical-id", Ty::Int),
    req("online", Ty::Bool),
    opt("can-offline", Ty::Bool),
];
const MEMORY_BLOCK: &[Member] = &[
    req("phys-index", Ty::U64),
    req("online", Ty::Bool),
    opt("can-offline", Ty::Bool),
];
const WHENCE: Ty = Ty::Alternate(
    "GuestFileWhence",
    &[Ty::Int, Ty::Enum("QGASeek", &["set", "cur", "end"])],
);
const CAPTURE: Ty = Ty::Alternate(
    "GuestExecCaptureOutput",
    &[
        Ty::Bool,
        Ty::Enum(
            "GuestExecCaptureOutputMode",
            &["none", "stdout", "stderr", "separated", "merged"],
        ),
    ],
);

/// Every command xenplug-agent knows, in `guest-info` order.
pub const SPECS: &[Spec] = &[
    spec(GUEST_SYNC_DELIMITED, ID),
    spec(GUEST_SYNC, ID),
    spec(GUEST_PING, &[]),
    spec(GUEST_GET_TIME, &[]),
    spec(GUEST_SET_TIME, &[opt("time", Ty::Int)]),
    spec(GUEST_INFO, &[]),
    no_reply(GUEST_SHUTDOWN, &[opt("mode", Ty::Str)]),
    spec(
        GUEST_FILE_OPEN,
        &[req("path", Ty::Str), opt("mode", Ty::Str)],
    ),
    spec(GUEST_FILE_CLOSE, HANDLE),
    spec(
        GUEST_FILE_READ,
        &[req("handle", Ty::Int), opt("count", Ty::Int)],
    ),
    spec(
        GUEST_FILE_WRITE,
        &[
            req("handle", Ty::Int),
            req("buf-b64", Ty::Str),
            opt("count", Ty::Int),
        ],
    ),
    spec(
        GUEST_FILE_SEEK,
        &[
            req("handle", Ty::Int),
            req("offset", Ty::Int),
            req("whence", WHENCE),
        ],
    ),
    spec(GUEST_FILE_FLUSH, HANDLE),
    spec(GUEST_FSFREEZE_STATUS, &[]),
    spec(GUEST_FSFREEZE_FREEZE, &[]),
    spec(
        GUEST_FSFREEZE_FREEZE_LIST,
        &[opt("mountpoints", Ty::List(&Ty::Str))],
    ),
    spec(GUEST_FSFREEZE_THAW, &[]),
    spec(GUEST_FSTRIM, &[opt("minimum", Ty::Int)]),
    no_reply(GUEST_SUSPEND_DISK, &[]),
    no_reply(GUEST_SUSPEND_RAM, &[]),
    no_reply(GUEST_SUSPEND_HYBRID, &[]),
    spec(GUEST_NETWORK_GET_INTERFACES, &[]),
    spec(GUEST_GET_VCPUS, &[]),
    spec(
        GUEST_SET_VCPUS,
        &[req("vcpus", Ty::List(&Ty::Struct(LOGICAL_PROCESSOR)))],
    ),
    spec(GUEST_GET_DISKS, &[]),
    spec(GUEST_GET_FSINFO, &[]),
    spec(
        GUEST_SET_USER_PASSWORD,
        &[
            req("username", Ty::Str),
            req("password", Ty::Str),
            req("crypted", Ty::Bool),
        ],
    ),
    spec(GUEST_GET_MEMORY_BLOCKS, &[]),
    spec(
        GUEST_SET_MEMORY_BLOCKS,
        &[req("mem-blks", Ty::List(&Ty::Struct(MEMORY_BLOCK)))],
    ),
    spec(GUEST_GET_MEMORY_BLOCK_INFO, &[]),
    spec(GUEST_EXEC_STATUS, &[req("pid", Ty::Int)]),
    spec(
        GUEST_EXEC,
        &[
            req("path", Ty::Str),
            opt("arg", Ty::List(&Ty::Str)),
            opt("env", Ty::List(&Ty::Str)),
            opt("input-data", Ty::Str),
            opt("capture-output", CAPTURE),
        ],
    ),
    spec(GUEST_GET_HOST_NAME, &[]),
    spec(GUEST_GET_USERS, &[]),
    spec(GUEST_GET_TIMEZONE, &[]),
    spec(GUEST_GET_OSINFO, &[]),
    spec(GUEST_GET_DEVICES, &[]),
    spec(GUEST_SSH_GET_AUTHORIZED_KEYS, USERNAME),
    spec(
        GUEST_SSH_ADD_AUTHORIZED_KEYS,
        &[
            req("username", Ty::Str),
            req("keys", Ty::List(&Ty::Str)),
            opt("reset", Ty::Bool),
        ],
    ),
    spec(
        GUEST_SSH_REMOVE_AUTHORIZED_KEYS,
        &[req("username", Ty::Str), req("keys", Ty::List(&Ty::Str))],
    ),
    spec(GUEST_GET_DISKSTATS, &[]),
    spec(GUEST_GET_CPUSTATS, &[]),
    spec(GUEST_GET_LOAD, &[]),
    spec(GUEST_NETWORK_GET_ROUTE, &[]),
    spec(
        XENPLUG_APPLY_CONFIG,
        &[opt("config", Ty::Any), opt("nocloud", Ty::Any)],
    ),
    spec(XENPLUG_GET_CONFIG_GENERATION, &[]),
    spec(XENPLUG_GET_GUEST_STATE, &[]),
    spec(XENPLUG_SUBSCRIBE_GUEST_STATE, &[]),
];

/// Every command name, in `guest-info` order.
pub fn command_names() -> impl Iterator<Item = &'static str> {
    SPECS.iter().map(|s| s.name)
}

/// The spec of `name`, if it is a command.
pub fn spec_of(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

/// True unless `name` sends nothing on success (`guest-shutdown`, `guest-suspend-*`).
pub fn success_response(name: &str) -> bool {
    spec_of(name).is_none_or(|s| s.success_response)
}

/// A request decoded into a known command with typed arguments.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Command {
    Sync(SyncArgs),
    SyncDelimited(SyncArgs),
    Ping,
    GetTime,
    SetTime(SetTimeArgs),
    Info,
    Shutdown(ShutdownArgs),
    FileOpen(FileOpenArgs),
    FileClose(HandleArgs),
    FileRead(FileReadArgs),
    FileWrite(FileWriteArgs),
    FileSeek(FileSeekArgs),
    FileFlush(HandleArgs),
    FsfreezeStatus,
    FsfreezeFreeze,
    FsfreezeFreezeList(FreezeListArgs),
    FsfreezeThaw,
    Fstrim(FstrimArgs),
    SuspendDisk,
    SuspendRam,
    SuspendHybrid,
    NetworkGetInterfaces,
    GetVcpus,
    SetVcpus(SetVcpusArgs),
    GetDisks,
    GetFsinfo,
    SetUserPassword(SetPasswordArgs),
    GetMemoryBlocks,
    SetMemoryBlocks(SetMemoryBlocksArgs),
    GetMemoryBlockInfo,
    ExecStatus(ExecStatusArgs),
    Exec(ExecArgs),
    GetHostName,
    GetUsers,
    GetTimezone,
    GetOsinfo,
    GetDevices,
    SshGetAuthorizedKeys(UserArgs),
    SshAddAuthorizedKeys(SshAddArgs),
    SshRemoveAuthorizedKeys(SshRemoveArgs),
    GetDiskstats,
    GetCpustats,
    GetLoad,
    NetworkGetRoute,
    ApplyConfig(Box<ApplyConfigArgs>),
    GetConfigGeneration,
    GetGuestState,
    SubscribeGuestState,
}

/// Decode arguments already checked against the schema (xenplug's own commands are checked
/// here, by their types, with the path of the offending member).
fn args<T: serde::de::DeserializeOwned>(
    cmd: &str,
    a: &Option<Map<String, Value>>,
) -> Result<T, ErrorBody> {
    let v = Value::Object(a.clone().unwrap_or_default());
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ErrorBody::generic(format!("Invalid arguments for '{cmd}': {}", e.inner()))
        } else {
            ErrorBody::generic(format!(
                "Invalid arguments for '{cmd}' at '{path}': {}",
                e.inner()
            ))
        }
    })
}

impl Command {
    /// Decode a request. Unknown names give `CommandNotFound`, arguments that do not fit the
    /// schema a `GenericError` worded as qemu-ga words it.
    pub fn from_request(req: &Request) -> Result<Command, ErrorBody> {
        let name = req.execute.as_str();
        let Some(spec) = spec_of(name) else {
            return Err(ErrorBody::command_not_found(name));
        };
        schema::check(spec.args, req.arguments.as_ref()).map_err(ErrorBody::generic)?;
        let a = &req.arguments;
        Ok(match name {
            GUEST_SYNC => Command::Sync(args(name, a)?),
            GUEST_SYNC_DELIMITED => Command::SyncDelimited(args(name, a)?),
            GUEST_PING => Command::Ping,
            GUEST_GET_TIME => Command::GetTime,
            GUEST_SET_TIME => Command::SetTime(args(name, a)?),
            GUEST_INFO => Command::Info,
            GUEST_SHUTDOWN => Command::Shutdown(args(name, a)?),
            GUEST_FILE_OPEN => Command::FileOpen(args(name, a)?),
            GUEST_FILE_CLOSE => Command::FileClose(args(name, a)?),
            GUEST_FILE_READ => Command::FileRead(args(name, a)?),
            GUEST_FILE_WRITE => Command::FileWrite(args(name, a)?),
            GUEST_FILE_SEEK => Command::FileSeek(args(name, a)?),
            GUEST_FILE_FLUSH => Command::FileFlush(args(name, a)?),
            GUEST_FSFREEZE_STATUS => Command::FsfreezeStatus,
            GUEST_FSFREEZE_FREEZE => Command::FsfreezeFreeze,
            GUEST_FSFREEZE_FREEZE_LIST => Command::FsfreezeFreezeList(args(name, a)?),
            GUEST_FSFREEZE_THAW => Command::FsfreezeThaw,
            GUEST_FSTRIM => Command::Fstrim(args(name, a)?),
            GUEST_SUSPEND_DISK => Command::SuspendDisk,
            GUEST_SUSPEND_RAM => Command::SuspendRam,
            GUEST_SUSPEND_HYBRID => Command::SuspendHybrid,
            GUEST_NETWORK_GET_INTERFACES => Command::NetworkGetInterfaces,
            GUEST_GET_VCPUS => Command::GetVcpus,
            GUEST_SET_VCPUS => Command::SetVcpus(args(name, a)?),
            GUEST_GET_DISKS => Command::GetDisks,
            GUEST_GET_FSINFO => Command::GetFsinfo,
            GUEST_SET_USER_PASSWORD => Command::SetUserPassword(args(name, a)?),
            GUEST_GET_MEMORY_BLOCKS => Command::GetMemoryBlocks,
            GUEST_SET_MEMORY_BLOCKS => Command::SetMemoryBlocks(args(name, a)?),
            GUEST_GET_MEMORY_BLOCK_INFO => Command::GetMemoryBlockInfo,
            GUEST_EXEC_STATUS => Command::ExecStatus(args(name, a)?),
            GUEST_EXEC => Command::Exec(args(name, a)?),
            GUEST_GET_HOST_NAME => Command::GetHostName,
            GUEST_GET_USERS => Command::GetUsers,
            GUEST_GET_TIMEZONE => Command::GetTimezone,
            GUEST_GET_OSINFO => Command::GetOsinfo,
            GUEST_GET_DEVICES => Command::GetDevices,
            GUEST_SSH_GET_AUTHORIZED_KEYS => Command::SshGetAuthorizedKeys(args(name, a)?),
            GUEST_SSH_ADD_AUTHORIZED_KEYS => Command::SshAddAuthorizedKeys(args(name, a)?),
            GUEST_SSH_REMOVE_AUTHORIZED_KEYS => Command::SshRemoveAuthorizedKeys(args(name, a)?),
            GUEST_GET_DISKSTATS => Command::GetDiskstats,
            GUEST_GET_CPUSTATS => Command::GetCpustats,
            GUEST_GET_LOAD => Command::GetLoad,
            GUEST_NETWORK_GET_ROUTE => Command::NetworkGetRoute,
            XENPLUG_APPLY_CONFIG => Command::ApplyConfig(Box::new(args(name, a)?)),
            XENPLUG_GET_CONFIG_GENERATION => Command::GetConfigGeneration,
            XENPLUG_GET_GUEST_STATE => Command::GetGuestState,
            XENPLUG_SUBSCRIBE_GUEST_STATE => Command::SubscribeGuestState,
            other => return Err(ErrorBody::command_not_found(other)),
        })
    }

    /// The command's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Sync(_) => GUEST_SYNC,
            Command::SyncDelimited(_) => GUEST_SYNC_DELIMITED,
            Command::Ping => GUEST_PING,
            Command::GetTime => GUEST_GET_TIME,
            Command::SetTime(_) => GUEST_SET_TIME,
            Command::Info => GUEST_INFO,
            Command::Shutdown(_) => GUEST_SHUTDOWN,
            Command::FileOpen(_) => GUEST_FILE_OPEN,
            Command::FileClose(_) => GUEST_FILE_CLOSE,
            Command::FileRead(_) => GUEST_FILE_READ,
            Command::FileWrite(_) => GUEST_FILE_WRITE,
            Command::FileSeek(_) => GUEST_FILE_SEEK,
            Command::FileFlush(_) => GUEST_FILE_FLUSH,
            Command::FsfreezeStatus => GUEST_FSFREEZE_STATUS,
            Command::FsfreezeFreeze => GUEST_FSFREEZE_FREEZE,
            Command::FsfreezeFreezeList(_) => GUEST_FSFREEZE_FREEZE_LIST,
            Command::FsfreezeThaw => GUEST_FSFREEZE_THAW,
            Command::Fstrim(_) => GUEST_FSTRIM,
            Command::SuspendDisk => GUEST_SUSPEND_DISK,
            Command::SuspendRam => GUEST_SUSPEND_RAM,
            Command::SuspendHybrid => GUEST_SUSPEND_HYBRID,
            Command::NetworkGetInterfaces => GUEST_NETWORK_GET_INTERFACES,
            Command::GetVcpus => GUEST_GET_VCPUS,
            Command::SetVcpus(_) => GUEST_SET_VCPUS,
            Command::GetDisks => GUEST_GET_DISKS,
            Command::GetFsinfo => GUEST_GET_FSINFO,
            Command::SetUserPassword(_) => GUEST_SET_USER_PASSWORD,
            Command::GetMemoryBlocks => GUEST_GET_MEMORY_BLOCKS,
            Command::SetMemoryBlocks(_) => GUEST_SET_MEMORY_BLOCKS,
            Command::GetMemoryBlockInfo => GUEST_GET_MEMORY_BLOCK_INFO,
            Command::ExecStatus(_) => GUEST_EXEC_STATUS,
            Command::Exec(_) => GUEST_EXEC,
            Command::GetHostName => GUEST_GET_HOST_NAME,
            Command::GetUsers => GUEST_GET_USERS,
            Command::GetTimezone => GUEST_GET_TIMEZONE,
            Command::GetOsinfo => GUEST_GET_OSINFO,
            Command::GetDevices => GUEST_GET_DEVICES,
            Command::SshGetAuthorizedKeys(_) => GUEST_SSH_GET_AUTHORIZED_KEYS,
            Command::SshAddAuthorizedKeys(_) => GUEST_SSH_ADD_AUTHORIZED_KEYS,
            Command::SshRemoveAuthorizedKeys(_) => GUEST_SSH_REMOVE_AUTHORIZED_KEYS,
            Command::GetDiskstats => GUEST_GET_DISKSTATS,
            Command::GetCpustats => GUEST_GET_CPUSTATS,
            Command::GetLoad => GUEST_GET_LOAD,
            Command::NetworkGetRoute => GUEST_NETWORK_GET_ROUTE,
            Command::ApplyConfig(_) => XENPLUG_APPLY_CONFIG,
            Command::GetConfigGeneration => XENPLUG_GET_CONFIG_GENERATION,
            Command::GetGuestState => XENPLUG_GET_GUEST_STATE,
            Command::SubscribeGuestState => XENPLUG_SUBSCRIBE_GUEST_STATE,
        }
    }

    /// Build the request (no id) that [`Command::from_request`] decodes back to `self`.
    pub fn to_request(&self) -> Request {
        let r = Request::new(self.name());
        let with = |r: Request, v: Result<Value, serde_json::Error>| match v {
            Ok(Value::Object(m)) if !m.is_empty() => r.with_arguments(m),
            _ => r,
        };
        let v = match self {
            Command::Sync(a) | Command::SyncDelimited(a) => serde_json::to_value(a),
            Command::SetTime(a) => serde_json::to_value(a),
            Command::Shutdown(a) => serde_json::to_value(a),
            Command::FileOpen(a) => serde_json::to_value(a),
            Command::FileClose(a) | Command::FileFlush(a) => serde_json::to_value(a),
            Command::FileRead(a) => serde_json::to_value(a),
            Command::FileWrite(a) => serde_json::to_value(a),
            Command::FileSeek(a) => serde_json::to_value(a),
            Command::FsfreezeFreezeList(a) => serde_json::to_value(a),
            Command::Fstrim(a) => serde_json::to_value(a),
            Command::SetVcpus(a) => serde_json::to_value(a),
            Command::SetUserPassword(a) => serde_json::to_value(a),
            Command::SetMemoryBlocks(a) => serde_json::to_value(a),
            Command::ExecStatus(a) => serde_json::to_value(a),
            Command::Exec(a) => serde_json::to_value(a),
            Command::SshGetAuthorizedKeys(a) => serde_json::to_value(a),
            Command::SshAddAuthorizedKeys(a) => serde_json::to_value(a),
            Command::SshRemoveAuthorizedKeys(a) => serde_json::to_value(a),
            Command::ApplyConfig(a) => serde_json::to_value(a),
            _ => return r,
        };
        with(r, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::class;
    use serde_json::json;

    fn req(v: Value) -> Request {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn decode_qga_commands() {
        assert_eq!(
            Command::from_request(&req(
                json!({"execute":"guest-sync-delimited","arguments":{"id":123456}})
            ))
            .unwrap(),
            Command::SyncDelimited(SyncArgs { id: 123456 })
        );
        assert_eq!(
            Command::from_request(&req(json!({"execute":"guest-ping"}))).unwrap(),
            Command::Ping
        );
        assert_eq!(
            Command::from_request(&req(
                json!({"execute":"guest-shutdown","arguments":{"mode":"reboot"}})
            ))
            .unwrap(),
            Command::Shutdown(ShutdownArgs {
                mode: Some("reboot".into())
            })
        );
        let c = Command::from_request(&req(json!({"execute":"guest-ssh-add-authorized-keys",
            "arguments":{"username":"u","keys":["k"],"reset":true}})))
        .unwrap();
        assert_eq!(c.to_request().arguments.unwrap()["reset"], json!(true));
    }

    #[test]
    fn errors() {
        let e = Command::from_request(&req(json!({"execute":"guest-nonexistent"}))).unwrap_err();
        assert_eq!(e.class, class::COMMAND_NOT_FOUND);
        assert_eq!(e.desc, "The command guest-nonexistent has not been found");
        let e = Command::from_request(&req(json!({"execute":"guest-exec"}))).unwrap_err();
        assert_eq!(e.desc, "Parameter 'path' is missing");
        let e = Command::from_request(&req(json!({"execute":"guest-sync","arguments":{"id":"x"}})))
            .unwrap_err();
        assert_eq!(e.class, class::GENERIC_ERROR);
        assert_eq!(e.desc, "Invalid parameter type for 'id', expected: integer");
        let e = Command::from_request(&req(json!({"execute":"guest-ping","arguments":{"x":1}})))
            .unwrap_err();
        assert_eq!(e.desc, "Parameter 'x' is unexpected");
        // `mode` is a string in qemu-ga's schema: the command refuses an unknown one.
        let c = Command::from_request(&req(
            json!({"execute":"guest-shutdown","arguments":{"mode":"explode"}}),
        ))
        .unwrap();
        let Command::Shutdown(a) = c else { panic!() };
        assert_eq!(
            a.mode().unwrap_err().desc,
            "mode is invalid (valid values are: halt|powerdown|reboot"
        );
        let c = Command::from_request(&req(json!({"execute":"guest-file-seek",
            "arguments":{"handle":1000,"offset":-1,"whence":"end"}})))
        .unwrap();
        assert_eq!(
            c,
            Command::FileSeek(FileSeekArgs {
                handle: 1000,
                offset: -1,
                whence: Whence::Name(SeekName::End)
            })
        );
        let c = Command::from_request(&req(json!({"execute":"guest-exec",
            "arguments":{"path":"sh","capture-output":"merged"}})))
        .unwrap();
        let Command::Exec(a) = c else { panic!() };
        assert_eq!(a.capture_output.unwrap().mode(), CaptureMode::Merged);
    }

    #[test]
    fn apply_config_forms() {
        let c = Command::from_request(&req(json!({"execute":"xenplug-apply-config",
            "arguments":{"config":{"instance-id":"i","generation":1,"hostname":"h"}}})))
        .unwrap();
        let Command::ApplyConfig(a) = &c else {
            panic!()
        };
        let d = (**a).clone().into_doc().unwrap();
        assert_eq!(d.hostname.as_deref(), Some("h"));
        assert_eq!(Command::from_request(&c.to_request()).unwrap(), c);
        let c = Command::from_request(&req(json!({"execute":"xenplug-apply-config",
            "arguments":{"nocloud":{"meta-data":"instance-id: x\n","user-data":"#cloud-config\n","generation":9}}})))
        .unwrap();
        let Command::ApplyConfig(a) = c else { panic!() };
        assert_eq!(a.into_doc().unwrap().generation, 9);
        let e = Command::from_request(&req(json!({"execute":"xenplug-apply-config",
            "arguments":{"config":{"instance-id":"i","generation":1},"nocloud":{"meta-data":""}}})))
        .unwrap_err();
        assert_eq!(e.class, class::GENERIC_ERROR);
        let e = Command::from_request(&req(json!({"execute":"xenplug-apply-config",
            "arguments":{"config":{"instance-id":"i","generation":1,"hostnme":"x"}}})))
        .unwrap_err();
        assert!(e.desc.contains("hostnme"), "{}", e.desc);
    }

    #[test]
    fn every_command_roundtrips() {
        for name in command_names() {
            let args = match name {
                GUEST_SYNC | GUEST_SYNC_DELIMITED => Some(json!({"id": 1})),
                GUEST_SET_TIME => Some(json!({"time": 5})),
                GUEST_SHUTDOWN => Some(json!({"mode": "halt"})),
                GUEST_FILE_OPEN => Some(json!({"path": "/x", "mode": "w+"})),
                GUEST_FILE_CLOSE | GUEST_FILE_FLUSH => Some(json!({"handle": 1000})),
                GUEST_FILE_READ => Some(json!({"handle": 1000, "count": 5})),
                GUEST_FILE_WRITE => Some(json!({"handle": 1000, "buf-b64": "eA=="})),
                GUEST_FILE_SEEK => Some(json!({"handle": 1000, "offset": 0, "whence": 1})),
                GUEST_FSFREEZE_FREEZE_LIST => Some(json!({"mountpoints": ["/"]})),
                GUEST_FSTRIM => Some(json!({"minimum": 4096})),
                GUEST_SET_VCPUS => Some(json!({"vcpus": [{"logical-id": 1, "online": true}]})),
                GUEST_SET_MEMORY_BLOCKS => {
                    Some(json!({"mem-blks": [{"phys-index": 3, "online": false}]}))
                }
                GUEST_EXEC_STATUS => Some(json!({"pid": 7})),
                GUEST_EXEC => Some(json!({"path": "sh", "arg": ["-c", "true"],
                    "env": ["A=1"], "input-data": "eA==", "capture-output": true})),
                GUEST_SSH_GET_AUTHORIZED_KEYS => Some(json!({"username": "u"})),
                GUEST_SSH_ADD_AUTHORIZED_KEYS | GUEST_SSH_REMOVE_AUTHORIZED_KEYS => {
                    Some(json!({"username": "u", "keys": []}))
                }
                GUEST_SET_USER_PASSWORD => {
                    Some(json!({"username":"u","password":"eA==","crypted":false}))
                }
                XENPLUG_APPLY_CONFIG => Some(json!({"config":{"instance-id":"i","generation":1}})),
                _ => None,
            };
            let mut r = Request::new(name);
            if let Some(a) = args {
                r = r.with_arguments(a);
            }
            let c = Command::from_request(&r).unwrap();
            assert_eq!(c.name(), name);
            assert_eq!(Command::from_request(&c.to_request()).unwrap(), c);
        }
    }
}
