//! Recording fakes of the applier's traits other than [`xenplug_netlink::links::Links`] (whose fake
//! is `xenplug_netlink::fake::RecordingLinks`), for tests of ordering and error paths.

use std::collections::BTreeMap;

use crate::apply::{Dhcp, Firewall, Ovs, Sysctl, System, XsWrite};
use crate::types::{NftBatch, StepError};
use xenplug_netlink::links::Links;

/// In-memory sysctls; a missing key reads as "0".
#[derive(Debug, Default, Clone)]
pub struct FakeSysctl(pub BTreeMap<String, String>);

impl Sysctl for FakeSysctl {
    fn read(&mut self, key: &str) -> Result<String, StepError> {
        Ok(self.0.get(key).cloned().unwrap_or_else(|| "0".into()))
    }
    fn write(&mut self, key: &str, value: &str) -> Result<(), StepError> {
        self.0.insert(key.into(), value.into());
        Ok(())
    }
}

/// Records batches and models what nft does with chains: the commands of a batch run in order
/// (`add chain` creates a missing chain, `delete chain` of a missing one fails the whole batch
/// with "No such file or directory", which a removal batch reports as "already gone"), and a
/// failing batch changes nothing.
#[derive(Debug, Default, Clone)]
pub struct FakeFirewall {
    /// Every batch applied successfully.
    pub applied: Vec<NftBatch>,
    /// Chains currently installed, by name.
    pub chains: Vec<String>,
    /// Fail every non-removal batch with this message.
    pub fail: Option<String>,
}

impl Firewall for FakeFirewall {
    fn apply(&mut self, batch: &NftBatch) -> Result<(), StepError> {
        if let (Some(m), false) = (&self.fail, batch.removal) {
            return Err(StepError {
                message: m.clone(),
                ..Default::default()
            });
        }
        let mut chains = self.chains.clone();
        for cmd in batch.commands() {
            let name = |verb: &str| cmd[verb]["chain"]["name"].as_str().map(str::to_string);
            if let Some(c) = name("add") {
                if !chains.contains(&c) {
                    chains.push(c);
                }
            } else if let Some(c) = name("delete") {
                if !chains.contains(&c) {
                    return Err(StepError {
                        message: format!("nft ({}): No such file or directory", batch.what),
                        gone: batch.removal,
                        ..Default::default()
                    });
                }
                chains.retain(|x| x != &c);
            }
        }
        self.chains = chains;
        self.applied.push(batch.clone());
        Ok(())
    }
}

/// An in-memory xenstore (absolute or relative keys, stored as given).
#[derive(Debug, Default, Clone)]
pub struct FakeXs {
    /// Nodes.
    pub nodes: BTreeMap<String, String>,
    /// Writes in order (`None` = rm).
    pub writes: Vec<(String, Option<String>)>,
}

impl FakeXs {
    /// A node's value.
    pub fn get(&self, path: &str) -> Option<&str> {
        self.nodes.get(path).map(String::as_str)
    }
}

impl XsWrite for FakeXs {
    fn read(&mut self, path: &str) -> Result<Option<String>, StepError> {
        Ok(self.nodes.get(path).cloned())
    }
    fn write(&mut self, path: &str, value: &str) -> Result<(), StepError> {
        self.nodes.insert(path.into(), value.into());
        self.writes.push((path.into(), Some(value.into())));
        Ok(())
    }
    fn rm(&mut self, path: &str) -> Result<(), StepError> {
        self.nodes.remove(path);
        self.writes.push((path.into(), None));
        Ok(())
    }
}

/// Records `ovs-vsctl` runs.
#[derive(Debug, Default, Clone)]
pub struct FakeOvs(pub Vec<Vec<String>>);

impl Ovs for FakeOvs {
    fn vsctl(&mut self, args: &[String]) -> Result<(), StepError> {
        self.0.push(args.to_vec());
        Ok(())
    }
}

/// In-memory DHCP host entries.
#[derive(Debug, Default, Clone)]
pub struct FakeDhcp(pub BTreeMap<String, String>);

impl Dhcp for FakeDhcp {
    fn set_host(&mut self, key: &str, line: Option<&str>) -> Result<(), StepError> {
        match line {
            Some(l) => self.0.insert(key.into(), l.into()),
            None => self.0.remove(key),
        };
        Ok(())
    }
    fn host(&mut self, key: &str) -> Result<Option<String>, StepError> {
        Ok(self.0.get(key).cloned())
    }
}

/// Every fake but the links, bundled.
#[derive(Debug, Default, Clone)]
pub struct Parts {
    /// Sysctls.
    pub sysctl: FakeSysctl,
    /// Firewall.
    pub fw: FakeFirewall,
    /// Xenstore.
    pub xs: FakeXs,
    /// OVS.
    pub ovs: FakeOvs,
    /// DHCP.
    pub dhcp: FakeDhcp,
}

impl Parts {
    /// A [`System`] over these fakes and `links`.
    pub fn system<'a>(&'a mut self, links: &'a mut dyn Links) -> System<'a> {
        System {
            links,
            sysctl: &mut self.sysctl,
            firewall: &mut self.fw,
            xs: &mut self.xs,
            ovs: &mut self.ovs,
            dhcp: &mut self.dhcp,
        }
    }
}

