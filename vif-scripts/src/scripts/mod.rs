//! The four scripts, one module each ([`bridge`], [`route`], [`nat`], [`openvswitch`]), and
//! what they share: the steps common to their plans, and the one runner that takes every script
//! through gather → plan → apply → report.
//!
//! A script is a [`VifScript`]: the backend nodes it reads, its facts, `gather` (xenstore nodes,
//! variables, the links its planner looks at) and a pure `plan` of [`Common`], its facts and the
//! [`Observed`] links. [`run`] does the rest for every script: vif-common's facts
//! ([`crate::common::resolve`], with the script's nodes fetched in the same round trip), the
//! `vif-nat-dhcp` lock for a plan that edits DHCP hosts, [`crate::apply::apply`], the
//! `vif-post` hooks, and the outcome (`hotplug-status=connected` is the runtime's, for a vif's
//! `online`). Adding a script means adding a module with a [`VifScript`] and one line in
//! [`Script`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use xenplug_hotplug::lock::names;
use xenplug_hotplug::{run_hooks_with, Action, BackendPath, Context, Failure, Outcome};
use xenplug_netlink::links::{KernelLinks, LinkChange, LinkError, Links};
use xenplug_netlink::{Address, Link};
use xenplug_xenstore::Errno;

use crate::adapters::{CtxXs, DnsmasqHosts, NftCli, OvsCli, ProcSys};
use crate::apply::{apply, Dhcp, Firewall, Ovs, Sysctl, System};
use crate::common::{resolve, Common, CommonInputs, Observed};
use crate::firewall;
use crate::types::{Mode, NftBatch, OnError, Plan, Step, TypeIf};

pub mod bridge;
#[cfg(test)]
mod golden;
pub mod nat;
pub mod openvswitch;
pub mod route;

/// Which script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// vif-bridge.
    Bridge,
    /// vif-route.
    Route,
    /// vif-nat.
    Nat,
    /// vif-openvswitch.
    Ovs,
}

impl Script {
    /// The script's file name.
    pub fn name(self) -> &'static str {
        match self {
            Script::Bridge => bridge::Bridge::NAME,
            Script::Route => route::RouteScript::NAME,
            Script::Nat => nat::Nat::NAME,
            Script::Ovs => openvswitch::OpenVswitch::NAME,
        }
    }
}

/// One vif script: what it reads, and its pure planner.
pub trait VifScript {
    /// The script's file name.
    const NAME: &'static str;
    /// The backend nodes it reads besides vif-common's (`vifname`, `ip`, `rate`, `mac`),
    /// fetched with them in one round trip.
    const NODES: &'static [&'static str];
    /// The script's own inputs.
    type Facts;
    /// Gather the script's facts (xenstore nodes, variables) and observe the links its planner
    /// looks at.
    fn gather(g: &mut Gather<'_, '_>, c: &Common) -> Result<(Self::Facts, Observed), Failure>;
    /// Plan: a pure function of the facts.
    fn plan(c: &Common, f: &Self::Facts, obs: &Observed) -> Result<Planned, Failure>;
}

/// A script's plan and the variables it adds for the `vif-post` hooks (besides `dev` and `vif`).
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The plan.
    pub plan: Plan,
    /// Extra hook variables, e.g. `bridge`.
    pub hook_vars: Vec<(&'static str, String)>,
}

fn fail(msg: impl std::fmt::Display) -> Failure {
    Failure::error(msg)
}

/// The alias that marks a device as this backend's: `xenplug <libxl's name of the device>`. It
/// survives a rename and dies with the device, so teardown can tell the device this backend
/// set up (whatever `vifname` called it) from another interface that has that name now.
pub fn mark(c: &Common) -> String {
    format!("{MARK_PREFIX}{}", c.dev)
}

/// The start of every [`mark`].
pub const MARK_PREFIX: &str = "xenplug ";

/// True when `l` carries another backend's [`mark`].
fn marked_by_another(c: &Common, l: &Link) -> bool {
    l.alias
        .as_deref()
        .is_some_and(|a| a.starts_with(MARK_PREFIX) && a != mark(c))
}

/// The device teardown may act on: the device this backend set up, under its new name (it
/// carries our [`mark`]), else libxl's device under libxl's name (`online` failed or never ran,
/// or it was set up before devices were marked) unless another backend marked it. `None`: the
/// device is gone, and whatever has its name now is not ours.
pub fn own_device<'o>(c: &Common, obs: &'o Observed) -> Option<&'o Link> {
    let m = mark(c);
    if let Some(l) = obs.get(&c.name) {
        if l.alias.as_deref() == Some(m.as_str()) || (c.name == c.dev && !marked_by_another(c, l)) {
            return Some(l);
        }
    }
    obs.get(&c.dev)
        .filter(|l| c.name != c.dev && !marked_by_another(c, l))
}

/// Mark the device as this backend's, then rename it (online/add with `vifname`), refusing an
/// existing name.
fn plan_rename(c: &Common, obs: &Observed, plan: &mut Plan) -> Result<(), Failure> {
    let renaming = c.rename && c.dev != c.name;
    if renaming && obs.get(&c.name).is_some() {
        return Err(fail(format!(
            "Cannot rename interface {}. An interface with name {} already exists.",
            c.dev, c.name
        )));
    }
    // Needed for teardown to find a renamed device; a device keeping libxl's name is found
    // without it.
    plan.push(Step::Link(
        LinkChange::SetAlias {
            dev: c.dev.clone(),
            alias: mark(c),
        },
        if renaming {
            OnError::Fatal
        } else {
            OnError::Ignore
        },
    ));
    if !renaming {
        return Ok(());
    }
    plan.link(LinkChange::SetUp {
        dev: c.dev.clone(),
        up: false,
    });
    plan.link(LinkChange::Rename {
        dev: c.dev.clone(),
        to: c.name.clone(),
    });
    Ok(())
}

