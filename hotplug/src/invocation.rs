//! What libxl hands a hotplug script: argv and environment, parsed.
//!
//! libxl (`libxl_linux.c`) runs `execvp(script, [script, action, k=v…])` with a few variables set on
//! top of its own environment (docs/hotplug-contract.md, "Argv and environment"):
//!
//! | device | argv after the script path | environment |
//! |---|---|---|
//! | vbd / vbd3 | `add` / `remove` | `script`, `XENBUS_TYPE`, `XENBUS_PATH`, `XENBUS_BASE_PATH` |
//! | vif (first run) | `online type_if=vif` / `offline type_if=vif` | same, plus `vif`, `netdev` |
//! | vif, emulated NIC (second run) | `add type_if=tap` / `remove type_if=tap` | same, plus `INTERFACE` |
//!
//! The argument rules follow `xen-script-common.sh`:
//! * `findCommand`: the action is the first argument that contains no `=`.
//! * `evalVariables`: every argument whose first `=` is at a character position greater than 1
//!   (i.e. `key=value` with a non-empty key) is `eval`ed, which makes it a shell variable. We
//!   store it in [`Invocation::vars`]; the key must be a shell identifier (anything else makes
//!   bash's `eval` run a command and, under `set -e`, fail the script), and the value is taken
//!   literally (no word splitting or expansion as `eval` would do).
//!
//! Deliberate differences from the shell, each reported as one precise error line: an argument
//! beginning with `=` (bash silently ignores it), a key that is not an identifier, a second bare
//! word after the action (bash ignores it), and an empty argv.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::failure::Failure;

/// The raw process input: argv (including `argv[0]`) and the environment. Kept separate from
/// the process so tests (and wrappers) can build one by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Raw {
    /// Every argument, `argv[0]` first. Arguments that are not valid UTF-8 are converted lossily.
    pub argv: Vec<String>,
    /// The whole environment. Variables that are not valid UTF-8 are converted lossily.
    pub env: BTreeMap<String, String>,
}

impl Raw {
    /// The current process's argv and environment.
    pub fn from_process() -> Raw {
        Raw {
            argv: std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            env: std::env::vars_os()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned(),
                    )
                })
                .collect(),
        }
    }

    /// Build from string slices (handy in tests).
    pub fn new(argv: &[&str], env: &[(&str, &str)]) -> Raw {
        Raw {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

/// The entry point of a script binary: `fn main() -> ExitCode { my_script(Raw::from_process()) }`.
pub type ScriptMain = fn(Raw) -> std::process::ExitCode;

/// The action libxl asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `add`: block devices, and the `type_if=tap` run of a vif.
    Add,
    /// `remove`: the counterpart of `add`.
    Remove,
    /// `online`: the `type_if=vif` run of a vif.
    Online,
    /// `offline`: the counterpart of `online`.
    Offline,
}

impl Action {
    /// Every action, in the order above.
    pub const ALL: &'static [Action] =
        &[Action::Add, Action::Remove, Action::Online, Action::Offline];
    /// What block scripts accept (`block-common.sh`).
    pub const BLOCK: &'static [Action] = &[Action::Add, Action::Remove];
    /// What vif scripts accept (`vif-common.sh`).
    pub const VIF: &'static [Action] = Action::ALL;

    /// The argv word.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
            Action::Online => "online",
            Action::Offline => "offline",
        }
    }

    /// True for the actions that tear something down (`remove`, `offline`).
    pub fn is_teardown(self) -> bool {
        matches!(self, Action::Remove | Action::Offline)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = Failure;
    fn from_str(s: &str) -> Result<Self, Failure> {
        Action::ALL
            .iter()
            .copied()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| Failure::Error(format!("Invalid command: {s}")))
    }
}

/// The environment variables libxl sets for a hotplug script (docs/hotplug-contract.md,
/// "Argv and environment"). Empty when unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HotplugEnv {
    /// `script`: the script path libxl read from `<backend>/script`.
    pub script: String,
    /// `XENBUS_TYPE`: `vbd`, `vbd3` or `vif`.
    pub xenbus_type: String,
    /// `XENBUS_PATH`: the backend directory, usually relative (`backend/vbd/5/51712`). Never
    /// empty in a parsed [`Invocation`].
    pub xenbus_path: String,
    /// `XENBUS_BASE_PATH`: `backend`.
    pub xenbus_base_path: String,
    /// `vif` (vif only): the kernel name of the netback interface, `vif<domid>.<devid>`.
    pub vif: String,
    /// `netdev` (vif only): `<backend>/gatewaydev`, or empty.
    pub netdev: String,
    /// `INTERFACE` (emulated NIC only): `vif<domid>.<devid>-emu`.
    pub interface: String,
}

