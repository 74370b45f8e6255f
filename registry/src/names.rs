//! What a model name, a tag or an alias may be: MLflow's rules (so that
//! what one registry accepts the other does too), plus length bounds on
//! every field.

use crate::{Error, Result};

/// Longest model name, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Longest tag key.
pub const MAX_TAG_KEY_CHARS: usize = 250;
/// Longest tag value.
pub const MAX_TAG_VALUE_CHARS: usize = 100_000;
/// Longest alias.
pub const MAX_ALIAS_CHARS: usize = 255;
/// Longest description, `source`, `run_id` or `run_link`.
pub const MAX_TEXT_CHARS: usize = 65_535;

fn invalid(message: String) -> Error {
    Error::InvalidParameter(message)
}

/// Whether `text` is `.`, `..`, starts with `/` or `..`, or is not its own
/// normalized path (`a//b`, `a/./b`, `a/`): MLflow's "path not unique".
fn path_not_unique(text: &str) -> bool {
    if text.starts_with('/') || text.starts_with("..") || text == "." {
        return true;
    }
    text.split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
}

/// A registered model's name: not blank, no `/` or `:` (MLflow's rule; they
/// separate model and version in URIs), no control characters, at most
/// [`MAX_NAME_CHARS`].
pub fn model_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(invalid("Missing value for parameter 'name'.".into()));
    }
    if name.contains(['/', ':']) {
        return Err(invalid(format!(
            "Invalid model name '{name}'. Names cannot contain '/' or ':'."
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(format!(
            "Invalid model name {name:?}: control characters are not allowed."
        )));
    }
    if name == "." || name == ".." {
        return Err(invalid(format!("Invalid model name '{name}'.")));
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(invalid(format!(
            "Model name is {chars} characters long, at most {MAX_NAME_CHARS} are allowed."
        )));
    }
    Ok(())
}

/// A tag: the key made of letters, digits, `_ - . : /` and spaces, not a
/// path that normalizes to something else, at most [`MAX_TAG_KEY_CHARS`];
/// the value at most [`MAX_TAG_VALUE_CHARS`].
pub fn tag(key: &str, value: &str) -> Result<()> {
    if key.is_empty() {
        return Err(invalid("Missing value for parameter 'key'.".into()));
    }
    if !key
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | ':' | '/'))
    {
        return Err(invalid(format!(
            "Invalid value '{key}' for parameter 'key': names may only contain alphanumerics, \
             underscores (_), dashes (-), periods (.), spaces ( ), colon (:) and slashes (/)."
        )));
    }
    if path_not_unique(key) {
        return Err(invalid(format!(
            "Invalid value '{key}' for parameter 'key': names that are paths must be normalized \
             (no '..', '.', '//', leading or trailing '/')."
        )));
    }
    let chars = key.chars().count();
    if chars > MAX_TAG_KEY_CHARS {
        return Err(invalid(format!(
            "Tag key is {chars} characters long, at most {MAX_TAG_KEY_CHARS} are allowed."
        )));
    }
    let chars = value.chars().count();
    if chars > MAX_TAG_VALUE_CHARS {
        return Err(invalid(format!(
            "Tag value is {chars} characters long, at most {MAX_TAG_VALUE_CHARS} are allowed."
        )));
    }
    Ok(())
}

/// An alias: letters, digits, `_` and `-`, at most [`MAX_ALIAS_CHARS`];
/// `latest` (any case) and `v<digits>` are reserved (MLflow resolves them
/// to versions).
pub fn alias(alias: &str) -> Result<()> {
    if alias.is_empty() {
        return Err(invalid(
            "Registered model alias name cannot be empty.".into(),
        ));
    }
    if !alias
        .chars()
        .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(format!(
            "Invalid alias name: '{alias}'. Names may only contain alphanumerics, underscores (_), and dashes (-)."
        )));
    }
    if alias.chars().count() > MAX_ALIAS_CHARS {
        return Err(invalid(format!(
            "Alias is longer than {MAX_ALIAS_CHARS} characters."
        )));
    }
    if alias.eq_ignore_ascii_case("latest") {
        return Err(invalid(
            "'latest' alias name (case insensitive) is reserved.".into(),
        ));
    }
    let mut chars = alias.chars();
    if matches!(chars.next(), Some('v' | 'V'))
        && alias.len() > 1
        && chars.all(|c| c.is_ascii_digit())
    {
        return Err(invalid(format!(
            "Version alias name '{alias}' is reserved."
        )));
    }
    Ok(())
}

/// A free-text field (`field` names it in the error).
pub fn text(field: &str, value: &str) -> Result<()> {
    let chars = value.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(invalid(format!(
            "'{field}' is {chars} characters long, at most {MAX_TEXT_CHARS} are allowed."
        )));
    }
    Ok(())
}

/// A version number as the API carries it (a decimal string ≥ 1).
pub fn version(version: &str) -> Result<i64> {
    match version.trim().parse::<i64>() {
        Ok(number) if number >= 1 => Ok(number),
        _ => Err(invalid(format!(
            "Parameter 'version' must be an integer ≥ 1, got '{version}'."
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_mlflow_rules_and_bounds() {
        for good in ["churn", "churn model v2", "fraud.detector-3", "é"] {
            model_name(good).unwrap();
        }
        for bad in ["", "  ", "a/b", "a:b", "..", "tab\there"] {
            assert!(model_name(bad).is_err(), "{bad:?}");
        }
        assert!(model_name(&"x".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(model_name(&"x".repeat(MAX_NAME_CHARS + 1)).is_err());
    }

    #[test]
    fn tags_and_aliases_follow_mlflow_rules() {
        tag("tidewatch.reference", "file:///data/train.csv").unwrap();
        tag("team/owner", "ml platform").unwrap();
        for bad in ["", "a//b", "/a", "a/", "../x", "semi;colon", "a/./b"] {
            assert!(tag(bad, "v").is_err(), "{bad:?}");
        }
        assert!(tag("k", &"v".repeat(MAX_TAG_VALUE_CHARS + 1)).is_err());
        for good in ["champion", "challenger", "shadow-2", "v1a", "v"] {
            alias(good).unwrap();
        }
        for bad in ["", "latest", "LATEST", "v1", "V23", "has space", "a.b"] {
            assert!(alias(bad).is_err(), "{bad:?}");
        }
        assert_eq!(version("12").unwrap(), 12);
        assert!(version("0").is_err() && version("x").is_err());
    }
}