/// The device must exist for set-up, and not be another backend's.
fn require_dev(c: &Common, obs: &Observed) -> Result<(), Failure> {
    let Some(l) = obs.get(&c.dev) else {
        return Err(fail(format!("Cannot find interface {}", c.dev)));
    };
    if marked_by_another(c, l) {
        return Err(fail(format!(
            "Interface {} is another backend's ({})",
            c.dev,
            l.alias.as_deref().unwrap_or_default()
        )));
    }
    Ok(())
}

/// The MAC every bridge port gets, so a bridge never takes its address from a vif (the highest
/// non-broadcast, locally administered address).
pub const BRIDGE_PORT_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];

/// The start of a switch port's set-up (bridge, Open vSwitch): the device must exist; rename
/// it, take it down, give it [`BRIDGE_PORT_MAC`] and flush its addresses.
fn plan_port_setup(c: &Common, obs: &Observed, plan: &mut Plan) -> Result<(), Failure> {
    require_dev(c, obs)?;
    plan_rename(c, obs, plan)?;
    let dev = &c.name;
    plan.link(LinkChange::SetUp {
        dev: dev.clone(),
        up: false,
    });
    plan.link_lenient(LinkChange::SetMac {
        dev: dev.clone(),
        mac: BRIDGE_PORT_MAC,
    });
    plan.link(LinkChange::FlushAddrs { dev: dev.clone() });
    Ok(())
}

/// The description of this vif's antispoofing chain.
fn antispoof(c: &Common) -> firewall::Antispoof<'_> {
    firewall::Antispoof {
        chain: &c.dev,
        device: &c.name,
        addrs: &c.ip,
        mac: c.mac,
        mode: c.antispoof,
        ethertypes: &c.ethertypes,
    }
}

/// The antispoofing batch for set-up and what its failure does (enforce: fatal, fail closed;
/// compat: logged).
fn firewall_up(c: &Common) -> Result<Option<(NftBatch, OnError)>, Failure> {
    if c.antispoof == Mode::Enforce && has_firewall(c) && c.mac.is_none() {
        return Err(fail(format!(
            "antispoof=enforce needs the guest's MAC address: {} is {}",
            backend_node(c, "mac"),
            match &c.mac_text {
                None => "missing".to_string(),
                Some(t) => format!("'{t}', not a MAC address"),
            }
        )));
    }
    let Some(b) = firewall::vif_batch(&antispoof(c)).map_err(fail)? else {
        return Ok(None);
    };
    let on = if c.antispoof == Mode::Enforce {
        OnError::Fatal
    } else {
        OnError::Ignore
    };
    Ok(Some((b, on)))
}

fn plan_firewall_up(c: &Common, plan: &mut Plan) -> Result<(), Failure> {
    if let Some((b, on)) = firewall_up(c)? {
        plan.push(Step::Nft(b, on));
    }
    Ok(())
}

/// True when set-up installs antispoofing rules (teardown removes them).
fn has_firewall(c: &Common) -> bool {
    c.antispoof != Mode::Off && !c.ip.is_empty()
}

/// Teardown of [`plan_firewall_up`]: this backend's chain (named after it, so whatever the
/// device is called now) and its link-local claims (`obs.ll6_claims`).
fn plan_firewall_down(c: &Common, obs: &Observed, plan: &mut Plan) {
    if has_firewall(c) {
        plan.push(Step::Nft(
            firewall::remove_batch(&c.dev, &obs.ll6_claims),
            OnError::Ignore,
        ));
    }
}

/// A tap's `rate`, policed at the tap's ingress with tc ([`crate::rate`]); vifs have netback.
/// Planned before the link comes up. A failure (a kernel without `act_police`, say) is logged
/// and the tap is plumbed unlimited, as the rate-only nft rule used to be.
fn plan_rate_up(c: &Common, plan: &mut Plan) {
    if let (TypeIf::Tap, Some(r)) = (c.type_if, c.rate) {
        plan.link_lenient(LinkChange::SetIngressRate {
            dev: c.name.clone(),
            rate: r.bytes_per_second(),
            burst: r.burst(),
        });
    }
}

/// Teardown of [`plan_rate_up`]: only while the tap exists (its policer dies with it).
fn plan_rate_down(c: &Common, obs: &Observed, plan: &mut Plan) {
    if let (TypeIf::Tap, Some(_), Some(l)) = (c.type_if, c.rate, own_device(c, obs)) {
        plan.link(LinkChange::ClearIngressRate {
            dev: l.name.clone(),
        });
    }
}

/// The backend node `key` of the device (`<backend>/<key>`).
fn backend_node(c: &Common, key: &str) -> String {
    format!("{}/{key}", c.backend.trim_end_matches('/'))
}

/// A yes/no variable: unset or empty is `default`; `no`, `0`, `false`, `off` are no.
fn yes(v: Option<&str>, default: bool) -> bool {
    match v.map(str::trim) {
        None | Some("") => default,
        Some(v) => !matches!(v, "no" | "0" | "false" | "off"),
    }
}

/// The applier's traits other than xenstore, for [`body_with`].
#[allow(missing_debug_implementations)]
pub struct Backends<'a> {
    /// Links.
    pub links: &'a mut dyn Links,
    /// Sysctls.
    pub sysctl: &'a mut dyn Sysctl,
    /// nftables.
    pub firewall: &'a mut dyn Firewall,
    /// Open vSwitch.
    pub ovs: &'a mut dyn Ovs,
    /// DHCP hosts (built once the script knows it needs one).
    pub dhcp: &'a mut dyn Dhcp,
}

