//! cloud-init NoCloud seeds (`meta-data`, `user-data`, `network-config`) → [`ConfigDoc`], with
//! cloud-init's meanings, so a seed written for cloud-init gives the same guest.
//!
//! What cloud-init does without being asked is made explicit here, because the document
//! carries explicit values: the users list is `[default]` when `users` is absent (Debian's
//! `cloud.cfg`), `lock_passwd` is true unless said otherwise, `disable_root` is true,
//! `chpasswd.expire` is true (for hashed passwords too), `/etc/hosts` is left alone unless
//! `manage_etc_hosts` asks, the host name and FQDN follow `get_hostname_fqdn` (user-data
//! `fqdn`, a dotted `hostname`, meta-data `local-hostname`), and meta-data `public-keys` join
//! the top-level `ssh_authorized_keys`. Plain-text passwords (`plain_text_passwd`,
//! `chpasswd` `type: text`, `password`) are hashed here (SHA-512 crypt, what Debian's
//! `chpasswd` makes), and `write_files` content is decoded (base64, gzip) here, so neither
//! reaches the guest as is.
//!
//! Supported user-data keys: [`USER_DATA_KEYS`]. Every other key — cloud-init's own (`packages`,
//! `apt`, `snap`, `chef`, …) or unknown — is refused with its path and "not supported by
//! xenplug-agent", as are unsupported keys inside supported ones.

use std::io::Read as _;

use base64::Engine as _;
use serde_norway::{Mapping, Value};

use super::network::{parse_yaml11_bool, NetworkConfig};
use super::{
    validate_pem_certificates, validate_timezone, validate_user, validate_write_file, CaCerts, Cmd,
    ConfigDoc, ConfigError, Group, NoCloudSeed, Ntp, PasswordChange, User, WriteFile,
    NOT_SUPPORTED,
};

/// cloud-config keys accepted in NoCloud `user-data`.
pub const USER_DATA_KEYS: &[&str] = &[
    "users",
    "user",
    "groups",
    "ssh_authorized_keys",
    "disable_root",
    "disable_root_opts",
    "allow_public_ssh_keys",
    "ssh_pwauth",
    "chpasswd",
    "password",
    "hostname",
    "fqdn",
    "prefer_fqdn_over_hostname",
    "preserve_hostname",
    "manage_etc_hosts",
    "timezone",
    "ntp",
    "write_files",
    "bootcmd",
    "runcmd",
    "final_message",
    "ca_certs",
    "ca-certs",
];

/// Keys accepted in NoCloud `meta-data` (`dsmode` only says at which of cloud-init's boot
/// stages the seed is read, which has no counterpart here).
pub const META_DATA_KEYS: &[&str] = &["instance-id", "local-hostname", "public-keys", "dsmode"];

/// Keys a `users` entry may have.
pub const USER_KEYS: &[&str] = &[
    "name",
    "gecos",
    "homedir",
    "primary_group",
    "groups",
    "shell",
    "system",
    "uid",
    "lock_passwd",
    "passwd",
    "hashed_passwd",
    "plain_text_passwd",
    "sudo",
    "ssh_authorized_keys",
    "expiredate",
    "inactive",
    "no_create_home",
    "no_user_group",
    "no_log_init",
    "create_groups",
];

type R<T> = Result<T, ConfigError>;

fn err(at: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::new(at, msg)
}

fn yaml_mapping(text: &str, file: &str) -> R<Mapping> {
    let v: Value = serde_norway::from_str(text).map_err(|e| err(file, format!("not YAML: {e}")))?;
    match v {
        Value::Null => Ok(Mapping::new()),
        Value::Mapping(m) => Ok(m),
        _ => Err(err(file, "must be a YAML mapping")),
    }
}

fn check_keys(m: &Mapping, allowed: &[&str], at: &str) -> R<()> {
    for k in m.keys() {
        let Some(k) = k.as_str() else {
            return Err(err(at, "keys must be strings"));
        };
        if !allowed.contains(&k) {
            return Err(err(format!("{at}.{k}"), NOT_SUPPORTED));
        }
    }
    Ok(())
}

fn string(v: &Value, at: &str) -> R<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(err(at, "must be a string")),
    }
}

fn boolean(v: &Value, at: &str) -> R<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => {
            parse_yaml11_bool(s).ok_or_else(|| err(at, format!("{s:?} is not a boolean")))
        }
        _ => Err(err(at, "must be a boolean")),
    }
}

fn opt_bool(m: &Mapping, k: &str, at: &str) -> R<Option<bool>> {
    m.get(k)
        .filter(|v| !v.is_null())
        .map(|v| boolean(v, &format!("{at}.{k}")))
        .transpose()
}

fn opt_string(m: &Mapping, k: &str, at: &str) -> R<Option<String>> {
    m.get(k)
        .filter(|v| !v.is_null())
        .map(|v| string(v, &format!("{at}.{k}")))
        .transpose()
}

/// A list of strings (or, where cloud-init allows it, one comma-separated string).
fn string_list(v: &Value, at: &str, comma_string: bool) -> R<Vec<String>> {
    match v {
        Value::Sequence(s) => s
            .iter()
            .enumerate()
            .map(|(i, x)| string(x, &format!("{at}[{i}]")))
            .collect(),
        Value::String(s) if comma_string => Ok(s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()),
        _ => Err(err(at, "must be a list of strings")),
    }
}

