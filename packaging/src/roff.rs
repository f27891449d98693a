//! The hand-written parts of the man pages are kept in a small Markdown subset
//! (`packaging/man/*.md`), readable and reviewable in the repository, and turned into man(7)
//! roff here:
//!
//! * `# TITLE` → `.SH TITLE`; `## Title` → `.SS Title`;
//! * a blank line separates paragraphs (`.PP`);
//! * `> term` starts a tagged paragraph (`.TP`): the term, then the following lines as its body;
//! * `* item` is a bullet (`.IP \(bu 2`); continuation lines are indented by two spaces;
//! * a fenced block (```` ``` ````) is shown as is (`.EX`/`.EE`, indented);
//! * inline: `` `code` `` is bold, `*word*` italic; `\`, leading `.`/`'` and the hyphens of
//!   code and options are escaped, so what a reader copies is what they must type.

/// Escape text for roff (not at line start: see [`line`]).
fn escape(s: &str, code: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev = ' ';
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            // In code every hyphen is one the reader types; in prose only an option's leading
            // hyphens are (a word starting with `-`).
            '-' if code || prev == ' ' || prev == '-' || prev == '(' => out.push_str("\\-"),
            _ => out.push(c),
        }
        prev = c;
    }
    out
}

/// Inline formatting of one line of prose.
pub fn inline(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('`') {
            if let Some(end) = r.find('`') {
                out.push_str("\\fB");
                out.push_str(&escape(&r[..end], true));
                out.push_str("\\fR");
                rest = &r[end + 1..];
                continue;
            }
        }
        if let Some(r) = rest.strip_prefix("**") {
            if let Some(end) = r.find("**") {
                out.push_str("\\fB");
                out.push_str(&escape(&r[..end], false));
                out.push_str("\\fR");
                rest = &r[end + 2..];
                continue;
            }
        }
        if let Some(r) = rest.strip_prefix('*') {
            if let Some(end) = r.find('*') {
                let span = &r[..end];
                if !span.is_empty() && !span.starts_with(' ') && !span.ends_with(' ') {
                    out.push_str("\\fI");
                    out.push_str(&escape(&r[..end], false));
                    out.push_str("\\fR");
                    rest = &r[end + 1..];
                    continue;
                }
            }
        }
        let next = rest
            .char_indices()
            .skip(1)
            .find(|(_, c)| *c == '`' || *c == '*')
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        // Keep the previous character's context for option hyphens.
        let prefix_space = out.is_empty() || out.ends_with(' ');
        let chunk = &rest[..next];
        let esc = if prefix_space {
            escape(chunk, false)
        } else {
            // Not at a word start: a leading hyphen is a hyphen.
            let mut e = escape(&format!("x{chunk}"), false);
            e.remove(0);
            e
        };
        out.push_str(&esc);
        rest = &rest[next..];
    }
    out
}

/// A roff text line: protect a leading `.` or `'` (they would be control lines).
pub fn line(s: &str) -> String {
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s.to_string()
    }
}

/// Convert the Markdown subset to roff.
pub fn markdown(text: &str) -> String {
    let mut out = Vec::<String>::new();
    let mut lines = text.lines().peekable();
    let mut need_pp = false;
    while let Some(l) = lines.next() {
        if let Some(h) = l.strip_prefix("# ") {
            out.push(format!(".SH {}", h.trim().to_uppercase()));
            need_pp = false;
        } else if let Some(h) = l.strip_prefix("## ") {
            out.push(format!(".SS {}", line(&inline(h.trim()))));
            need_pp = false;
        } else if l.trim_start().starts_with("```") {
            out.push(".PP".into());
            out.push(".RS 4".into());
            out.push(".EX".into());
            for c in lines.by_ref() {
                if c.trim_start().starts_with("```") {
                    break;
                }
                out.push(line(&escape(c, true)));
            }
            out.push(".EE".into());
            out.push(".RE".into());
            need_pp = true;
        } else if let Some(t) = l.strip_prefix("> ") {
            out.push(".TP".into());
            out.push(line(&inline(t.trim())));
            need_pp = false;
        } else if let Some(t) = l.strip_prefix("* ") {
            out.push(".IP \\(bu 2".into());
            out.push(line(&inline(t.trim())));
            while let Some(c) = lines.peek() {
                if let Some(cont) = c.strip_prefix("  ") {
                    out.push(line(&inline(cont.trim())));
                    lines.next();
                } else {
                    break;
                }
            }
            need_pp = true;
        } else if l.trim().is_empty() {
            need_pp = true;
        } else {
            if need_pp {
                out.push(".PP".into());
                need_pp = false;
            }
            out.push(line(&inline(l.trim())));
        }
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_code_options_and_escapes() {
        assert_eq!(inline("run `vif-bridge`"), "run \\fBvif\\-bridge\\fR");
        assert_eq!(inline("use --json or -x"), "use \\-\\-json or \\-x");
        assert_eq!(inline("read-only and *emph*"), "read-only and \\fIemph\\fR");
        assert_eq!(inline("a \\ b"), "a \\e b");
        assert_eq!(inline("2 * 3 * 4"), "2 * 3 * 4");
        assert_eq!(inline("**xenplug** package"), "\\fBxenplug\\fR package");
    }

    #[test]
    fn blocks() {
        let r = markdown(
            "# exit status\n> `0`\nsuccess\n\n.dot line\n* item\n  more\n```\n.x -y\n```\n",
        );
        assert_eq!(
            r,
            ".SH EXIT STATUS\n.TP\n\\fB0\\fR\nsuccess\n.PP\n\\&.dot line\n.IP \\(bu 2\nitem\nmore\n\
             .PP\n.RS 4\n.EX\n\\&.x \\-y\n.EE\n.RE\n"
        );
    }
}