/// Read a node by its own path (relative paths are relative to this domain's home, not to
/// XENBUS_PATH: the tap case derives its backend path).
fn xs_read(ctx: &Context<'_>, path: &str) -> Result<Option<String>, Failure> {
    ctx.xs.read(path).map_err(|e| {
        fail(format!(
            "xenstore-read {path} failed: {}",
            xenplug_hotplug::describe_xs_error(&e)
        ))
    })
}

/// The backend nodes a script reads, fetched in one pipelined round trip on the first read and
/// then served from memory (one request/answer pair per node costs more than the planning).
///
/// The backend directory is guessed from the environment before [`resolve`] checks it (a
/// wrong guess only wastes that round trip: every read not answered here goes to xenstore).
struct Nodes<'c, 'x> {
    ctx: &'c Context<'x>,
    /// Paths to fetch on the first read.
    pending: std::cell::RefCell<Vec<String>>,
    /// Values fetched (`None`: no such node).
    known: std::cell::RefCell<std::collections::HashMap<String, Option<String>>>,
}

impl<'c, 'x> Nodes<'c, 'x> {
    fn new(ctx: &'c Context<'x>, own: &[&str], inp: &CommonInputs) -> Self {
        let backend = match inp.type_if.as_deref().unwrap_or("") {
            "tap" => crate::common::parse_vif_name(&inp.interface)
                .map(|(d, n)| BackendPath::vif(d, n).path),
            _ => Some(inp.xenbus_path.clone()).filter(|p| !p.is_empty()),
        };
        let pending = backend
            .map(|b| {
                ["vifname", "ip", "rate", "mac"]
                    .iter()
                    .chain(own)
                    .map(|k| format!("{}/{k}", b.trim_end_matches('/')))
                    .collect()
            })
            .unwrap_or_default();
        Nodes {
            ctx,
            pending: std::cell::RefCell::new(pending),
            known: Default::default(),
        }
    }

    /// `xenstore-read`: `None` for a missing node.
    fn read(&self, path: &str) -> Result<Option<String>, Failure> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        if !pending.is_empty() {
            // A failure here is not reported: the single read below reports it for the node
            // that is actually needed.
            if let Ok(values) = self.ctx.xs.read_many(&pending) {
                self.known
                    .borrow_mut()
                    .extend(pending.into_iter().zip(values));
            }
        }
        if let Some(v) = self.known.borrow().get(path) {
            return Ok(v.clone());
        }
        xs_read(self.ctx, path)
    }

    /// `xenstore_read`: a missing or empty node is fatal.
    fn required(&self, path: &str) -> Result<String, Failure> {
        match self.read(path)? {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(fail(format!("xenstore-read {path} failed."))),
        }
    }
}

/// A node read that this domain may not be allowed to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach<T> {
    /// Read (`None`: no such node).
    Read(T),
    /// xenstored refused it (`EACCES`, `EPERM`): the node exists for others only.
    Denied,
}

/// What a script's `gather` reads through: xenstore (the prefetched nodes first), the
/// invocation's variables, and the links.
#[allow(missing_debug_implementations)]
pub struct Gather<'g, 'x> {
    ctx: &'g Context<'x>,
    nodes: Nodes<'g, 'x>,
    links: &'g mut dyn Links,
    ovs: &'g mut dyn Ovs,
}

impl<'g> Gather<'g, '_> {
    /// A variable: the `name=value` argument, else the environment variable.
    pub fn var(&self, name: &str) -> Option<&'g str> {
        self.ctx.var(name)
    }

    /// The script's name as invoked (for messages).
    pub fn program(&self) -> &'g str {
        &self.ctx.inv.program
    }

    /// `xenstore-read`: `None` for a missing node.
    pub fn read(&self, path: &str) -> Result<Option<String>, Failure> {
        self.nodes.read(path)
    }

    /// `xenstore_read`: a missing or empty node is fatal.
    pub fn required(&self, path: &str) -> Result<String, Failure> {
        self.nodes.required(path)
    }

    /// `xenstore-read` of a node that may be out of this domain's reach: a driver domain may
    /// not read the guest's `vm` node or `/vm/<uuid>/…` (libxl 4.17 gives them to dom0 and the
    /// guest only). [`Reach::Denied`] when xenstored refuses it.
    pub fn read_reach(&self, path: &str) -> Result<Reach<Option<String>>, Failure> {
        match self.ctx.xs.read(path) {
            Ok(v) => Ok(Reach::Read(v)),
            Err(e) if matches!(e.errno(), Some(Errno::EACCES) | Some(Errno::EPERM)) => {
                Ok(Reach::Denied)
            }
            Err(e) => Err(fail(format!(
                "xenstore-read {path} failed: {}",
                xenplug_hotplug::describe_xs_error(&e)
            ))),
        }
    }

    /// Log `msg` at `info` (what the script does differently, and why).
    pub fn info(&self, msg: impl Into<String>) {
        self.ctx.log.info(msg.into());
    }

    /// The link called `name`.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, Failure> {
        self.links.link(name).map_err(links_err)
    }

    /// The `external_ids` of Open vSwitch's interface `name` (`None`: no such interface).
    pub fn ovs_external_ids(
        &mut self,
        name: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, String> {
        self.ovs.external_ids(name).map_err(|e| e.message)
    }

    /// Every address of every link.
    pub fn addresses(&mut self) -> Result<Vec<Address>, Failure> {
        self.links.addresses(None).map_err(links_err)
    }

    /// Look up only the links the planner needs (a full dump costs more than the whole rest of
    /// a run on a host with many vifs); every link when `dump`.
    pub fn observe(&mut self, names: &[&str], dump: bool) -> Result<Observed, Failure> {
        if dump {
            return Ok(Observed {
                links: self.links.links().map_err(links_err)?,
                ..Default::default()
            });
        }
        let mut o = Observed::default();
        for n in names {
            if !n.is_empty() && o.get(n).is_none() {
                if let Some(l) = self.link(n)? {
                    o.links.push(l);
                }
            }
        }
        Ok(o)
    }
}