/// user-data as cloud-init's PyYAML reads it, as far as `!!binary` goes: the YAML 1.2 parser
/// resolves `!!binary` to the base64 text itself, so the tag is read as a local `!binary` tag
/// (kept on the value) instead. The rewrite is checked: without the tags the result must equal
/// the plain parse, so a `!!binary` inside some scalar's text changes nothing.
fn user_data_mapping(text: &str) -> R<Mapping> {
    let plain = yaml_mapping(text, "user-data")?;
    if !text.contains("!!binary") {
        return Ok(plain);
    }
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        // `key: !!binary …` or `- !!binary …`
        let t = line.trim_start();
        let t = t.strip_prefix("- ").unwrap_or(t);
        let tagged = match t.split_once(':') {
            Some((k, rest)) if !k.contains(char::is_whitespace) => {
                rest.trim_start().starts_with("!!binary")
            }
            _ => t.starts_with("!!binary"),
        };
        if tagged {
            out.push_str(&line.replacen("!!binary", "!binary", 1));
        } else {
            out.push_str(line);
        }
    }
    let tagged = yaml_mapping(&out, "user-data")?;
    fn untag(v: &Value) -> Value {
        match v {
            Value::Tagged(t) if t.tag == "binary" => t.value.clone(),
            Value::Mapping(m) => {
                Value::Mapping(m.iter().map(|(k, v)| (k.clone(), untag(v))).collect())
            }
            Value::Sequence(s) => Value::Sequence(s.iter().map(untag).collect()),
            other => other.clone(),
        }
    }
    if untag(&Value::Mapping(tagged.clone())) == Value::Mapping(plain) {
        Ok(tagged)
    } else {
        Err(err(
            "user-data",
            format!("this use of `!!binary` is {NOT_SUPPORTED} (only as the value of a key)"),
        ))
    }
}

/// SHA-512 crypt of a plain-text password (what Debian's `chpasswd` makes by default).
pub fn hash_password(plain: &str, at: &str) -> R<String> {
    if plain.contains(['\n', '\0']) {
        return Err(err(at, "a password cannot contain a line break or NUL"));
    }
    sha_crypt::sha512_simple(plain, &sha_crypt::Sha512Params::default())
        .map_err(|e| err(at, format!("cannot hash the password: {e:?}")))
}

/// cloud-init's test for a hash in `chpasswd.list`: `$1$`, `$2a$`, `$2y$`, `$5$`, `$6$` followed
/// by two `$`-separated parts, and no `:`.
fn looks_hashed(p: &str) -> bool {
    let rest = ["$1$", "$2a$", "$2y$", "$5$", "$6$"]
        .iter()
        .find_map(|id| p.strip_prefix(id));
    match rest {
        Some(r) => !p.contains(':') && r.contains('$') && !r.starts_with('$'),
        None => false,
    }
}

/// Build the document (see the module docs).
pub fn convert(seed: &NoCloudSeed) -> R<ConfigDoc> {
    let md = yaml_mapping(&seed.meta_data, "meta-data")?;
    check_keys(&md, META_DATA_KEYS, "meta-data")?;
    let instance_id = match md.get("instance-id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(err("meta-data.instance-id", "must be a string")),
        None => return Err(err("meta-data.instance-id", "is required")),
    };
    let local_hostname = opt_string(&md, "local-hostname", "meta-data")?;
    let public_keys = match md.get("public-keys") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.lines().map(str::to_string).collect(),
        Some(Value::Sequence(_)) => string_list(
            md.get("public-keys").expect("matched"),
            "meta-data.public-keys",
            false,
        )?,
        // The EC2-style form: {name: [keys]} or {name: key}.
        Some(Value::Mapping(m)) => {
            let mut v = Vec::new();
            for (k, x) in m {
                let at = format!("meta-data.public-keys.{}", k.as_str().unwrap_or("?"));
                match x {
                    Value::String(s) => v.push(s.clone()),
                    other => v.extend(string_list(other, &at, false)?),
                }
            }
            v
        }
        Some(_) => return Err(err("meta-data.public-keys", "must be a list of keys")),
    };
    let ud = match &seed.user_data {
        // cloud-init does not use a NoCloud seed without user-data at all (it falls back to no
        // datasource: no host name, no keys): refused rather than applied differently.
        None => {
            return Err(err(
                "user-data",
                "missing: cloud-init ignores a NoCloud seed without user-data (an empty `#cloud-config` is enough)",
            ))
        }
        Some(text) if text.trim().is_empty() => Mapping::new(),
        Some(text) => {
            let first = text.lines().next().unwrap_or("").trim_end();
            if first != "#cloud-config" {
                return Err(err(
                    "user-data",
                    format!(
                        "only `#cloud-config` user-data is accepted: scripts, includes, MIME, \
                         jinja templates and compressed user-data are {NOT_SUPPORTED}"
                    ),
                ));
            }
            user_data_mapping(text)?
        }
    };
    check_keys(&ud, USER_DATA_KEYS, "user-data")?;
    let at = "user-data";
    let mut doc = ConfigDoc {
        instance_id,
        generation: seed.generation.unwrap_or(1),
        ..Default::default()
    };
    hostnames(&ud, local_hostname.as_deref(), &mut doc)?;
    doc.groups = groups(ud.get("groups"))?;
    doc.users = users(&ud)?;
    // Keys: meta-data's (unless allow_public_ssh_keys: false) and user-data's, for the default
    // user and for root (cc_ssh's apply_credentials).
    let mut keys = Vec::new();
    if opt_bool(&ud, "allow_public_ssh_keys", at)? != Some(false) {
        keys.extend(public_keys.into_iter().filter(|k| !k.trim().is_empty()));
    }
    if let Some(v) = ud.get("ssh_authorized_keys").filter(|v| !v.is_null()) {
        keys.extend(string_list(v, "user-data.ssh_authorized_keys", false)?);
    }
    for k in keys {
        if !doc.ssh_authorized_keys.contains(&k) {
            doc.ssh_authorized_keys.push(k);
        }
    }
    doc.disable_root = Some(opt_bool(&ud, "disable_root", at)?.unwrap_or(true));
    doc.disable_root_opts = opt_string(&ud, "disable_root_opts", at)?;
    doc.ssh_pwauth = match ud.get("ssh_pwauth") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("unchanged") => None,
        Some(v) => Some(boolean(v, "user-data.ssh_pwauth")?),
    };
    doc.chpasswd = chpasswd(&ud)?;
    doc.timezone = opt_string(&ud, "timezone", at)?;
    if let Some(tz) = &doc.timezone {
        validate_timezone(tz).map_err(|m| err("user-data.timezone", m))?;
    }
    doc.ntp = ntp(ud.get("ntp"))?;
    doc.write_files = write_files(ud.get("write_files"))?;
    doc.bootcmd = commands(ud.get("bootcmd"), "user-data.bootcmd")?;
    doc.runcmd = commands(ud.get("runcmd"), "user-data.runcmd")?;
    doc.final_message = opt_string(&ud, "final_message", at)?;
    doc.ca_certs = ca_certs(&ud)?;
    if let Some(nc) = &seed.network_config {
        doc.network = Some(NetworkConfig::from_yaml(nc).map_err(|e| e.within("network-config"))?);
    }
    doc.validate()?;
    Ok(doc)
}

