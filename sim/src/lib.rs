//! `xenplug sim`: plays libxl's side of the hotplug protocol exactly, against a real xenstored,
//! for a domain described in xl configuration syntax.
//!
//! For every `disk=` and `vif=` entry it writes the backend and frontend nodes libxl writes, moves
//! the backend to InitWait as the kernel backend would, runs the device's hotplug script with
//! libxl's argv and environment (capturing its output, SIGKILLing it after the hotplug timeout),
//! reports a failure as libxl does (`script: <hotplug-error>`) and then tears the domain down; on
//! destroy it runs libxl's remove sequence (`online=0`, state 5 → 6, the script, then the backend
//! and frontend directories are deleted). HVM emulated NICs (`type=ioemu`) get the second, tap,
//! execution. Stand-ins for netback's `vifD.N`, QEMU's `vifD.N-emu` and the host's bridges are
//! created in the (private) network namespace the simulator runs in, and QEMU's side of socket
//! channels (a listening socket relayed to a pty standing for the guest's `/dev/hvcN`).
//!
//! It works with any scripts directory, ours or Debian's reference scripts, so the same domain can
//! be replayed against both.

pub mod devices;
pub mod exec;
pub mod kernel;
pub mod toolstack;
pub mod xlcfg;

pub use toolstack::{Options, Report, Sim};

use devices::{Channel, Disk, Nic};

/// A domain description taken from an xl configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain {
    /// `name=`.
    pub name: String,
    /// `uuid=`, or one derived from the name.
    pub uuid: String,
    /// `type=` (`pv`, `pvh`, `hvm`); HVM NICs default to `type=ioemu` as in libxl.
    pub kind: String,
    /// Disks in order.
    pub disks: Vec<Disk>,
    /// NICs in order.
    pub nics: Vec<Nic>,
    /// PV channels in order (console devids 1, 2, …).
    pub channels: Vec<Channel>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Syntax.
    #[error("config: {0}")]
    Syntax(#[from] xlcfg::ParseError),
    /// A device spec.
    #[error("config: {0}")]
    Spec(#[from] devices::SpecError),
    /// Anything else.
    #[error("config: {0}")]
    Other(String),
}

fn strings(v: Option<&xlcfg::Value>, key: &str) -> Result<Vec<String>, ConfigError> {
    match v {
        None => Ok(Vec::new()),
        Some(xlcfg::Value::List(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ConfigError::Other(format!("`{key}` must be a list of strings")))
            })
            .collect(),
        Some(_) => Err(ConfigError::Other(format!("`{key}` must be a list"))),
    }
}

/// A stable UUID-shaped string derived from the name (FNV-1a), for configs without `uuid=`.
fn uuid_from_name(name: &str) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in name.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    let x = format!("{h:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &x[0..8],
        &x[8..12],
        &x[13..16],
        &x[17..20],
        &x[20..32]
    )
}

impl Domain {
    /// Interpret an xl configuration file for domain `domid`.
    pub fn from_config(text: &str, domid: u32) -> Result<Self, ConfigError> {
        let cfg = xlcfg::parse(text)?;
        let name = cfg
            .get("name")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ConfigError::Other("`name` is required".into()))?
            .to_string();
        let uuid = match cfg.get("uuid").and_then(|v| v.as_str()) {
            Some(u) => u.to_string(),
            None => uuid_from_name(&name),
        };
        let kind = cfg
            .get("type")
            .and_then(|v| v.as_str())
            .unwrap_or("pv")
            .to_string();
        if !["pv", "pvh", "hvm"].contains(&kind.as_str()) {
            return Err(ConfigError::Other(format!("unknown type `{kind}`")));
        }
        let disks = strings(cfg.get("disk"), "disk")?
            .iter()
            .map(|s| devices::parse_disk(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut nics = Vec::new();
        for (i, s) in strings(cfg.get("vif"), "vif")?.iter().enumerate() {
            let mut nic = devices::parse_nic(s, i as u32, domid)?;
            if kind == "hvm" && !s.contains("type=") {
                nic.ioemu = true;
            }
            nics.push(nic);
        }
        let channels = strings(cfg.get("channel"), "channel")?
            .iter()
            .map(|s| devices::parse_channel(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = std::collections::BTreeSet::new();
        for d in &disks {
            if !seen.insert(d.devid) {
                return Err(ConfigError::Other(format!("vdev `{}` used twice", d.vdev)));
            }
        }
        Ok(Domain {
            name,
            uuid,
            kind,
            disks,
            nics,
            channels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_from_config() {
        let d = Domain::from_config(
            "name='web'\ntype='hvm'\ndisk=['/img,raw,xvda,rw','/iso,,hdc,cdrom']\n\
             vif=['bridge=br0','type=vif']\nchannel=['name=org.x,connection=socket,path=/run/x']\n",
            7,
        )
        .unwrap();
        assert_eq!(d.name, "web");
        assert_eq!(d.uuid.len(), 36);
        assert_eq!(d.disks.len(), 2);
        assert!(d.nics[0].ioemu, "HVM NICs default to ioemu");
        assert!(!d.nics[1].ioemu);
        assert_eq!(d.channels[0].name, "org.x");
        assert!(Domain::from_config("type='pv'", 1).is_err());
        assert!(Domain::from_config("name='a'\ndisk=['/a,,xvda','/b,,xvda']", 1).is_err());
        assert!(Domain::from_config("name='a'\ntype='xx'", 1).is_err());
    }
}