fn links_err(e: LinkError) -> Failure {
    fail(e)
}

/// Run the script `S` for the invocation in `ctx` against `be` (see the module docs).
pub fn run<S: VifScript>(ctx: &Context<'_>, be: Backends<'_>) -> Result<Outcome<'static>, Failure> {
    let inp = CommonInputs {
        type_if: ctx.var("type_if").map(str::to_string),
        vif: ctx.inv.env.vif.clone(),
        interface: ctx.inv.env.interface.clone(),
        xenbus_path: ctx.inv.env.xenbus_path.clone(),
        ip_var: ctx.var("ip").map(str::to_string),
        // `antispoof=` argument (or `antispoof` environment variable), else the host's
        // setting (`antispoof` in xenplug.toml, or `XENPLUG_ANTISPOOF`).
        antispoof: ctx
            .var("antispoof")
            .map(str::to_string)
            .or_else(|| ctx.config.antispoof.clone()),
        ethertypes: ctx.config.antispoof_ethertypes.clone(),
    };
    let nodes = Nodes::new(ctx, S::NODES, &inp);
    let Some(c) = resolve(ctx.action(), &inp, &mut |p| nodes.read(p))? else {
        ctx.log.debug(format!(
            "{} type_if={} : nothing to do",
            ctx.action(),
            inp.type_if.as_deref().unwrap_or("vif")
        ));
        return Ok(Outcome::Done);
    };
    if c.setup() && c.type_if == TypeIf::Vif {
        wait_for_vif(ctx, &mut *be.links, &c, VIF_WAIT)?;
    }
    if !c.setup() {
        // A killed set-up's `nft` or `ovs-vsctl` may still be committing: teardown waits for it
        // before it looks at what exists, or what it commits after the look (an OVS port, a
        // chain) is planned for by nobody and outlives the teardown.
        ctx.wait_for_orphans(&["nft", "ovs-vsctl"])?;
    }
    // From here on programs may be started (`ovs-vsctl` in the gathering, `nft`, hooks): a
    // mark, removed when this run ends, tells the next teardown whether this one was killed
    // meanwhile. A set-up that cannot leave one does not start; a teardown goes on without.
    let _mark = match ctx.mark_run() {
        Ok(m) => Some(m),
        Err(e) if c.setup() => return Err(e),
        Err(e) => {
            ctx.log.warning(e.message());
            None
        }
    };
    let mut g = Gather {
        ctx,
        nodes,
        links: be.links,
        ovs: be.ovs,
    };
    let (facts, mut obs) = S::gather(&mut g, &c)?;
    if !c.setup() && has_firewall(&c) {
        // The link-local addresses this backend's chain claimed, released with it.
        match be
            .firewall
            .elements("netdev", firewall::TABLE, &firewall::own_set(&c.dev))
        {
            Ok(e) => obs.ll6_claims = e,
            Err(e) if e.gone => {}
            Err(e) => ctx.log.warning(format!(
                "cannot list the link-local addresses {} claimed: {}",
                c.dev, e.message
            )),
        }
    }
    let Planned { plan, hook_vars } = S::plan(&c, &facts, &obs)?;
    if !c.setup() {
        if let Some(l) = obs.get(&c.name) {
            if own_device(&c, &obs).map(|o| o.index) != Some(l.index) {
                ctx.log.warning(format!(
                    "{} is not the device this backend set up (it has no mark '{}'): left alone",
                    c.name,
                    mark(&c)
                ));
            }
        }
    }
    // vif-nat's lock around the DHCP server's host entries (locking.sh's name).
    let _dhcp_lock = match plan.steps.iter().any(|s| matches!(s, Step::Dhcp { .. })) {
        true => Some(ctx.claim_lock(names::VIF_NAT_DHCP)?),
        false => None,
    };
    let mut xs = CtxXs { ctx };
    let mut sys = System {
        links: g.links,
        sysctl: be.sysctl,
        firewall: be.firewall,
        xs: &mut xs,
        ovs: g.ovs,
        dhcp: be.dhcp,
    };
    let teardown = !c.setup();
    let result = apply(&plan, &mut sys, teardown);
    let report = match &result {
        Ok(r) => r,
        Err(e) => &e.report,
    };
    // One line for the whole plan: every log line is a write to a shared file.
    if !report.done.is_empty() {
        ctx.log.debug(format!("done: {}", report.done.join("; ")));
    }
    for n in &report.notes {
        ctx.log.warning(n);
    }
    if let Err(e) = result {
        return Err(fail(e.message));
    }
    let mut vars: Vec<(&str, &str)> = vec![("dev", &c.name), ("vif", &c.name)];
    vars.extend(hook_vars.iter().map(|(k, v)| (*k, v.as_str())));
    run_hooks_with(ctx, "vif", "post", &vars)?;
    ctx.log.debug(format!(
        "Successful {} {} for {}.",
        S::NAME,
        ctx.action(),
        c.name
    ));
    Ok(match (c.type_if, ctx.action()) {
        (TypeIf::Vif, Action::Online) => Outcome::Connected,
        _ => Outcome::Done,
    })
}