/// cloud-init's `get_hostname_fqdn` and `prefer_fqdn_over_hostname`, `preserve_hostname`,
/// `manage_etc_hosts`.
fn hostnames(ud: &Mapping, local: Option<&str>, doc: &mut ConfigDoc) -> R<()> {
    let at = "user-data";
    let fqdn_cfg = opt_string(ud, "fqdn", at)?;
    let host_cfg = opt_string(ud, "hostname", at)?;
    // The datasource's name: an IPv4 address becomes ip-a-b-c-d (cloud-init, LP: #475354).
    let from_ds = local.map(|l| {
        if l.parse::<std::net::Ipv4Addr>().is_ok() {
            format!("ip-{}", l.replace('.', "-"))
        } else {
            l.to_string()
        }
    });
    let (hostname, fqdn) = match (fqdn_cfg, host_cfg) {
        (Some(f), h) => {
            let short = f.split('.').next().unwrap_or(&f).to_string();
            (Some(h.unwrap_or(short)), Some(f))
        }
        (None, Some(h)) if h.find('.').is_some_and(|i| i > 0) => (
            Some(h[..h.find('.').expect("checked")].to_string()),
            Some(h),
        ),
        (None, Some(h)) => (Some(h), from_ds.filter(|d| d.contains('.'))),
        (None, None) => match from_ds {
            Some(d) => (
                Some(d.split('.').next().unwrap_or(&d).to_string()),
                Some(d.clone()).filter(|d| d.contains('.')),
            ),
            None => (None, None),
        },
    };
    let manage = match ud.get("manage_etc_hosts") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s == "localhost" || s == "template" => true,
        Some(_) => {
            return Err(err(
                "user-data.manage_etc_hosts",
                "must be true, false, \"localhost\" or \"template\"",
            ))
        }
    };
    doc.manage_etc_hosts = Some(manage);
    doc.prefer_fqdn_over_hostname = opt_bool(ud, "prefer_fqdn_over_hostname", at)?;
    if opt_bool(ud, "preserve_hostname", at)? == Some(true) {
        if manage {
            return Err(err(
                "user-data.manage_etc_hosts",
                format!("together with preserve_hostname: {NOT_SUPPORTED}"),
            ));
        }
        return Ok(());
    }
    doc.hostname = hostname;
    doc.fqdn = fqdn;
    Ok(())
}

fn groups(v: Option<&Value>) -> R<Vec<Group>> {
    let at = "user-data.groups";
    let mut out: Vec<Group> = Vec::new();
    let mut add = |name: String, members: Vec<String>| match out.iter_mut().find(|g| g.name == name)
    {
        Some(g) => g.members.extend(members),
        None => out.push(Group { name, members }),
    };
    let member_list = |v: &Value, at: &str| -> R<Vec<String>> {
        match v {
            Value::Null => Ok(Vec::new()),
            Value::String(s) => Ok(vec![s.clone()]),
            other => string_list(other, at, false),
        }
    };
    match v {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            for g in s.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                add(g.to_string(), Vec::new());
            }
        }
        Some(Value::Sequence(list)) => {
            for (i, item) in list.iter().enumerate() {
                let iat = format!("{at}[{i}]");
                match item {
                    Value::String(s) => add(s.clone(), Vec::new()),
                    Value::Mapping(m) => {
                        for (k, mv) in m {
                            let name = string(k, &iat)?;
                            let members = member_list(mv, &format!("{iat}.{name}"))?;
                            add(name, members);
                        }
                    }
                    _ => return Err(err(iat, "must be a group name or {name: members}")),
                }
            }
        }
        Some(Value::Mapping(m)) => {
            for (k, mv) in m {
                let name = string(k, at)?;
                let members = member_list(mv, &format!("{at}.{name}"))?;
                add(name, members);
            }
        }
        Some(_) => return Err(err(at, "must be a list, a mapping or a string")),
    }
    // cloud-init sorts and de-duplicates each group's members.
    for g in &mut out {
        g.members.sort();
        g.members.dedup();
    }
    Ok(out)
}