/// A parsed invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The basename of `argv[0]` (the script name, used to tag log lines).
    pub program: String,
    /// The action.
    pub action: Action,
    /// Every `key=value` argument (the last one wins when a key repeats, as with `eval`).
    pub vars: BTreeMap<String, String>,
    /// The libxl variables.
    pub env: HotplugEnv,
    /// The whole environment, for [`Invocation::var`] and for children.
    pub raw_env: BTreeMap<String, String>,
    /// The arguments after `argv[0]`, as given.
    pub args: Vec<String>,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

impl Invocation {
    /// Parse argv and environment. Accepts any of the four actions; use [`Invocation::check`] (or
    /// [`crate::run`]'s `accepted`) to restrict them. Errors are one line each:
    /// empty argv, no action, `Invalid command: <word>`, a malformed `k=v`, an extra bare word,
    /// or a missing/empty `XENBUS_PATH`.
    pub fn parse(raw: Raw) -> Result<Invocation, Failure> {
        Invocation::parse_for(raw, Action::ALL)
    }

    /// [`Invocation::parse`], also rejecting actions outside `accepted` with
    /// `Invalid command: <action>` (checked before `XENBUS_PATH`, as `block-common.sh` does).
    pub fn parse_for(raw: Raw, accepted: &[Action]) -> Result<Invocation, Failure> {
        let Raw { argv, env } = raw;
        let mut argv = argv.into_iter();
        let program = match argv.next() {
            Some(a0) => a0.rsplit('/').next().unwrap_or_default().to_string(),
            None => {
                return Err(Failure::Error(
                    "empty argument list: expected <script> <action> [key=value…]".into(),
                ))
            }
        };
        let args: Vec<String> = argv.collect();
        let mut action: Option<Action> = None;
        let mut vars = BTreeMap::new();
        for arg in &args {
            match arg.find('=') {
                Some(0) => {
                    return Err(Failure::Error(format!(
                        "malformed argument '{arg}': expected key=value with a non-empty key"
                    )))
                }
                Some(i) => {
                    let (key, value) = (&arg[..i], &arg[i + 1..]);
                    if !is_identifier(key) {
                        return Err(Failure::Error(format!(
                            "malformed argument '{arg}': '{key}' is not a valid variable name"
                        )));
                    }
                    vars.insert(key.to_string(), value.to_string());
                }
                None => match action {
                    None => action = Some(arg.parse()?),
                    Some(a) => {
                        return Err(Failure::Error(format!(
                            "unexpected argument '{arg}' after the action '{a}'"
                        )))
                    }
                },
            }
        }
        let action = action.ok_or_else(|| {
            Failure::Error("missing action: expected add, remove, online or offline".into())
        })?;
        if !accepted.contains(&action) {
            return Err(Failure::Error(format!("Invalid command: {action}")));
        }
        let get = |k: &str| env.get(k).cloned().unwrap_or_default();
        let hp = HotplugEnv {
            script: get("script"),
            xenbus_type: get("XENBUS_TYPE"),
            xenbus_path: get("XENBUS_PATH"),
            xenbus_base_path: get("XENBUS_BASE_PATH"),
            vif: get("vif"),
            netdev: get("netdev"),
            interface: get("INTERFACE"),
        };
        if hp.xenbus_path.is_empty() {
            return Err(Failure::Error(
                "XENBUS_PATH is not set: this script must be run by the toolstack \
                 (XENBUS_PATH=backend/<kind>/<domid>/<devid>)"
                    .into(),
            ));
        }
        Ok(Invocation {
            program,
            action,
            vars,
            env: hp,
            raw_env: env,
            args,
        })
    }

    /// Fail with `Invalid command: <action>` unless the action is one of `accepted`.
    pub fn check(&self, accepted: &[Action]) -> Result<(), Failure> {
        if accepted.contains(&self.action) {
            Ok(())
        } else {
            Err(Failure::Error(format!("Invalid command: {}", self.action)))
        }
    }

    /// A variable as the scripts see it: the `name=value` argument if given, else the environment
    /// variable `name` (arguments override the environment, as `eval` does).
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .or_else(|| self.raw_env.get(name))
            .map(String::as_str)
    }

    /// [`Invocation::var`], treating unset and empty alike (`${name:-default}`).
    pub fn var_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        match self.var(name) {
            Some(v) if !v.is_empty() => v,
            _ => default,
        }
    }
}