/// How long set-up waits for netback's vif to appear: well under the 40 s after which libxl
/// kills a script.
pub const VIF_WAIT: Duration = Duration::from_secs(20);

/// Netback creates `vif<domid>.<devid>` when it probes the backend, and libxl (or `xl devd`)
/// runs the script when the backend reaches InitWait. In a driver domain the script has been
/// seen to start before the vif exists (Qubes OS issue 4446), which made the scripts fail with
/// "Cannot find interface". So set-up waits for it, at most `timeout`, woken by the kernel's link
/// notifications (not polled); a vif that never comes is then reported by the planner as before.
/// Nothing is waited for when the device, or the name it is to be renamed to, exists.
fn wait_for_vif(
    ctx: &Context<'_>,
    links: &mut dyn Links,
    c: &Common,
    timeout: Duration,
) -> Result<(), Failure> {
    if links.link(&c.dev).map_err(links_err)?.is_some()
        || (c.name != c.dev && links.link(&c.name).map_err(links_err)?.is_some())
    {
        return Ok(());
    }
    ctx.log.info(format!(
        "{} does not exist yet: waiting up to {} s for netback to create it",
        c.dev,
        timeout.as_secs()
    ));
    let t = Instant::now();
    if links
        .wait_for_link(&c.dev, timeout)
        .map_err(links_err)?
        .is_some()
    {
        ctx.log.info(format!(
            "{} appeared after {:.1} s",
            c.dev,
            t.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

/// Run `script` for the invocation in `ctx` against `be`.
pub fn body_with(
    script: Script,
    ctx: &Context<'_>,
    be: Backends<'_>,
) -> Result<Outcome<'static>, Failure> {
    match script {
        Script::Bridge => run::<bridge::Bridge>(ctx, be),
        Script::Route => run::<route::RouteScript>(ctx, be),
        Script::Nat => run::<nat::Nat>(ctx, be),
        Script::Ovs => run::<openvswitch::OpenVswitch>(ctx, be),
    }
}

/// Paths and programs of the real adapters, from variables (argument or environment).
fn dnsmasq_for(ctx: &Context<'_>) -> DnsmasqHosts {
    DnsmasqHosts {
        file: PathBuf::from(
            ctx.var("dhcp_hostsfile")
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_DHCP_HOSTSFILE),
        ),
        pidfile: PathBuf::from(
            ctx.var("dnsmasq_pidfile")
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_DNSMASQ_PIDFILE),
        ),
        proc: PathBuf::from("/proc"),
    }
}

/// Default dnsmasq `dhcp-hostsfile` maintained by vif-nat.
pub const DEFAULT_DHCP_HOSTSFILE: &str = "/var/lib/xenplug/vif-nat-dhcp-hosts";
/// Default dnsmasq pid file (Debian's dnsmasq service).
pub const DEFAULT_DNSMASQ_PIDFILE: &str = "/run/dnsmasq/dnsmasq.pid";

/// Run `script` with the real adapters (netlink, /proc/sys, `nft`, `ovs-vsctl`, dnsmasq).
pub fn body(script: Script, ctx: &Context<'_>) -> Result<Outcome<'static>, Failure> {
    let mut links = KernelLinks::open().map_err(fail)?;
    let mut sysctl = ProcSys::default();
    // A host that names an `nft` program gets every set-up batch run by it.
    let named = ctx.var("nft").filter(|s| !s.is_empty());
    let mut fw = NftCli {
        program: named.unwrap_or("nft").into(),
        netlink: named.is_none(),
        deadline: Some(ctx.deadline()),
    };
    let mut ovs = OvsCli::for_context(ctx);
    let mut dhcp = dnsmasq_for(ctx);
    body_with(
        script,
        ctx,
        Backends {
            links: &mut links,
            sysctl: &mut sysctl,
            firewall: &mut fw,
            ovs: &mut ovs,
            dhcp: &mut dhcp,
        },
    )
}

/// Helpers shared by the scripts' unit tests.
#[cfg(test)]
pub(crate) mod testutil {
    pub(crate) use super::bridge::{plan_bridge, BridgeFacts};
    pub(crate) use crate::common::{resolve, Common, CommonInputs, Observed};
    pub(crate) use crate::types::{NftBatch, OnError, Plan, Step};
    pub(crate) use xenplug_hotplug::{Action, Failure};
    pub(crate) use xenplug_netlink::fake::RecordingLinks;
    pub(crate) use xenplug_netlink::Address as IfAddr;

    pub(crate) fn common(action: Action, type_if: &str, nodes: &[(&str, &str)]) -> Common {
        let inp = CommonInputs {
            type_if: Some(type_if.into()),
            vif: "vif5.0".into(),
            interface: "vif5.0-emu".into(),
            xenbus_path: "backend/vif/5/0".into(),
            ..Default::default()
        };
        let mut m: std::collections::BTreeMap<String, String> = nodes
            .iter()
            .map(|(k, v)| (format!("backend/vif/5/0/{k}"), v.to_string()))
            .collect();
        // libxl always writes the guest's MAC.
        m.entry("backend/vif/5/0/mac".into())
            .or_insert_with(|| "00:16:3e:00:00:05".into());
        resolve(action, &inp, &mut |p| Ok(m.get(p).cloned()))
            .unwrap()
            .unwrap()
    }

    pub(crate) fn observed(links: &RecordingLinks) -> Observed {
        Observed {
            links: links.links.clone(),
            addrs: links.addrs.clone(),
            ..Default::default()
        }
    }

    /// [`plan_bridge`] onto `xenbr0` with the MTU node `mtu`, against `links`.
    pub(crate) fn plan_xenbr0(
        c: &Common,
        mtu: Option<&str>,
        links: &RecordingLinks,
    ) -> Result<(Plan, String), Failure> {
        let f = BridgeFacts {
            bridge: "xenbr0".into(),
            mtu: mtu.map(Into::into),
        };
        plan_bridge(c, &f, &observed(links))
    }

    pub(crate) fn host() -> RecordingLinks {
        let mut l = RecordingLinks::default();
        l.add("eth0", Some("veth"))
            .add("xenbr0", Some("bridge"))
            .add("vif5.0", Some("veth"));
        l.links[1].mtu = 1400;
        l.addrs.push(IfAddr {
            index: 1,
            addr: "192.0.2.10".parse().unwrap(),
            prefix: 24,
            secondary: false,
        });
        l
    }

    /// The `Step::Nft`s of `plan` with their error handling.
    pub(crate) fn nft_steps(plan: &Plan) -> Vec<(&NftBatch, OnError)> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::Nft(b, o) => Some((b, *o)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::nat::{plan_nat, NatFacts};
    use super::route::{plan_route, RouteFacts};
    use super::testutil::*;
    use super::*;
    use crate::fakes::{FakeDhcp, FakeFirewall, FakeOvs, FakeSysctl, MemXs};
    use std::process::ExitCode;
    use xenplug_hotplug::{run_with, Raw};

    #[test]
    fn vifs_leave_the_rate_to_netback() {
        let c = common(Action::Online, "vif", &[("rate", "125000,1000000")]);
        let (plan, _) = plan_xenbr0(&c, None, &host()).unwrap();
        assert!(!plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::Link(LinkChange::SetIngressRate { .. }, _))));
        let f = RouteFacts {
            netdev: "eth0".into(),
            program: "vif-route".into(),
        };
        let plan = plan_route(&c, &f, &observed(&host())).unwrap();
        assert!(!plan
            .steps
            .iter()
            .any(|s| s.to_string().starts_with("police")));
    }

    #[test]
    fn tap_rate_in_route_and_nat_plans_comes_before_up() {
        let mut l = host();
        l.add("vif5.0-emu", Some("tun"));
        let c = common(Action::Add, "tap", &[("rate", "125000,1000000")]);
        let f = RouteFacts {
            netdev: "eth0".into(),
            program: "vif-route".into(),
        };
        let pos = |plan: &Plan, p: &str| {
            plan.steps
                .iter()
                .position(|s| s.to_string().starts_with(p))
                .unwrap_or_else(|| panic!("{p} in {plan:?}"))
        };
        let plan = plan_route(&c, &f, &observed(&l)).unwrap();
        assert!(pos(&plan, "police vif5.0-emu") < pos(&plan, "set vif5.0-emu up"));
        let n = NatFacts {
            domid: 5,
            handle: 0,
            masquerade: true,
            ..Default::default()
        };
        let plan = plan_nat(&c, &n, &observed(&l)).unwrap();
        assert!(pos(&plan, "police vif5.0-emu") < pos(&plan, "set vif5.0-emu up"));
        let rm = common(Action::Remove, "tap", &[("rate", "125000,1000000")]);
        let plan = plan_route(&rm, &f, &observed(&l)).unwrap();
        pos(&plan, "remove vif5.0-emu ingress policing");
        let plan = plan_nat(&rm, &n, &observed(&l)).unwrap();
        pos(&plan, "remove vif5.0-emu ingress policing");
    }

    /// A whole run through the hotplug runtime with every adapter faked.
    fn run_fake(
        argv: &[&str],
        env: &[(&str, &str)],
        xs: &MemXs,
        links: &mut RecordingLinks,
        fw: &mut FakeFirewall,
    ) -> ExitCode {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("xenplug.toml");
        std::fs::write(&cfg, "").unwrap();
        let d = dir.path().to_str().unwrap();
        let cfg = cfg.to_str().unwrap();
        // Defaults first: the caller's variables override them.
        let mut all: Vec<(&str, &str)> = vec![
            ("XENPLUG_LOG_FILE", ""),
            ("XENPLUG_SYSLOG", "false"),
            ("XENPLUG_CONFIG", cfg),
            ("XENPLUG_LOCK_DIR", d),
            ("XENPLUG_SCRIPTS_DIR", d),
            ("XENPLUG_STATE_DIR", d),
        ];
        all.extend(env.iter().copied());
        let raw = Raw::new(argv, &all);
        let script = match argv[0] {
            "vif-route" => Script::Route,
            _ => Script::Bridge,
        };
        let xs2 = xs.clone();
        run_with(
            argv[0],
            raw,
            Action::VIF,
            move |_| Ok(Box::new(xs2)),
            |ctx| {
                let mut sysctl = FakeSysctl::default();
                let mut ovs = FakeOvs::default();
                let mut dhcp = FakeDhcp::default();
                body_with(
                    script,
                    ctx,
                    Backends {
                        links,
                        sysctl: &mut sysctl,
                        firewall: fw,
                        ovs: &mut ovs,
                        dhcp: &mut dhcp,
                    },
                )
            },
        )
    }

    /// `vif5.0` of domain 5 as the toolstack names it.
    const VIF5: [(&str, &str); 2] = [("vif", "vif5.0"), ("XENBUS_PATH", "backend/vif/5/0")];

    /// One host for whole `vif-bridge` runs: its xenstore, links and firewall, all fake.
    struct Bench {
        xs: MemXs,
        links: RecordingLinks,
        fw: FakeFirewall,
    }

    impl Bench {
        /// [`host`], with `backend/vif/5/0/bridge` set to `bridge`.
        fn new(bridge: &str) -> Self {
            let xs = MemXs::default();
            xs.set("backend/vif/5/0/bridge", bridge);
            xs.set("backend/vif/5/0/mac", "00:16:3e:00:00:05");
            Bench {
                xs,
                links: host(),
                fw: FakeFirewall::default(),
            }
        }

        /// `vif-bridge COMMAND type_if=vif` with `env`.
        fn bridge(&mut self, command: &str, env: &[(&str, &str)]) -> ExitCode {
            run_fake(
                &["vif-bridge", command, "type_if=vif"],
                env,
                &self.xs,
                &mut self.links,
                &mut self.fw,
            )
        }

        /// The backend node `backend/vif/5/0/<key>`.
        fn node(&self, key: &str) -> Option<String> {
            self.xs.value(&format!("backend/vif/5/0/{key}"))
        }
    }

    #[test]
    fn whole_run_online_offline_with_fakes() {
        let mut b = Bench::new("xenbr0");
        b.xs.set("backend/vif/5/0/ip", "10.0.0.5");
        assert_eq!(b.bridge("online", &VIF5), ExitCode::SUCCESS);
        assert_eq!(b.node("hotplug-status").as_deref(), Some("connected"));
        assert_eq!(
            b.xs.value("/local/domain/5/device/vif/0/mtu").as_deref(),
            Some("1400")
        );
        assert_eq!(b.links.get("vif5.0").master, Some(2));
        assert_eq!(b.fw.chains, vec!["vif5.0".to_string()]);
        assert_eq!(b.bridge("offline", &VIF5), ExitCode::SUCCESS);
        assert_eq!(b.links.get("vif5.0").master, None);
        assert!(b.fw.chains.is_empty());
        // Idempotent.
        assert_eq!(b.bridge("offline", &VIF5), ExitCode::SUCCESS);
        // The no-op combination touches nothing.
        let before = b.links.log.len();
        let rc = b.bridge("add", &VIF5);
        assert_eq!((rc, b.links.log.len()), (ExitCode::SUCCESS, before));
    }

    #[test]
    fn online_waits_for_a_vif_netback_has_not_created_yet() {
        let mut b = Bench::new("xenbr0");
        let i = b
            .links
            .links
            .iter()
            .position(|l| l.name == "vif5.0")
            .unwrap();
        let vif = b.links.links.remove(i);
        b.links.late.push(vif);
        assert_eq!(b.bridge("online", &VIF5), ExitCode::SUCCESS);
        assert_eq!(b.links.waits, vec![("vif5.0".to_string(), VIF_WAIT)]);
        assert_eq!(b.node("hotplug-status").as_deref(), Some("connected"));
        assert_eq!(b.links.get("vif5.0").master, Some(2));
        // There already: no wait. Teardown never waits.
        assert_eq!(b.bridge("online", &VIF5), ExitCode::SUCCESS);
        assert_eq!(b.bridge("offline", &VIF5), ExitCode::SUCCESS);
        assert_eq!(b.links.waits.len(), 1);
    }

    #[test]
    fn a_vif_that_never_appears_is_reported_after_the_wait() {
        let mut b = Bench::new("xenbr0");
        b.links.links.retain(|l| l.name != "vif5.0");
        assert_eq!(b.bridge("online", &VIF5), ExitCode::FAILURE);
        assert_eq!(b.links.waits, vec![("vif5.0".to_string(), VIF_WAIT)]);
        assert_eq!(
            b.node("hotplug-error").as_deref(),
            Some("Cannot find interface vif5.0")
        );
        assert_eq!(b.bridge("offline", &VIF5), ExitCode::SUCCESS);
        assert_eq!(b.links.waits.len(), 1);
    }

    #[test]
    fn whole_run_error_contract_and_rollback() {
        let mut b = Bench::new("nobr");
        assert_eq!(b.bridge("online", &VIF5), ExitCode::FAILURE);
        assert_eq!(
            b.node("hotplug-error").as_deref(),
            Some("Could not find bridge device nobr")
        );
        assert_eq!(b.node("hotplug-status").as_deref(), Some("error"));
        assert!(b.links.log.is_empty());
        // A failure late in online rolls everything back.
        b.xs.set("backend/vif/5/0/bridge", "xenbr0");
        b.links.fail =
            Some(|c| matches!(c, LinkChange::SetUp { up: true, .. }).then_some(libc::EIO));
        assert_eq!(b.bridge("online", &VIF5), ExitCode::FAILURE);
        let v = b.links.get("vif5.0");
        assert_eq!(
            (v.master, v.mtu, v.mac),
            (None, 1500, Some([0, 0x16, 0x3e, 0, 0, 3]))
        );
        assert_eq!(b.xs.value("/local/domain/5/device/vif/0/mtu"), None);
        assert_eq!(b.node("hotplug-status").as_deref(), Some("error"));
    }

    #[test]
    fn whole_run_runs_post_hooks_with_the_device() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let hooks = dir.path().join("vif-post.d");
        std::fs::create_dir(&hooks).unwrap();
        let out = dir.path().join("seen");
        let hook = hooks.join("10-record.hook");
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\necho \"$command $dev $bridge $type_if\" >> {}\n",
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut b = Bench::new("xenbr0");
        let d = dir.path().to_str().unwrap();
        let env = [VIF5[0], VIF5[1], ("XENPLUG_SCRIPTS_DIR", d)];
        assert_eq!(b.bridge("online", &env), ExitCode::SUCCESS);
        assert_eq!(b.bridge("offline", &env), ExitCode::SUCCESS);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "online vif5.0 xenbr0 vif\noffline vif5.0 xenbr0 vif\n"
        );
    }

    #[test]
    fn teardown_owns_only_the_device_this_backend_set_up() {
        let off = |vifname: &str| {
            let nodes: Vec<(&str, &str)> = match vifname {
                "" => vec![],
                n => vec![("vifname", n)],
            };
            common(Action::Offline, "vif", &nodes)
        };
        let with = |links: &[(&str, Option<&str>)]| {
            let mut l = RecordingLinks::default();
            for (n, alias) in links {
                l.add(n, Some("veth"));
                l.links.last_mut().unwrap().alias = alias.map(str::to_string);
            }
            observed(&l)
        };
        let own = |c: &Common, o: &Observed| own_device(c, o).map(|l| l.name.clone());
        let ours = Some("xenplug vif5.0");
        // Renamed and marked: ours under its new name.
        assert_eq!(
            own(&off("web0"), &with(&[("web0", ours)])).as_deref(),
            Some("web0")
        );
        // A host interface with that name, unmarked or another backend's: not ours…
        assert_eq!(own(&off("eth9"), &with(&[("eth9", None)])), None);
        let other = Some("xenplug vif7.0");
        assert_eq!(own(&off("eth9"), &with(&[("eth9", other)])), None);
        // … but libxl's device under libxl's name is (online failed before the rename).
        let both = with(&[("eth9", None), ("vif5.0", None)]);
        assert_eq!(own(&off("eth9"), &both).as_deref(), Some("vif5.0"));
        // No vifname: libxl's name is ours, marked or not (set up before marks), unless
        // another backend marked it.
        assert_eq!(
            own(&off(""), &with(&[("vif5.0", None)])).as_deref(),
            Some("vif5.0")
        );
        assert_eq!(
            own(&off(""), &with(&[("vif5.0", ours)])).as_deref(),
            Some("vif5.0")
        );
        assert_eq!(own(&off(""), &with(&[("vif5.0", other)])), None);
        // Set-up refuses a device another backend marked.
        let on = common(Action::Online, "vif", &[]);
        assert_eq!(
            require_dev(&on, &with(&[("vif5.0", other)]))
                .unwrap_err()
                .message(),
            "Interface vif5.0 is another backend's (xenplug vif7.0)"
        );
    }

    #[test]
    fn enforce_without_the_guest_mac_fails_closed() {
        for (mac, why) in [
            (None, "missing"),
            (Some("00:16:3e"), "'00:16:3e', not a MAC address"),
        ] {
            let mut b = Bench::new("xenbr0");
            b.xs.set("backend/vif/5/0/ip", "10.0.0.5");
            b.xs.rm_node("backend/vif/5/0/mac");
            if let Some(m) = mac {
                b.xs.set("backend/vif/5/0/mac", m);
            }
            assert_eq!(b.bridge("online", &VIF5), ExitCode::FAILURE);
            assert_eq!(
                b.node("hotplug-error").unwrap(),
                format!(
                    "antispoof=enforce needs the guest's MAC address: backend/vif/5/0/mac is {why}"
                )
            );
            assert!(b.links.log.is_empty() && b.fw.chains.is_empty());
            // Compat and off do not need it.
            for mode in ["compat", "off"] {
                let env = [VIF5[0], VIF5[1], ("antispoof", mode)];
                assert_eq!(b.bridge("online", &env), ExitCode::SUCCESS, "{mode}");
            }
        }
    }

    #[test]
    fn whole_run_bad_input_through_the_error_contract() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("backend/vif/5/0/ip", "10.0.0.1 nonsense")],
                "invalid address 'nonsense' in backend/vif/5/0/ip",
            ),
            (
                &[("backend/vif/5/0/rate", "10,x")],
                "invalid rate '10,x' (expected <bytes>,<usecs>) in backend/vif/5/0/rate",
            ),
            (
                &[("backend/vif/5/0/mtu", "-1")],
                "invalid mtu '-1' in backend/vif/5/0/mtu",
            ),
            (
                &[("backend/vif/5/0/bridge", "br/0")],
                "Could not find bridge device br/0",
            ),
            (
                &[("backend/vif/5/0/vifname", "much-too-long-name")],
                "invalid interface name 'much-too-long-name'",
            ),
        ];
        for (nodes, msg) in cases {
            let mut b = Bench::new("xenbr0");
            for (k, v) in *nodes {
                b.xs.set(k, v);
            }
            assert_eq!(b.bridge("online", &VIF5), ExitCode::FAILURE, "{msg}");
            assert_eq!(b.node("hotplug-error").as_deref(), Some(*msg));
            assert_eq!(b.node("hotplug-status").as_deref(), Some("error"));
            assert!(b.links.log.is_empty(), "nothing touched for {msg}");
        }
        // A vif that does not exist.
        let mut b = Bench::new("xenbr0");
        let env = [("vif", "vif9.9"), ("XENBUS_PATH", "backend/vif/5/0")];
        assert_eq!(b.bridge("online", &env), ExitCode::FAILURE);
        assert_eq!(
            b.node("hotplug-error").as_deref(),
            Some("Cannot find interface vif9.9")
        );
        // No vif variable at all.
        assert_eq!(b.bridge("online", &VIF5[1..]), ExitCode::FAILURE);
        assert!(b
            .node("hotplug-error")
            .unwrap()
            .starts_with("vif: parameter null or not set"));
    }
}
