//! The xl domain configuration file syntax (`xl.cfg(5)`): `KEY = VALUE` settings separated by
//! newlines or `;`, where VALUE is a quoted string (`"…"` or `'…'`), a number, or a list
//! `[ VALUE, … ]` of them. `#` starts a comment. This is the subset libxlu's parser accepts that a
//! domain description for the simulator needs; anything else is a precise error.

use std::collections::BTreeMap;

/// A parsed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A quoted string, escapes resolved.
    Str(String),
    /// A bare number (kept as written).
    Num(String),
    /// A list.
    List(Vec<Value>),
}

impl Value {
    /// The value as a string, when it is a string or a number.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Num(s) => Some(s),
            Value::List(_) => None,
        }
    }
}

/// A syntax error, with the line it is on.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {msg}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
    line: usize,
}

impl Lexer<'_> {
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            line: self.line,
            msg: msg.into(),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    /// Skip blanks and comments; newlines too when `newlines` is set.
    fn skip(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\r' => self.pos += 1,
                b'\n' if newlines => {
                    self.line += 1;
                    self.pos += 1;
                }
                b'#' => {
                    while let Some(c) = self.peek() {
                        if c == b'\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn ident(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == b'_' {
                self.pos += 1;
            } else {
                break;
            }
        }
        if start == self.pos || !self.s[start].is_ascii_alphabetic() && self.s[start] != b'_' {
            return self.err("expected a setting name");
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
    }

    fn string(&mut self, quote: u8) -> Result<String, ParseError> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\n') => return self.err("unterminated string"),
                Some(c) if c == quote => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = match self.peek() {
                        Some(b'n') => b'\n',
                        Some(b't') => b'\t',
                        Some(b'r') => b'\r',
                        Some(b'\\') => b'\\',
                        Some(b'"') => b'"',
                        Some(b'\'') => b'\'',
                        _ => return self.err("unknown escape in string"),
                    };
                    out.push(c);
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        String::from_utf8(out).or_else(|_| self.err("string is not UTF-8"))
    }

    fn value(&mut self, in_list: bool) -> Result<Value, ParseError> {
        self.skip(in_list);
        match self.peek() {
            Some(q @ (b'"' | b'\'')) => Ok(Value::Str(self.string(q)?)),
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip(true);
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.value(true)?);
                    self.skip(true);
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            break;
                        }
                        _ => return self.err("expected `,` or `]` in list"),
                    }
                }
                Ok(Value::List(items))
            }
            Some(c) if c.is_ascii_digit() || c == b'-' => {
                let start = self.pos;
                self.pos += 1;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'.') {
                    self.pos += 1;
                }
                Ok(Value::Num(
                    String::from_utf8_lossy(&self.s[start..self.pos]).into_owned(),
                ))
            }
            _ => self.err("expected a string, a number or a list"),
        }
    }
}

/// Parse a whole configuration file. A setting given twice keeps the last value, as xl does.
pub fn parse(text: &str) -> Result<BTreeMap<String, Value>, ParseError> {
    let mut lx = Lexer {
        s: text.as_bytes(),
        pos: 0,
        line: 1,
    };
    let mut out = BTreeMap::new();
    loop {
        lx.skip(true);
        while lx.peek() == Some(b';') {
            lx.pos += 1;
            lx.skip(true);
        }
        if lx.peek().is_none() {
            break;
        }
        let key = lx.ident()?;
        lx.skip(false);
        if lx.peek() != Some(b'=') {
            return lx.err(format!("expected `=` after `{key}`"));
        }
        lx.pos += 1;
        let value = lx.value(false)?;
        lx.skip(false);
        match lx.peek() {
            None | Some(b'\n') | Some(b';') => {}
            _ => return lx.err(format!("unexpected text after the value of `{key}`")),
        }
        out.insert(key, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_e2e_config() {
        let cfg = parse(
            "name = \"e2e\"\ntype = \"pv\"\nmemory = 256\n\
             vif = [ 'bridge=xenbr0,script=vif-test' ]\n\
             # comment\n\
             channel = [ 'connection=socket,name=a,path=/run/a.sock',\n   'name=b' ]; vcpus=2\n",
        )
        .unwrap();
        assert_eq!(cfg["name"], Value::Str("e2e".into()));
        assert_eq!(cfg["memory"], Value::Num("256".into()));
        assert_eq!(cfg["vcpus"], Value::Num("2".into()));
        assert_eq!(
            cfg["vif"],
            Value::List(vec![Value::Str("bridge=xenbr0,script=vif-test".into())])
        );
        match &cfg["channel"] {
            Value::List(v) => assert_eq!(v.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reports_errors_with_lines() {
        assert_eq!(parse("a = 1\nb 2\n").unwrap_err().line, 2);
        assert!(parse("a = 'x").unwrap_err().msg.contains("unterminated"));
        assert!(parse("a = [ 'x' 'y' ]")
            .unwrap_err()
            .msg
            .contains("expected `,`"));
        assert!(parse("a = 'x' junk")
            .unwrap_err()
            .msg
            .contains("unexpected text"));
        assert!(parse("= 1").is_err());
    }

    #[test]
    fn escapes_and_trailing_commas() {
        let cfg = parse("a = [ \"x\\\"y\", ]\n").unwrap();
        assert_eq!(cfg["a"], Value::List(vec![Value::Str("x\"y".into())]));
    }
}