/// One `users` entry (a mapping) → a [`User`] with cloud-init's defaults made explicit.
fn user(m: &Mapping, at: &str, default: bool) -> R<User> {
    // cloud-init reads `lock-passwd` as `lock_passwd` (every `-` in a key becomes `_`).
    let mut norm = Mapping::new();
    for (k, v) in m {
        let k = string(k, at)?.replace('-', "_");
        norm.insert(Value::String(k), v.clone());
    }
    let m = &norm;
    check_keys(m, USER_KEYS, at)?;
    let mut u = User {
        name: opt_string(m, "name", at)?.unwrap_or_default(),
        default,
        gecos: opt_string(m, "gecos", at)?,
        homedir: opt_string(m, "homedir", at)?,
        primary_group: opt_string(m, "primary_group", at)?,
        shell: opt_string(m, "shell", at)?,
        system: opt_bool(m, "system", at)?,
        no_create_home: opt_bool(m, "no_create_home", at)?,
        no_user_group: opt_bool(m, "no_user_group", at)?,
        no_log_init: opt_bool(m, "no_log_init", at)?,
        create_groups: opt_bool(m, "create_groups", at)?,
        passwd: opt_string(m, "passwd", at)?,
        expiredate: opt_string(m, "expiredate", at)?,
        inactive: opt_string(m, "inactive", at)?,
        ..Default::default()
    };
    if u.name == "default" {
        u.name.clear();
        u.default = true;
    }
    let default = u.default;
    u.uid = match m.get("uid") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| err(format!("{at}.uid"), "not a UID"))?,
        ),
        Some(Value::String(s)) => Some(
            s.parse()
                .map_err(|_| err(format!("{at}.uid"), "not a UID"))?,
        ),
        Some(_) => return Err(err(format!("{at}.uid"), "not a UID")),
    };
    if let Some(g) = m.get("groups").filter(|v| !v.is_null()) {
        u.groups = match g {
            Value::Mapping(_) => {
                return Err(err(
                    format!("{at}.groups"),
                    format!("the deprecated mapping form is {NOT_SUPPORTED}; use a list"),
                ))
            }
            other => string_list(other, &format!("{at}.groups"), true)?,
        };
    }
    // Passwords: plain text first, then the hash (cloud-init's order: the hash wins).
    if let Some(p) = opt_string(m, "plain_text_passwd", at)? {
        if !p.is_empty() {
            u.hashed_passwd = Some(hash_password(&p, &format!("{at}.plain_text_passwd"))?);
        }
    }
    if let Some(h) = opt_string(m, "hashed_passwd", at)? {
        if !h.is_empty() {
            u.hashed_passwd = Some(h);
        }
    }
    // cloud-init locks unless told not to; for the default user the image's own default-user
    // configuration decides (Debian's says lock_passwd: true).
    u.lock_passwd = match opt_bool(m, "lock_passwd", at)? {
        Some(b) => Some(b),
        None if default => None,
        None => Some(true),
    };
    u.sudo = match m.get("sudo") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Sequence(_)) => string_list(
            m.get("sudo").expect("matched"),
            &format!("{at}.sudo"),
            false,
        )?,
        Some(_) => {
            return Err(err(
                format!("{at}.sudo"),
                "must be a sudoers rule or a list of them",
            ))
        }
    };
    if let Some(k) = m.get("ssh_authorized_keys").filter(|v| !v.is_null()) {
        u.ssh_authorized_keys = match k {
            Value::String(s) => vec![s.clone()],
            other => string_list(other, &format!("{at}.ssh_authorized_keys"), false)?,
        };
    }
    // Checked here so a refusal names the key as the seed spells it.
    if !u.default || !u.name.is_empty() {
        if let Err(e) = super::validate_username(&u.name) {
            return Err(err(format!("{at}.name"), e));
        }
    }
    validate_user(&u).map_err(|e| e.within(at))?;
    Ok(u)
}

/// `users` (and the old `user`) normalised as cloud-init's `ug_util.normalize_users_groups`:
/// users in order, the default user (if listed) last.
fn users(ud: &Mapping) -> R<Vec<User>> {
    let mut out: Vec<User> = Vec::new();
    let mut default: Option<User> = None;
    let mut push = |u: User, at: &str| -> R<()> {
        if u.default {
            if default.is_some() {
                return Err(err(at, "the default user is listed twice"));
            }
            default = Some(u);
        } else {
            if u.name.is_empty() {
                return Err(err(at, "needs `name`"));
            }
            if out.iter().any(|x| x.name == u.name) {
                return Err(err(
                    format!("{at}.name"),
                    format!("user {:?} is listed twice", u.name),
                ));
            }
            out.push(u);
        }
        Ok(())
    };
    let bare = |name: &str| -> R<User> {
        let mut m = Mapping::new();
        m.insert("name".into(), name.into());
        user(&m, "", false)
    };
    let at = "user-data.users";
    match ud.get("users") {
        // Debian's cloud.cfg: `users: [default]`.
        None => push(default_entry(), at)?,
        Some(Value::Null) => {}
        Some(Value::String(s)) => {
            for (i, n) in s
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .enumerate()
            {
                let iat = format!("{at}[{i}]");
                push(
                    if n == "default" {
                        default_entry()
                    } else {
                        bare(n)?
                    },
                    &iat,
                )?;
            }
        }
        Some(Value::Sequence(list)) => {
            for (i, item) in list.iter().enumerate() {
                let iat = format!("{at}[{i}]");
                match item {
                    Value::String(n) if n == "default" => push(default_entry(), &iat)?,
                    Value::String(n) => push(bare(n)?, &iat)?,
                    Value::Sequence(names) => {
                        for (k, n) in names.iter().enumerate() {
                            let n = string(n, &format!("{iat}[{k}]"))?;
                            push(
                                if n == "default" {
                                    default_entry()
                                } else {
                                    bare(&n)?
                                },
                                &format!("{iat}[{k}]"),
                            )?;
                        }
                    }
                    Value::Mapping(m) => {
                        if !m.contains_key("name") {
                            return Err(err(iat, "needs `name`"));
                        }
                        push(user(m, &iat, false)?, &iat)?
                    }
                    _ => return Err(err(iat, "must be a user name or a mapping")),
                }
            }
        }
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let name = string(k, at)?;
                let iat = format!("{at}.{name}");
                match v {
                    Value::Mapping(um) => {
                        let mut um = um.clone();
                        um.insert("name".into(), name.clone().into());
                        push(user(&um, &iat, false)?, &iat)?;
                    }
                    other if boolean(other, &iat).unwrap_or(false) => push(
                        if name == "default" {
                            default_entry()
                        } else {
                            bare(&name)?
                        },
                        &iat,
                    )?,
                    _ => {}
                }
            }
        }
        Some(_) => return Err(err(at, "must be a list")),
    }
    // The old `user` key overrides the default user's configuration and lists it.
    if let Some(old) = ud.get("user").filter(|v| !v.is_null()) {
        let mut d = match old {
            Value::String(n) => {
                let mut m = Mapping::new();
                m.insert("name".into(), n.clone().into());
                user(&m, "user-data.user", true)?
            }
            Value::Mapping(m) => user(m, "user-data.user", true)?,
            _ => return Err(err("user-data.user", "must be a name or a mapping")),
        };
        d.default = true;
        if let Some(listed) = default.take() {
            // A `default` entry in `users` has priority over `user` (cloud-init's merge order).
            d = merge_default(listed, d);
        }
        default = Some(d);
    }
    if let Some(d) = default {
        if !d.name.is_empty() {
            if let Some(i) = out.iter().position(|u| u.name == d.name) {
                // The default user's name listed on its own too: one entry, the default's.
                let own = out.remove(i);
                let mut d = merge_default(d, own);
                d.default = true;
                out.push(d);
                return Ok(out);
            }
        }
        out.push(d);
    }
    Ok(out)
}