/// A small in-memory xenstore implementing [`xenplug_xenstore::XenStore`] for tests of whole
/// script runs: relative paths live under `/local/domain/0`, transactions apply directly (one
/// client at a time), watches are not supported.
#[derive(Debug, Default, Clone)]
pub struct MemXs {
    nodes: std::sync::Arc<std::sync::Mutex<BTreeMap<String, String>>>,
}

impl MemXs {
    /// The absolute form of `path`.
    pub fn abs(path: &str) -> String {
        if path.starts_with('/') {
            path.trim_end_matches('/').to_string()
        } else {
            format!("/local/domain/0/{}", path.trim_end_matches('/'))
        }
    }

    /// Set a node (test setup).
    pub fn set(&self, path: &str, value: &str) {
        self.nodes
            .lock()
            .expect("lock")
            .insert(Self::abs(path), value.to_string());
    }

    /// A node's value.
    pub fn value(&self, path: &str) -> Option<String> {
        self.nodes
            .lock()
            .expect("lock")
            .get(&Self::abs(path))
            .cloned()
    }
}

impl xenplug_xenstore::XsOps for MemXs {
    fn read(&self, path: &str) -> xenplug_xenstore::Result<Option<String>> {
        Ok(self.value(path))
    }
    fn write(&self, path: &str, value: &str) -> xenplug_xenstore::Result<()> {
        self.set(path, value);
        Ok(())
    }
    fn mkdir(&self, path: &str) -> xenplug_xenstore::Result<()> {
        self.nodes
            .lock()
            .expect("lock")
            .entry(Self::abs(path))
            .or_default();
        Ok(())
    }
    fn rm(&self, path: &str) -> xenplug_xenstore::Result<()> {
        let p = Self::abs(path);
        let prefix = format!("{p}/");
        self.nodes
            .lock()
            .expect("lock")
            .retain(|k, _| k != &p && !k.starts_with(&prefix));
        Ok(())
    }
    fn directory(&self, path: &str) -> xenplug_xenstore::Result<Vec<String>> {
        let prefix = format!("{}/", Self::abs(path));
        let mut v: Vec<String> = self
            .nodes
            .lock()
            .expect("lock")
            .keys()
            .filter_map(|k| {
                k.strip_prefix(&prefix)
                    .map(|r| r.split('/').next().unwrap_or("").to_string())
            })
            .collect();
        v.dedup();
        Ok(v)
    }
    fn get_perms(&self, _path: &str) -> xenplug_xenstore::Result<Vec<xenplug_xenstore::Perm>> {
        Ok(vec![xenplug_xenstore::Perm {
            domid: 0,
            access: xenplug_xenstore::Access::None,
        }])
    }
    fn set_perms(
        &self,
        _path: &str,
        _perms: &[xenplug_xenstore::Perm],
    ) -> xenplug_xenstore::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct MemTx(MemXs);

impl xenplug_xenstore::XsOps for MemTx {
    fn read(&self, path: &str) -> xenplug_xenstore::Result<Option<String>> {
        self.0.read(path)
    }
    fn write(&self, path: &str, value: &str) -> xenplug_xenstore::Result<()> {
        xenplug_xenstore::XsOps::write(&self.0, path, value)
    }
    fn mkdir(&self, path: &str) -> xenplug_xenstore::Result<()> {
        self.0.mkdir(path)
    }
    fn rm(&self, path: &str) -> xenplug_xenstore::Result<()> {
        xenplug_xenstore::XsOps::rm(&self.0, path)
    }
    fn directory(&self, path: &str) -> xenplug_xenstore::Result<Vec<String>> {
        self.0.directory(path)
    }
    fn get_perms(&self, path: &str) -> xenplug_xenstore::Result<Vec<xenplug_xenstore::Perm>> {
        self.0.get_perms(path)
    }
    fn set_perms(
        &self,
        path: &str,
        perms: &[xenplug_xenstore::Perm],
    ) -> xenplug_xenstore::Result<()> {
        self.0.set_perms(path, perms)
    }
}

impl xenplug_xenstore::Transaction for MemTx {
    fn commit(self: Box<Self>) -> xenplug_xenstore::Result<()> {
        Ok(())
    }
}

impl xenplug_xenstore::XenStore for MemXs {
    fn begin(&self) -> xenplug_xenstore::Result<Box<dyn xenplug_xenstore::Transaction + '_>> {
        Ok(Box::new(MemTx(self.clone())))
    }
    fn watch(&self, _path: &str, _token: &str) -> xenplug_xenstore::Result<()> {
        Err(xenplug_xenstore::XsError::Io(std::io::Error::other(
            "MemXs has no watches",
        )))
    }
    fn unwatch(&self, _path: &str, _token: &str) -> xenplug_xenstore::Result<()> {
        Ok(())
    }
    fn read_watch(
        &self,
        _timeout: Option<std::time::Duration>,
    ) -> xenplug_xenstore::Result<Option<xenplug_xenstore::WatchEvent>> {
        Ok(None)
    }
    fn domain_path(&self, domid: u32) -> xenplug_xenstore::Result<String> {
        Ok(format!("/local/domain/{domid}"))
    }
}
