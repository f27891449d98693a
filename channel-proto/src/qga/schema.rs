//! Argument schemas and their checking, worded as qemu-ga words it.
//!
//! qemu-ga checks a command's `arguments` against its QAPI schema before the command runs, and
//! management tools match on its messages. [`check`] walks the arguments the same way — members
//! in schema order (a missing or mistyped member is reported first), then members the schema does
//! not have — and produces the same `GenericError` descriptions:
//!
//! * `Parameter 'vcpus[0].online' is missing`
//! * `Parameter 'extra' is unexpected`
//! * `Invalid parameter type for 'id', expected: integer`
//! * `Parameter 'whence' does not accept value 'foo'`
//!
//! (Observed on Debian 12's qemu-ga 7.2; `channel-proto` unit tests pin each wording.)

use serde_json::{Map, Value};

/// A QAPI type, as far as qemu-ga's commands use them.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    /// `int` (a JSON integer that fits in 64 signed bits).
    Int,
    /// `uint64` (a JSON integer that fits in 64 unsigned bits).
    U64,
    /// `number` (any JSON number).
    Num,
    /// `str`.
    Str,
    /// `bool`.
    Bool,
    /// `[T]`.
    List(&'static Ty),
    /// A struct with these members.
    Struct(&'static [Member]),
    /// An enum: the type's name and its values.
    Enum(&'static str, &'static [&'static str]),
    /// An alternate (`GuestFileWhence`: an integer or a `QGASeek` name): its name and its
    /// branches, tried by JSON type.
    Alternate(&'static str, &'static [Ty]),
    /// xenplug's own commands: checked by their typed decoding instead.
    Any,
}

/// A struct member (or a command argument).
#[derive(Debug, Clone, Copy)]
pub struct Member {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub ty: Ty,
    /// May be omitted (`'*name'` in the schema).
    pub optional: bool,
}

/// A required member.
pub const fn req(name: &'static str, ty: Ty) -> Member {
    Member {
        name,
        ty,
        optional: false,
    }
}

/// An optional member.
pub const fn opt(name: &'static str, ty: Ty) -> Member {
    Member {
        name,
        ty,
        optional: true,
    }
}

fn type_name(ty: &Ty) -> &'static str {
    match ty {
        Ty::Int => "integer",
        Ty::U64 => "uint64",
        Ty::Num => "number",
        Ty::Str => "string",
        Ty::Bool => "boolean",
        Ty::List(_) => "array",
        Ty::Struct(_) => "object",
        Ty::Enum(..) => "string",
        Ty::Alternate(name, _) => name,
        Ty::Any => "any",
    }
}

fn invalid(path: &str, ty: &Ty) -> String {
    format!(
        "Invalid parameter type for '{path}', expected: {}",
        type_name(ty)
    )
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Does `v` have the JSON type an alternate branch `ty` takes?
fn branch_matches(ty: &Ty, v: &Value) -> bool {
    match ty {
        Ty::Int | Ty::U64 | Ty::Num => v.is_number(),
        Ty::Str | Ty::Enum(..) => v.is_string(),
        Ty::Bool => v.is_boolean(),
        Ty::List(_) => v.is_array(),
        Ty::Struct(_) => v.is_object(),
        Ty::Alternate(..) | Ty::Any => true,
    }
}

fn check_value(path: &str, ty: &Ty, v: &Value) -> Result<(), String> {
    match ty {
        Ty::Any => Ok(()),
        Ty::Int => match v.as_i64() {
            Some(_) => Ok(()),
            None => Err(invalid(path, ty)),
        },
        Ty::U64 => match v.as_u64() {
            Some(_) => Ok(()),
            None => Err(invalid(path, ty)),
        },
        Ty::Num => match v.is_number() {
            true => Ok(()),
            false => Err(invalid(path, ty)),
        },
        Ty::Str => match v.is_string() {
            true => Ok(()),
            false => Err(invalid(path, ty)),
        },
        Ty::Bool => match v.is_boolean() {
            true => Ok(()),
            false => Err(invalid(path, ty)),
        },
        Ty::Enum(_, values) => match v.as_str() {
            Some(s) if values.contains(&s) => Ok(()),
            Some(s) => Err(format!("Parameter '{path}' does not accept value '{s}'")),
            None => Err(invalid(path, ty)),
        },
        Ty::List(item) => match v.as_array() {
            Some(items) => {
                for (i, x) in items.iter().enumerate() {
                    check_value(&format!("{path}[{i}]"), item, x)?;
                }
                Ok(())
            }
            None => Err(invalid(path, ty)),
        },
        Ty::Struct(members) => match v.as_object() {
            Some(m) => check_members(path, members, m),
            None => Err(invalid(path, ty)),
        },
        Ty::Alternate(_, branches) => match branches.iter().find(|b| branch_matches(b, v)) {
            Some(b) => check_value(path, b, v),
            None => Err(invalid(path, ty)),
        },
    }
}

fn check_members(path: &str, members: &[Member], obj: &Map<String, Value>) -> Result<(), String> {
    for m in members {
        match obj.get(m.name) {
            None if m.optional => {}
            None => return Err(format!("Parameter '{}' is missing", child(path, m.name))),
            Some(v) => check_value(&child(path, m.name), &m.ty, v)?,
        }
    }
    if let Some(k) = obj.keys().find(|k| !members.iter().any(|m| m.name == *k)) {
        return Err(format!("Parameter '{}' is unexpected", child(path, k)));
    }
    Ok(())
}

/// Check a command's arguments (absent means `{}`) against its members.
pub fn check(members: &[Member], args: Option<&Map<String, Value>>) -> Result<(), String> {
    let empty = Map::new();
    check_members("", members, args.unwrap_or(&empty))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LP: &[Member] = &[
        req("logical-id", Ty::Int),
        req("online", Ty::Bool),
        opt("can-offline", Ty::Bool),
    ];
    const SET_VCPUS: &[Member] = &[req("vcpus", Ty::List(&Ty::Struct(LP)))];
    const SEEK: &[Member] = &[
        req("handle", Ty::Int),
        req("offset", Ty::Int),
        req(
            "whence",
            Ty::Alternate(
                "GuestFileWhence",
                &[Ty::Int, Ty::Enum("QGASeek", &["set", "cur", "end"])],
            ),
        ),
    ];

    fn err(members: &[Member], v: Value) -> String {
        check(members, v.as_object()).unwrap_err()
    }

    /// Each wording as Debian's qemu-ga 7.2 answered the same arguments.
    #[test]
    fn qemu_ga_wordings() {
        assert_eq!(
            err(SET_VCPUS, json!({"vcpus": [{"logical-id": 0}]})),
            "Parameter 'vcpus[0].online' is missing"
        );
        assert_eq!(
            err(
                SET_VCPUS,
                json!({"vcpus": [{"logical-id": "x", "online": true}]})
            ),
            "Invalid parameter type for 'vcpus[0].logical-id', expected: integer"
        );
        assert_eq!(
            err(SET_VCPUS, json!({"vcpus": {}})),
            "Invalid parameter type for 'vcpus', expected: array"
        );
        assert_eq!(
            err(
                SET_VCPUS,
                json!({"vcpus": [{"logical-id": 0, "online": true, "extra": 1}]})
            ),
            "Parameter 'vcpus[0].extra' is unexpected"
        );
        assert_eq!(
            err(SEEK, json!({"handle": 1, "offset": 0, "whence": "foo"})),
            "Parameter 'whence' does not accept value 'foo'"
        );
        assert_eq!(
            err(SEEK, json!({"handle": 1, "offset": 0, "whence": true})),
            "Invalid parameter type for 'whence', expected: GuestFileWhence"
        );
        assert_eq!(
            err(SEEK, json!({"handle": 1, "offset": 0})),
            "Parameter 'whence' is missing"
        );
        assert!(check(
            SEEK,
            json!({"handle": 1, "offset": 0, "whence": 7}).as_object()
        )
        .is_ok());
        let id: &[Member] = &[req("id", Ty::Int)];
        assert_eq!(
            err(id, json!({"id": 1.0})),
            "Invalid parameter type for 'id', expected: integer"
        );
        assert_eq!(
            err(id, json!({"id": 18446744073709551615u64})),
            "Invalid parameter type for 'id', expected: integer"
        );
        assert_eq!(err(id, json!({})), "Parameter 'id' is missing");
        assert_eq!(err(&[], json!({"a": 1})), "Parameter 'a' is unexpected");
        assert!(check(&[], None).is_ok());
        let arg: &[Member] = &[req("path", Ty::Str), opt("arg", Ty::List(&Ty::Str))];
        assert_eq!(
            err(arg, json!({"path": "/bin/true", "arg": [1]})),
            "Invalid parameter type for 'arg[0]', expected: string"
        );
    }
}