fn default_entry() -> User {
    User {
        default: true,
        ..Default::default()
    }
}

/// `first` wins where both say something (cloud-init's `mergemanydict` order).
fn merge_default(first: User, second: User) -> User {
    let pick = |a: Option<String>, b: Option<String>| a.or(b);
    User {
        name: if first.name.is_empty() {
            second.name
        } else {
            first.name
        },
        default: true,
        ssh_authorized_keys: if first.ssh_authorized_keys.is_empty() {
            second.ssh_authorized_keys
        } else {
            first.ssh_authorized_keys
        },
        hashed_passwd: pick(first.hashed_passwd, second.hashed_passwd),
        lock_passwd: first.lock_passwd.or(second.lock_passwd),
        sudo: if first.sudo.is_empty() {
            second.sudo
        } else {
            first.sudo
        },
        gecos: pick(first.gecos, second.gecos),
        homedir: pick(first.homedir, second.homedir),
        primary_group: pick(first.primary_group, second.primary_group),
        groups: {
            let mut g = first.groups;
            for x in second.groups {
                if !g.contains(&x) {
                    g.push(x);
                }
            }
            g
        },
        shell: pick(first.shell, second.shell),
        system: first.system.or(second.system),
        uid: first.uid.or(second.uid),
        no_create_home: first.no_create_home.or(second.no_create_home),
        no_user_group: first.no_user_group.or(second.no_user_group),
        no_log_init: first.no_log_init.or(second.no_log_init),
        create_groups: first.create_groups.or(second.create_groups),
        passwd: pick(first.passwd, second.passwd),
        expiredate: pick(first.expiredate, second.expiredate),
        inactive: pick(first.inactive, second.inactive),
    }
}

/// `chpasswd` (`users` and the old `list`) and `password`, as cc_set_passwords.
fn chpasswd(ud: &Mapping) -> R<Vec<PasswordChange>> {
    let at = "user-data.chpasswd";
    let mut out = Vec::new();
    let mut expire = true;
    let from_line = |name: &str, p: &str, lat: &str| -> R<PasswordChange> {
        Ok(if looks_hashed(p) {
            PasswordChange {
                name: name.into(),
                hashed_passwd: Some(p.into()),
                ..Default::default()
            }
        } else if p == "R" || p == "RANDOM" {
            PasswordChange {
                name: name.into(),
                random: true,
                ..Default::default()
            }
        } else {
            PasswordChange {
                name: name.into(),
                hashed_passwd: Some(hash_password(p, lat)?),
                ..Default::default()
            }
        })
    };
    if let Some(c) = ud.get("chpasswd").filter(|v| !v.is_null()) {
        let m = c.as_mapping().ok_or_else(|| err(at, "must be a mapping"))?;
        check_keys(m, &["expire", "users", "list"], at)?;
        expire = opt_bool(m, "expire", at)?.unwrap_or(true);
        if let Some(list) = m.get("users").filter(|v| !v.is_null()) {
            let list = list
                .as_sequence()
                .ok_or_else(|| err(format!("{at}.users"), "must be a list"))?;
            for (i, e) in list.iter().enumerate() {
                let eat = format!("{at}.users[{i}]");
                let em = e
                    .as_mapping()
                    .ok_or_else(|| err(&eat, "must be a mapping"))?;
                check_keys(em, &["name", "password", "type"], &eat)?;
                let name =
                    opt_string(em, "name", &eat)?.ok_or_else(|| err(&eat, "needs `name`"))?;
                let kind = opt_string(em, "type", &eat)?.unwrap_or_else(|| "hash".into());
                let pw = opt_string(em, "password", &eat)?;
                out.push(match (kind.as_str(), pw) {
                    ("RANDOM", _) => PasswordChange {
                        name,
                        random: true,
                        ..Default::default()
                    },
                    ("hash", Some(p)) => PasswordChange {
                        name,
                        hashed_passwd: Some(p),
                        ..Default::default()
                    },
                    ("text", Some(p)) => PasswordChange {
                        name,
                        hashed_passwd: Some(hash_password(&p, &format!("{eat}.password"))?),
                        ..Default::default()
                    },
                    ("hash" | "text", None) => {
                        // cloud-init: a missing password means RANDOM.
                        PasswordChange {
                            name,
                            random: true,
                            ..Default::default()
                        }
                    }
                    (other, _) => {
                        return Err(err(
                            format!("{eat}.type"),
                            format!("{other:?} is not text, hash or RANDOM"),
                        ))
                    }
                });
            }
        }
        if let Some(list) = m.get("list").filter(|v| !v.is_null()) {
            let lines: Vec<String> = match list {
                Value::String(s) => s.lines().map(str::to_string).collect(),
                other => string_list(other, &format!("{at}.list"), false)?,
            };
            for (i, l) in lines.iter().enumerate() {
                let lat = format!("{at}.list[{i}]");
                let (name, p) = l
                    .split_once(':')
                    .ok_or_else(|| err(&lat, "must be user:password"))?;
                out.push(from_line(name, p, &lat)?);
            }
        }
    }
    if out.is_empty() {
        if let Some(p) = opt_string(ud, "password", "user-data")? {
            // The default user's password (the agent knows its name).
            let c = from_line("", &p, "user-data.password")?;
            out.push(PasswordChange {
                name: String::new(),
                default: true,
                ..c
            });
        }
    }
    for c in &mut out {
        c.expire = expire;
    }
    Ok(out)
}

