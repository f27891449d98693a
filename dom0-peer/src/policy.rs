//! Policy on requests that guests originate, in the spirit of OpenXT's rpc-proxy rules.
//!
//! A policy file is a list of lines; `#` starts a comment. Each rule is
//!
//! ```text
//! allow|deny <match>…
//! ```
//!
//! with match terms (all must hold; a rule with no terms, or the term `all`, matches
//! everything):
//!
//! | term | matches when |
//! |---|---|
//! | `command GLOB` | the request (event) name matches |
//! | `vm-name GLOB` | the VM's name (xenstore `/local/domain/<domid>/name`) matches |
//! | `vm-uuid GLOB` | the VM's UUID matches (compared in lower case) |
//! | `vm-class GLOB` | the VM's class (from its store metadata) matches |
//! | `if-flag FLAG true\|false` | the VM's per-VM flag `FLAG` has that value (unset is false) |
//! | `all` | always |
//!
//! `GLOB` is literal text where `*` matches any run of characters. Evaluation: **default deny,
//! the last matching rule wins**. The caller logs every denial.

use std::collections::BTreeMap;
use std::path::Path;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The request is handled.
    Allow,
    /// The request is dropped (and logged).
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Command(String),
    VmName(String),
    VmUuid(String),
    VmClass(String),
    Flag(String, bool),
}

/// One parsed rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    verdict: Verdict,
    terms: Vec<Term>,
    /// 1-based line in the policy file.
    pub line: usize,
}

/// Who asks, for policy evaluation.
#[derive(Debug, Clone, Default)]
pub struct Subject<'a> {
    /// Request (event) name.
    pub command: &'a str,
    /// VM name.
    pub vm_name: &'a str,
    /// VM UUID.
    pub vm_uuid: &'a str,
    /// VM class (empty when none).
    pub vm_class: &'a str,
    /// Per-VM flags.
    pub flags: Option<&'a BTreeMap<String, bool>>,
}

/// The outcome, with the rule that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// The deciding rule's line, `None` for the default deny.
    pub line: Option<usize>,
}

/// A parsed policy file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Syntax error at a line.
    #[error("policy line {line}: {msg}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// The file could not be read.
    #[error("policy file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl Term {
    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Term::Command(g) => glob(g, s.command),
            Term::VmName(g) => glob(g, s.vm_name),
            Term::VmUuid(g) => glob(g, &s.vm_uuid.to_ascii_lowercase()),
            Term::VmClass(g) => glob(g, s.vm_class),
            Term::Flag(f, want) => {
                s.flags.and_then(|m| m.get(f)).copied().unwrap_or(false) == *want
            }
        }
    }
}

impl Policy {
    /// The empty policy: everything is denied.
    pub fn deny_all() -> Self {
        Policy::default()
    }

    /// Parse policy text.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let body = raw.split('#').next().unwrap_or("").trim();
            if body.is_empty() {
                continue;
            }
            let err = |msg: String| PolicyError::Syntax { line, msg };
            let mut words = body.split_whitespace();
            let verdict = match words.next() {
                Some("allow") => Verdict::Allow,
                Some("deny") => Verdict::Deny,
                Some(w) => return Err(err(format!("expected `allow` or `deny`, got `{w}`"))),
                None => continue,
            };
            let mut terms = Vec::new();
            while let Some(key) = words.next() {
                let mut value = |what: &str| {
                    words
                        .next()
                        .map(str::to_string)
                        .ok_or_else(|| err(format!("`{key}` needs {what}")))
                };
                match key {
                    "all" => {}
                    "command" => terms.push(Term::Command(value("a command name")?)),
                    "vm-name" => terms.push(Term::VmName(value("a VM name")?)),
                    "vm-uuid" => terms.push(Term::VmUuid(value("a UUID")?.to_ascii_lowercase())),
                    "vm-class" => terms.push(Term::VmClass(value("a class")?)),
                    "if-flag" => {
                        let flag = value("a flag name")?;
                        let b = match value("`true` or `false`")?.as_str() {
                            "true" => true,
                            "false" => false,
                            other => {
                                return Err(err(format!(
                                    "`if-flag {flag}` needs `true` or `false`, got `{other}`"
                                )))
                            }
                        };
                        terms.push(Term::Flag(flag, b));
                    }
                    other => return Err(err(format!("unknown match term `{other}`"))),
                }
            }
            rules.push(Rule {
                verdict,
                terms,
                line,
            });
        }
        Ok(Policy { rules })
    }

    /// Read and parse a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Policy::parse(&text)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there is no rule (everything denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decide: default deny, last matching rule wins.
    pub fn decide(&self, s: &Subject<'_>) -> Decision {
        self.rules
            .iter()
            .rev()
            .find(|r| r.terms.iter().all(|t| t.matches(s)))
            .map(|r| Decision {
                verdict: r.verdict,
                line: Some(r.line),
            })
            .unwrap_or(Decision {
                verdict: Verdict::Deny,
                line: None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subj<'a>(cmd: &'a str, name: &'a str, class: &'a str) -> Subject<'a> {
        Subject {
            command: cmd,
            vm_name: name,
            vm_uuid: "AAAA-1",
            vm_class: class,
            flags: None,
        }
    }

    #[test]
    fn default_deny() {
        let p = Policy::deny_all();
        let d = p.decide(&subj("x", "vm", ""));
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.line, None);
        let p = Policy::parse("# nothing\n\n").unwrap();
        assert!(p.is_empty());
        assert_eq!(p.decide(&subj("x", "vm", "")).verdict, Verdict::Deny);
    }

    #[test]
    fn last_match_wins() {
        let p = Policy::parse(
            "deny all\nallow command req-*\ndeny command req-config vm-name evil-*\n",
        )
        .unwrap();
        assert_eq!(p.len(), 3);
        let d = p.decide(&subj("req-config", "web1", ""));
        assert_eq!((d.verdict, d.line), (Verdict::Allow, Some(2)));
        let d = p.decide(&subj("req-config", "evil-1", ""));
        assert_eq!((d.verdict, d.line), (Verdict::Deny, Some(3)));
        let d = p.decide(&subj("other", "web1", ""));
        assert_eq!((d.verdict, d.line), (Verdict::Deny, Some(1)));
    }

    #[test]
    fn class_uuid_and_flags() {
        let p = Policy::parse(
            "allow command log vm-class web if-flag guest-log true # logging VMs\n\
             allow vm-uuid aaaa-* command ping\n",
        )
        .unwrap();
        let mut flags = BTreeMap::new();
        let mut s = subj("log", "a", "web");
        assert_eq!(p.decide(&s).verdict, Verdict::Deny);
        flags.insert("guest-log".to_string(), true);
        s.flags = Some(&flags);
        assert_eq!(p.decide(&s).verdict, Verdict::Allow);
        s.vm_class = "db";
        assert_eq!(p.decide(&s).verdict, Verdict::Deny);
        // UUIDs compare case-insensitively.
        assert_eq!(p.decide(&subj("ping", "a", "")).verdict, Verdict::Allow);
        // `if-flag X false` matches an unset flag.
        let p = Policy::parse("allow if-flag locked false").unwrap();
        assert_eq!(p.decide(&subj("x", "a", "")).verdict, Verdict::Allow);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        for (text, line) in [
            ("allow all\npermit all\n", 2),
            ("allow command\n", 1),
            ("\n\nallow if-flag x maybe\n", 3),
            ("deny dom-colour red\n", 1),
        ] {
            match Policy::parse(text) {
                Err(PolicyError::Syntax { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("a*b*c", "a-b-c"));
        assert!(!glob("a*b*c", "a-c"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }
}
