//! Message templates: `{field}` placeholders filled from a notification's fields; `{{` and
//! `}}` stand for literal braces. Templates are checked when the config loads.

use std::collections::BTreeMap;

/// The fields a template may use.
pub const FIELDS: &[&str] = &[
    "event",
    "event_text",
    "node",
    "role",
    "previous_role",
    "term",
    "leader",
    "previous_leader",
    "reason",
    "peer",
    "driver",
    "detail",
    "time",
];

/// The fields that are numbers (the term): the webhook's JSON carries them as JSON numbers,
/// so a consumer compares terms without parsing.
pub(crate) const NUMBER_FIELDS: &[&str] = &["term"];

/// `value` of `field` as JSON: a number for [`NUMBER_FIELDS`] (`null` if it is not one,
/// never a string), a string otherwise.
pub(crate) fn json_value(field: &str, value: &str) -> serde_json::Value {
    if NUMBER_FIELDS.contains(&field) {
        return value
            .parse::<u64>()
            .map_or(serde_json::Value::Null, serde_json::Value::from);
    }
    value.into()
}

/// A checked template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    /// Checks `text`: every placeholder must be one of [`FIELDS`], braces balanced.
    pub fn new(text: &str) -> Result<Self, String> {
        render_with(text, &mut |name| {
            if FIELDS.contains(&name) {
                Ok(String::new())
            } else {
                Err(format!(
                    "unknown placeholder {{{name}}}; known: {}",
                    FIELDS.join(", ")
                ))
            }
        })?;
        Ok(Self(text.to_owned()))
    }

    /// Fills the placeholders from `fields` (missing ones render empty).
    pub fn render(&self, fields: &BTreeMap<&'static str, String>) -> String {
        render_with(&self.0, &mut |name| {
            Ok(fields.get(name).cloned().unwrap_or_default())
        })
        .unwrap_or_else(|_| self.0.clone())
    }
}

fn render_with(
    text: &str,
    field: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err("unmatched `}` (write `}}` for a literal brace)".into());
        } else {
            let Some(end) = tail.find('}') else {
                return Err("unclosed `{` (write `{{` for a literal brace)".into());
            };
            out.push_str(&field(&tail[1..end])?);
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fields_and_escapes() {
        let t = Template::new("{{{node}}} is {role} in term {term}").expect("valid");
        let fields = BTreeMap::from([("node", "n1".to_owned()), ("role", "master".to_owned())]);
        assert_eq!(t.render(&fields), "{n1} is master in term ");
    }

    #[test]
    fn the_term_is_a_json_number_and_the_rest_strings() {
        assert_eq!(json_value("term", "42"), serde_json::json!(42));
        assert_eq!(json_value("term", ""), serde_json::Value::Null);
        assert_eq!(json_value("node", "42"), serde_json::json!("42"));
        assert!(NUMBER_FIELDS.iter().all(|f| FIELDS.contains(f)));
    }

    #[test]
    fn rejects_unknown_and_unbalanced() {
        assert!(
            Template::new("{nope}")
                .unwrap_err()
                .contains("unknown placeholder {nope}")
        );
        assert!(Template::new("a { b").unwrap_err().contains("unclosed"));
        assert!(Template::new("a } b").unwrap_err().contains("unmatched"));
    }
}