fn ntp(v: Option<&Value>) -> R<Option<Ntp>> {
    let at = "user-data.ntp";
    let m = match v {
        None => return Ok(None),
        Some(Value::Null) => Mapping::new(),
        Some(Value::Mapping(m)) => m.clone(),
        Some(_) => return Err(err(at, "must be a mapping")),
    };
    check_keys(&m, &["enabled", "servers", "pools", "ntp_client"], at)?;
    if opt_bool(&m, "enabled", at)? == Some(false) {
        return Ok(None);
    }
    let list = |k: &str| -> R<Vec<String>> {
        m.get(k)
            .filter(|v| !v.is_null())
            .map(|v| string_list(v, &format!("{at}.{k}"), false))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let client = match opt_string(&m, "ntp_client", at)?.as_deref() {
        None | Some("auto") => None,
        Some(c @ ("chrony" | "systemd-timesyncd")) => Some(c.to_string()),
        Some(other) => {
            return Err(err(
                format!("{at}.ntp_client"),
                format!("{other:?}: {NOT_SUPPORTED} (chrony, systemd-timesyncd or auto)"),
            ))
        }
    };
    Ok(Some(Ntp {
        servers: list("servers")?,
        pools: list("pools")?,
        ntp_client: client,
    }))
}

fn write_files(v: Option<&Value>) -> R<Vec<WriteFile>> {
    let at = "user-data.write_files";
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = v.as_sequence().ok_or_else(|| err(at, "must be a list"))?;
    let mut out = Vec::new();
    for (i, f) in list.iter().enumerate() {
        let fat = format!("{at}[{i}]");
        let m = f
            .as_mapping()
            .ok_or_else(|| err(&fat, "must be a mapping"))?;
        check_keys(
            m,
            &[
                "path",
                "content",
                "encoding",
                "owner",
                "permissions",
                "append",
                "defer",
            ],
            &fat,
        )?;
        let path = opt_string(m, "path", &fat)?.ok_or_else(|| err(&fat, "needs `path`"))?;
        // Content: text, or bytes (YAML !!binary).
        let raw: Vec<u8> = match m.get("content") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.clone().into_bytes(),
            Some(Value::Tagged(t)) if t.tag == "binary" => {
                let s = string(&t.value, &format!("{fat}.content"))?;
                let compact: String = s.split_whitespace().collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map_err(|_| err(format!("{fat}.content"), "!!binary content is not base64"))?
            }
            Some(_) => return Err(err(format!("{fat}.content"), "must be a string")),
        };
        let enc = opt_string(m, "encoding", &fat)?
            .map(|e| e.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let b64 = |b: &[u8]| -> R<Vec<u8>> {
            let compact: String = String::from_utf8_lossy(b).split_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|_| err(format!("{fat}.content"), "is not base64"))
        };
        let gunzip = |b: &[u8]| -> R<Vec<u8>> {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(b)
                .take(64 << 20)
                .read_to_end(&mut out)
                .map_err(|e| err(format!("{fat}.content"), format!("is not gzip data: {e}")))?;
            Ok(out)
        };
        let bytes = match enc.as_str() {
            "" | "text/plain" => raw,
            "b64" | "base64" => b64(&raw)?,
            "gz" | "gzip" => gunzip(&raw)?,
            "gz+base64" | "gzip+base64" | "gz+b64" | "gzip+b64" => gunzip(&b64(&raw)?)?,
            other => {
                return Err(err(
                    format!("{fat}.encoding"),
                    format!("{other:?}: not one of b64, base64, gz, gzip, gz+b64, gz+base64, gzip+b64, gzip+base64, text/plain"),
                ))
            }
        };
        let (content, encoding) = match String::from_utf8(bytes) {
            Ok(s) => (s, None),
            Err(e) => (
                base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
                Some("b64".to_string()),
            ),
        };
        let permissions = match m.get("permissions") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(err(
                    format!("{fat}.permissions"),
                    "must be an octal string like '0644' (a YAML number is read differently by YAML 1.1 and 1.2)",
                ))
            }
        };
        let f = WriteFile {
            path,
            content,
            encoding,
            owner: opt_string(m, "owner", &fat)?,
            permissions,
            append: opt_bool(m, "append", &fat)?.unwrap_or(false),
            defer: opt_bool(m, "defer", &fat)?.unwrap_or(false),
        };
        validate_write_file(&f).map_err(|e| e.within(&fat))?;
        out.push(f);
    }
    Ok(out)
}

fn commands(v: Option<&Value>, at: &str) -> R<Vec<Cmd>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = v.as_sequence().ok_or_else(|| err(at, "must be a list"))?;
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let cat = format!("{at}[{i}]");
        match c {
            Value::Null => {}
            Value::String(s) => out.push(Cmd::Shell(s.clone())),
            Value::Sequence(args) => {
                let mut a = Vec::new();
                for (k, x) in args.iter().enumerate() {
                    a.push(match x {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
                        _ => return Err(err(format!("{cat}[{k}]"), "must be a string")),
                    });
                }
                out.push(Cmd::Argv(a));
            }
            _ => return Err(err(cat, "must be a command line or a list of arguments")),
        }
    }
    Ok(out)
}

