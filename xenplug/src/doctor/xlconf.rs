//! The settings of `/etc/xen/xl.conf` that decide whether and how hotplug scripts run.
//!
//! xl.conf is libxlu's configuration syntax: `name = value` statements, `#` comments, values that
//! are numbers, `"strings"` or `'strings'` (no escapes that matter here) or `[lists]` that may span
//! lines, an optional `;` after a statement. Only scalar settings are kept; lists are skipped.

use std::collections::BTreeMap;

/// What xl.conf says, as far as hotplug is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XlConf {
    /// Every scalar setting, unquoted.
    pub values: BTreeMap<String, String>,
    /// Lines that could not be understood (`line N: text`).
    pub errors: Vec<String>,
}

/// libxl's defaults when xl.conf says nothing.
pub const DEFAULT_VIF_SCRIPT: &str = "vif-bridge";
/// libxl's default bridge.
pub const DEFAULT_BRIDGE: &str = "xenbr0";
/// The default `gatewaydev` of vif-route / vif-nat (xl.conf's example value, what the scripts
/// fall back to).
pub const DEFAULT_GATEWAYDEV: &str = "eth0";

/// Remove a `#` comment that is not inside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') => return &line[..i],
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    line
}

fn unquote(v: &str) -> Option<String> {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q) {
            return inner.strip_suffix(q).map(str::to_string);
        }
    }
    let ok = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '+'));
    ok.then(|| v.to_string())
}

impl XlConf {
    /// Parse xl.conf text.
    pub fn parse(text: &str) -> XlConf {
        let mut out = XlConf::default();
        let mut in_list = 0i32;
        for (i, raw) in text.lines().enumerate() {
            let line = strip_comment(raw).trim();
            if in_list > 0 {
                in_list += line.matches('[').count() as i32 - line.matches(']').count() as i32;
                continue;
            }
            let line = line.trim_end_matches(';').trim();
            if line.is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                out.errors.push(format!("line {}: {}", i + 1, raw.trim()));
                continue;
            };
            let key = key.trim();
            let value = value.trim();
            if value.starts_with('[') {
                in_list = value.matches('[').count() as i32 - value.matches(']').count() as i32;
                continue;
            }
            match unquote(value) {
                Some(v) if !key.is_empty() => {
                    out.values.insert(key.to_string(), v);
                }
                _ => out.errors.push(format!("line {}: {}", i + 1, raw.trim())),
            }
        }
        out
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// `run_hotplug_scripts` (libxl's default: 1), or the text when it is not a number.
    pub fn run_hotplug_scripts(&self) -> Result<i64, String> {
        match self.get("run_hotplug_scripts") {
            None => Ok(1),
            Some(v) => v.parse().map_err(|_| v.to_string()),
        }
    }

    /// The default vif script: `vif.default.script`, else the deprecated `vifscript`, else
    /// `vif-bridge` (xl reads both keys; the new one wins).
    pub fn vif_script(&self) -> &str {
        self.get("vif.default.script")
            .or_else(|| self.get("vifscript"))
            .unwrap_or(DEFAULT_VIF_SCRIPT)
    }

    /// The default bridge: `vif.default.bridge`, else the deprecated `defaultbridge`, else
    /// `xenbr0`.
    pub fn bridge(&self) -> &str {
        self.get("vif.default.bridge")
            .or_else(|| self.get("defaultbridge"))
            .unwrap_or(DEFAULT_BRIDGE)
    }

    /// `vif.default.gatewaydev`, else `eth0`.
    pub fn gatewaydev(&self) -> &str {
        self.get("vif.default.gatewaydev")
            .unwrap_or(DEFAULT_GATEWAYDEV)
    }

    /// Deprecated keys present, with their replacements.
    pub fn deprecated(&self) -> Vec<(&'static str, &'static str)> {
        [
            ("vifscript", "vif.default.script"),
            ("defaultbridge", "vif.default.bridge"),
        ]
        .into_iter()
        .filter(|(old, _)| self.values.contains_key(*old))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_default_is_all_comments() {
        let c = XlConf::parse(
            "## Global XL config file ##\n#run_hotplug_scripts=1\n#vif.default.script=\"vif-bridge\"\n",
        );
        assert!(c.values.is_empty() && c.errors.is_empty());
        assert_eq!(c.run_hotplug_scripts(), Ok(1));
        assert_eq!(c.vif_script(), "vif-bridge");
        assert_eq!(c.bridge(), "xenbr0");
        assert_eq!(c.gatewaydev(), "eth0");
    }

    #[test]
    fn values_quotes_lists_and_comments() {
        let c = XlConf::parse(
            "run_hotplug_scripts = 0 # udev\n\
             vif.default.script='vif-route';\n\
             vif.default.bridge = \"br#1\"\n\
             vm.cpumask = [ \"0-3\",\n  \"5\" ]\n\
             vifscript=\"vif-nat\"\n\
             defaultbridge=xenbr9\n\
             this is not a statement\n",
        );
        assert_eq!(c.run_hotplug_scripts(), Ok(0));
        assert_eq!(c.vif_script(), "vif-route");
        assert_eq!(c.bridge(), "br#1");
        assert_eq!(
            c.deprecated(),
            vec![
                ("vifscript", "vif.default.script"),
                ("defaultbridge", "vif.default.bridge")
            ]
        );
        assert_eq!(c.errors, vec!["line 8: this is not a statement"]);
        assert!(!c.values.contains_key("vm.cpumask"));
    }

    #[test]
    fn deprecated_keys_apply_when_the_new_ones_are_absent() {
        let c = XlConf::parse("vifscript=\"vif-nat\"\ndefaultbridge='br5'\n");
        assert_eq!(c.vif_script(), "vif-nat");
        assert_eq!(c.bridge(), "br5");
        let c = XlConf::parse("run_hotplug_scripts=yes\n");
        assert_eq!(c.run_hotplug_scripts(), Err("yes".into()));
    }
}