fn ca_certs(ud: &Mapping) -> R<Option<CaCerts>> {
    let (key, v) = match (ud.get("ca_certs"), ud.get("ca-certs")) {
        (Some(_), Some(_)) => {
            return Err(err(
                "user-data.ca-certs",
                "give `ca_certs` or the deprecated `ca-certs`, not both",
            ))
        }
        (Some(v), None) => ("ca_certs", v),
        (None, Some(v)) => ("ca-certs", v),
        (None, None) => return Ok(None),
    };
    let at = format!("user-data.{key}");
    let m = v
        .as_mapping()
        .ok_or_else(|| err(&at, "must be a mapping"))?;
    check_keys(m, &["trusted", "remove_defaults", "remove-defaults"], &at)?;
    let remove = opt_bool(m, "remove_defaults", &at)?
        .or(opt_bool(m, "remove-defaults", &at)?)
        .unwrap_or(false);
    let trusted = m
        .get("trusted")
        .filter(|v| !v.is_null())
        .map(|v| string_list(v, &format!("{at}.trusted"), false))
        .transpose()?
        .unwrap_or_default();
    for (i, c) in trusted.iter().enumerate() {
        validate_pem_certificates(c).map_err(|m| err(format!("{at}.trusted[{i}]"), m))?;
    }
    Ok(Some(CaCerts {
        trusted,
        remove_defaults: remove,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cmd;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKdh7c6XyRUHvJFOz6oUvnG9NDFjeQh79Yr0YH7oWo6q k@x";

    fn seed(md: &str, ud: Option<&str>) -> NoCloudSeed {
        NoCloudSeed {
            meta_data: md.into(),
            user_data: ud.map(str::to_string),
            ..Default::default()
        }
    }

    fn ud(body: &str) -> ConfigDoc {
        convert(&seed(
            "instance-id: i-1\n",
            Some(&format!("#cloud-config\n{body}")),
        ))
        .unwrap()
    }

    fn refused(body: &str) -> ConfigError {
        convert(&seed(
            "instance-id: i-1\n",
            Some(&format!("#cloud-config\n{body}")),
        ))
        .unwrap_err()
    }

    #[test]
    fn what_cloud_init_does_unasked_is_explicit() {
        let md = format!(
            "instance-id: iid-7\nlocal-hostname: web7.example.org\npublic-keys:\n  - {KEY}\n"
        );
        let e = convert(&seed(&md, None)).unwrap_err();
        assert_eq!(e.path, "user-data");
        let d = convert(&seed(&md, Some("#cloud-config\n"))).unwrap();
        assert_eq!(d.users.len(), 1);
        assert!(d.users[0].default && d.users[0].lock_passwd.is_none());
        assert_eq!(d.ssh_authorized_keys, vec![KEY.to_string()]);
        assert_eq!(d.disable_root, Some(true));
        assert_eq!(d.manage_etc_hosts, Some(false));
        assert_eq!(d.hostname.as_deref(), Some("web7"));
        assert_eq!(d.fqdn.as_deref(), Some("web7.example.org"));
        assert!(d.chpasswd.is_empty() && d.ntp.is_none() && d.ssh_pwauth.is_none());
    }

    #[test]
    fn users_and_groups_are_normalised_as_cloud_init() {
        let d = ud("users:\n  - default\n  - bob\n  - [carol, dave]\n  - name: erin\n    lock-passwd: false\n    groups: wheel, adm\n    sudo: ALL=(ALL) ALL\n    uid: 2001\ngroups:\n  - ops: [erin, bob, erin]\n  - plain\n  - {dev: carol}\n");
        let names: Vec<&str> = d.users.iter().map(|u| u.name.as_str()).collect();
        // The default user comes last, as in cloud-init.
        assert_eq!(names, ["bob", "carol", "dave", "erin", ""]);
        assert!(d.users[4].default);
        let erin = &d.users[3];
        assert_eq!(erin.lock_passwd, Some(false));
        assert_eq!(erin.groups, ["wheel", "adm"]);
        assert_eq!(erin.sudo, ["ALL=(ALL) ALL"]);
        assert_eq!(erin.uid, Some(2001));
        assert_eq!(d.users[0].lock_passwd, Some(true));
        let g: Vec<(&str, Vec<&str>)> = d
            .groups
            .iter()
            .map(|g| {
                (
                    g.name.as_str(),
                    g.members.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            g,
            vec![
                ("ops", vec!["bob", "erin"]),
                ("plain", vec![]),
                ("dev", vec!["carol"])
            ]
        );
        // No `users`: no default user is listed by `users: []`.
        assert!(ud("users: []\n").users.is_empty());
        // `user:` overrides the default user.
        let d = ud("user: {name: admin, shell: /bin/zsh}\nusers: [default, bob]\n");
        assert_eq!(d.users.len(), 2);
        assert!(d.users[1].default);
        assert_eq!(d.users[1].name, "admin");
        assert_eq!(d.users[1].shell.as_deref(), Some("/bin/zsh"));
        // Refusals name the key.
        for (body, path) in [
            ("users:\n  - name: bob\n    snapuser: joe@example.org\n", "user-data.users[0].snapuser"),
            ("users:\n  - name: bob\n    ssh_redirect_user: true\n", "user-data.users[0].ssh_redirect_user"),
            ("users:\n  - name: bob\n    selinux_user: staff_u\n", "user-data.users[0].selinux_user"),
            ("users:\n  - name: bob\n  - name: bob\n", "user-data.users[1].name"),
            ("users:\n  - name: bob\n    sudo: \"ALL=(ALL) ALL\\nALL ALL=(ALL) NOPASSWD: ALL\"\n", "user-data.users[0].sudo[0]"),
            ("users:\n  - name: bob\n    gecos: \"a:b\"\n", "user-data.users[0].gecos"),
        ] {
            let e = refused(body);
            assert_eq!(e.path, path, "{e}");
        }
    }

    #[test]
    fn passwords_are_hashed_on_dom0_and_expire_as_cloud_init() {
        let d = ud("users:\n  - name: bob\n    plain_text_passwd: hunter2\nchpasswd:\n  users:\n    - {name: bob, password: s3cret, type: text}\n    - {name: amy, password: $6$salt$hash}\n    - {name: cy, type: RANDOM}\n  list:\n    - dee:$6$a$b\n    - eve:R\n");
        let h = d.users[0].hashed_passwd.as_deref().unwrap();
        assert!(sha_crypt::sha512_check("hunter2", h).is_ok(), "{h}");
        let c = &d.chpasswd;
        assert_eq!(c.len(), 5);
        assert!(sha_crypt::sha512_check("s3cret", c[0].hashed_passwd.as_deref().unwrap()).is_ok());
        assert_eq!(c[1].hashed_passwd.as_deref(), Some("$6$salt$hash"));
        assert!(c[2].random && c[4].random);
        assert_eq!(c[3].hashed_passwd.as_deref(), Some("$6$a$b"));
        // expire defaults to true, for hashed passwords too (cloud-init 22.4).
        assert!(c.iter().all(|c| c.expire));
        assert!(
            ud("chpasswd: {expire: false, users: [{name: a, password: $6$x$y}]}\n").chpasswd[0]
                .expire
                .eq(&false)
        );
        // `password` goes to the default user.
        let d = ud("password: letmein\n");
        assert!(d.chpasswd[0].default && d.chpasswd[0].name.is_empty());
        assert!(sha_crypt::sha512_check(
            "letmein",
            d.chpasswd[0].hashed_passwd.as_deref().unwrap()
        )
        .is_ok());
        let e = refused("chpasswd:\n  users:\n    - {name: bob, password: x, type: md5}\n");
        assert_eq!(e.path, "user-data.chpasswd.users[0].type", "{e}");
    }

    #[test]
    fn host_names_follow_get_hostname_fqdn() {
        let hn = |md: &str, body: &str| {
            let d = convert(&seed(md, Some(&format!("#cloud-config\n{body}")))).unwrap();
            let e = d.effective_hostname();
            (d.hostname, d.fqdn, e)
        };
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            hn("instance-id: i\n", "fqdn: a.b.c\n"),
            (s("a"), s("a.b.c"), s("a"))
        );
        assert_eq!(
            hn("instance-id: i\n", "fqdn: a.b.c\nhostname: x\n"),
            (s("x"), s("a.b.c"), s("x"))
        );
        assert_eq!(
            hn("instance-id: i\n", "hostname: web.example.org\n"),
            (s("web"), s("web.example.org"), s("web"))
        );
        assert_eq!(
            hn("instance-id: i\nlocal-hostname: 10.1.2.3\n", ""),
            (s("ip-10-1-2-3"), None, s("ip-10-1-2-3"))
        );
        assert_eq!(
            hn(
                "instance-id: i\n",
                "fqdn: a.b.c\nprefer_fqdn_over_hostname: true\n"
            )
            .2,
            s("a.b.c")
        );
        assert_eq!(
            hn(
                "instance-id: i\nlocal-hostname: keep\n",
                "preserve_hostname: true\n"
            ),
            (None, None, None)
        );
    }

    #[test]
    fn write_files_are_decoded_on_dom0() {
        // gzip+base64 of "hello gzip\n"
        let gz = {
            use std::io::Write as _;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(b"hello gzip\n").unwrap();
            base64::engine::general_purpose::STANDARD.encode(e.finish().unwrap())
        };
        let d = ud(&format!(
            "write_files:\n  - path: /etc/a\n    content: hi\n  - path: /etc/b\n    encoding: b64\n    content: aGVsbG8K\n    permissions: '0600'\n    owner: bob:adm\n    defer: true\n  - path: /etc/c\n    encoding: gz+b64\n    content: {gz}\n    append: true\n  - path: /bin/x\n    content: !!binary |\n      AAEC/w==\n"
        ));
        let w = &d.write_files;
        assert_eq!((w[0].content.as_str(), w[0].mode().unwrap()), ("hi", 0o644));
        assert_eq!(
            (w[1].bytes().unwrap(), w[1].mode().unwrap()),
            (b"hello\n".to_vec(), 0o600)
        );
        assert!(w[1].defer && w[1].owner.as_deref() == Some("bob:adm"));
        assert_eq!(w[2].content, "hello gzip\n");
        assert!(w[2].append);
        assert_eq!(w[3].encoding.as_deref(), Some("b64"));
        assert_eq!(w[3].bytes().unwrap(), vec![0, 1, 2, 255]);
        for (body, path) in [
            (
                "write_files: [{path: /x, permissions: 644}]\n",
                "user-data.write_files[0].permissions",
            ),
            (
                "write_files: [{path: /x, encoding: gz, content: nope}]\n",
                "user-data.write_files[0].content",
            ),
            (
                "write_files: [{path: /x, encoding: rot13}]\n",
                "user-data.write_files[0].encoding",
            ),
            (
                "write_files: [{path: etc/x}]\n",
                "user-data.write_files[0].path",
            ),
            (
                "write_files: [{path: /etc/../x}]\n",
                "user-data.write_files[0].path",
            ),
        ] {
            assert_eq!(refused(body).path, path);
        }
    }

    #[test]
    fn other_supported_keys() {
        let d = ud(&format!("ssh_authorized_keys: [{KEY}]\ndisable_root: false\nssh_pwauth: true\ntimezone: Europe/Paris\nntp: {{servers: [ntp1.example.org], pools: [pool.example.org]}}\nbootcmd:\n  - echo one\n  - [sh, -c, 'echo $1', x]\nruncmd:\n  - null\n  - [ls, 1, true]\nfinal_message: done $version\nca_certs:\n  remove_defaults: true\n"));
        assert_eq!(d.ssh_authorized_keys, vec![KEY.to_string()]);
        assert_eq!((d.disable_root, d.ssh_pwauth), (Some(false), Some(true)));
        assert_eq!(d.timezone.as_deref(), Some("Europe/Paris"));
        let n = d.ntp.unwrap();
        assert_eq!((n.servers.len(), n.pools.len(), n.ntp_client), (1, 1, None));
        assert_eq!(
            d.bootcmd[1],
            Cmd::Argv(vec!["sh".into(), "-c".into(), "echo $1".into(), "x".into()])
        );
        assert_eq!(
            d.runcmd,
            vec![Cmd::Argv(vec!["ls".into(), "1".into(), "True".into()])]
        );
        assert!(d.ca_certs.unwrap().remove_defaults);
        assert_eq!(ud("ssh_pwauth: unchanged\n").ssh_pwauth, None);
        assert!(ud("ntp: {enabled: false}\n").ntp.is_none());
        assert_eq!(ud("ntp:\n").ntp, Some(Ntp::default()));
        // meta-data keys, and allow_public_ssh_keys.
        let d = convert(&seed(
            &format!("instance-id: i\npublic-keys: {{k1: [{KEY}]}}\n"),
            Some("#cloud-config\nallow_public_ssh_keys: false\n"),
        ))
        .unwrap();
        assert!(d.ssh_authorized_keys.is_empty());
        let e = convert(&seed("instance-id: i\nnetwork-interfaces: x\n", Some(""))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "meta-data.network-interfaces: not supported by xenplug-agent"
        );
        let e = refused("ntp: {ntp_client: ntpdate}\n");
        assert_eq!(e.path, "user-data.ntp.ntp_client");
        assert!(e.message.contains("not supported by xenplug-agent"));
        assert_eq!(
            refused("timezone: ../../etc/shadow\n").path,
            "user-data.timezone"
        );
        assert_eq!(
            refused("ca_certs: {trusted: [nope]}\n").path,
            "user-data.ca_certs.trusted[0]"
        );
    }
}
