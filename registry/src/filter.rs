//! The `filter` strings of MLflow's search calls, parsed once into
//! conditions and evaluated on models and versions.
//!
//! Grammar (MLflow's, the subset its registry documents): conditions joined
//! by `AND` (any case), each `<attribute> <comparator> <value>`:
//!
//! - `name`, `run_id`, `source_path` (versions only for the last two) and
//!   `tags.<key>` (the key quoted with backticks or double quotes when it
//!   has spaces or dots): `=`, `!=`, `LIKE`, `ILIKE` with a quoted string
//!   (`%` any run of characters, `_` one character; `ILIKE` ignores case);
//!   `run_id IN ('a', 'b')`;
//! - `version_number` (versions): `=`, `!=`, `<`, `<=`, `>`, `>=` with an
//!   integer.
//!
//! Anything else is refused with `INVALID_PARAMETER_VALUE`, naming what was
//! not understood.

use crate::entities::{ModelVersion, RegisteredModel, Tag};
use crate::{Error, Result};

/// What a search runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    RegisteredModels,
    ModelVersions,
}

/// An attribute a condition tests.
#[derive(Debug, Clone, PartialEq)]
enum Attribute {
    Name,
    RunId,
    SourcePath,
    Tag(String),
    VersionNumber,
}

/// A comparison.
#[derive(Debug, Clone, PartialEq)]
enum Test {
    Equals(String),
    NotEquals(String),
    Like(String),
    ILike(String),
    In(Vec<String>),
    Number(NumberOp, i64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum NumberOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed filter: every condition must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    conditions: Vec<(Attribute, Test)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Number(i64),
    Operator(String),
    Open,
    Close,
    Comma,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidParameter(message.into())
}

fn tokenize(text: &str) -> Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            ')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            '\'' | '"' | '`' => {
                let quote = c;
                let mut value = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(invalid(format!(
                                "Invalid filter '{text}': unterminated {quote}"
                            )))
                        }
                        // A doubled quote stands for itself.
                        Some(&q) if q == quote && chars.get(i + 1) == Some(&quote) => {
                            value.push(quote);
                            i += 2;
                        }
                        Some(&q) if q == quote => {
                            i += 1;
                            break;
                        }
                        Some(&other) => {
                            value.push(other);
                            i += 1;
                        }
                    }
                }
                // A backticked word is an identifier part (tags.`my key`).
                if quote == '`' {
                    match tokens.last_mut() {
                        Some(Token::Word(word)) if word.ends_with('.') => word.push_str(&value),
                        _ => tokens.push(Token::Word(value)),
                    }
                } else if quote == '"'
                    && matches!(tokens.last(), Some(Token::Word(w)) if w.ends_with('.'))
                {
                    if let Some(Token::Word(word)) = tokens.last_mut() {
                        word.push_str(&value);
                    }
                } else {
                    tokens.push(Token::Quoted(value));
                }
            }
            '=' | '!' | '<' | '>' => {
                let mut op = c.to_string();
                if chars.get(i + 1) == Some(&'=') {
                    op.push('=');
                    i += 1;
                }
                if op == "!" {
                    return Err(invalid(format!("Invalid filter '{text}': '!' without '='")));
                }
                tokens.push(Token::Operator(op));
                i += 1;
            }
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += 1;
                while chars.get(i).is_some_and(|c| c.is_ascii_digit()) {
                    i += 1;
                }
                let number: String = chars[start..i].iter().collect();
                tokens.push(Token::Number(number.parse().map_err(|_| {
                    invalid(format!("Invalid filter '{text}': bad number '{number}'"))
                })?));
            }
            c if c.is_alphanumeric() || c == '_' || c == '.' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_' || *c == '.' || *c == '-')
                {
                    i += 1;
                }
                tokens.push(Token::Word(chars[start..i].iter().collect()));
            }
            other => {
                return Err(invalid(format!(
                    "Invalid filter '{text}': unexpected character '{other}'"
                )))
            }
        }
    }
    Ok(tokens)
}

impl Filter {
    /// Parses `text` for a search over `subject` (empty: everything).
    pub fn parse(text: &str, subject: Subject) -> Result<Self> {
        let tokens = tokenize(text)?;
        let mut conditions = Vec::new();
        let mut rest = tokens.as_slice();
        while !rest.is_empty() {
            let (attribute, after) = match rest {
                [Token::Word(word), after @ ..] => (attribute(word, subject, text)?, after),
                _ => {
                    return Err(invalid(format!(
                        "Invalid filter '{text}': expected an attribute"
                    )))
                }
            };
            let (test, after) = comparison(&attribute, after, text)?;
            conditions.push((attribute, test));
            rest = match after {
                [] => after,
                [Token::Word(and), after @ ..]
                    if and.eq_ignore_ascii_case("and") && !after.is_empty() =>
                {
                    after
                }
                _ => {
                    return Err(invalid(format!(
                        "Invalid filter '{text}': conditions are joined by AND"
                    )))
                }
            };
        }
        Ok(Self { conditions })
    }

    /// Whether `model` passes.
    pub fn matches_model(&self, model: &RegisteredModel) -> bool {
        self.conditions
            .iter()
            .all(|(attribute, test)| match attribute {
                Attribute::Name => test.holds(&model.name),
                Attribute::Tag(key) => tag_holds(&model.tags, key, test),
                _ => false,
            })
    }

    /// Whether `version` passes.
    pub fn matches_version(&self, version: &ModelVersion) -> bool {
        self.conditions
            .iter()
            .all(|(attribute, test)| match attribute {
                Attribute::Name => test.holds(&version.name),
                Attribute::RunId => test.holds(&version.run_id),
                Attribute::SourcePath => test.holds(&version.source),
                Attribute::Tag(key) => tag_holds(&version.tags, key, test),
                Attribute::VersionNumber => match test {
                    Test::Number(op, value) => {
                        let number = version.number();
                        match op {
                            NumberOp::Eq => number == *value,
                            NumberOp::Ne => number != *value,
                            NumberOp::Lt => number < *value,
                            NumberOp::Le => number <= *value,
                            NumberOp::Gt => number > *value,
                            NumberOp::Ge => number >= *value,
                        }
                    }
                    _ => false,
                },
            })
    }

    /// The exact model name the filter requires, if it requires one (lets
    /// the store read one model's versions only).
    pub fn exact_name(&self) -> Option<&str> {
        self.conditions
            .iter()
            .find_map(|(attribute, test)| match (attribute, test) {
                (Attribute::Name, Test::Equals(name)) => Some(name.as_str()),
                _ => None,
            })
    }
}

/// A tag condition: `!=` also holds when the tag is absent.
fn tag_holds(tags: &[Tag], key: &str, test: &Test) -> bool {
    match tags.iter().find(|tag| tag.key == key) {
        Some(tag) => test.holds(&tag.value),
        None => matches!(test, Test::NotEquals(_)),
    }
}

fn attribute(word: &str, subject: Subject, text: &str) -> Result<Attribute> {
    let lower = word.to_ascii_lowercase();
    if let Some(key) = word
        .strip_prefix("tags.")
        .or_else(|| word.strip_prefix("tag."))
    {
        if key.is_empty() {
            return Err(invalid(format!("Invalid filter '{text}': empty tag key")));
        }
        return Ok(Attribute::Tag(key.to_owned()));
    }
    let versions_only = |attribute| match subject {
        Subject::ModelVersions => Ok(attribute),
        Subject::RegisteredModels => Err(invalid(format!(
            "Invalid filter '{text}': '{word}' is an attribute of model versions; registered \
             models are searched by name and tags"
        ))),
    };
    match lower.as_str() {
        "name" => Ok(Attribute::Name),
        "run_id" => versions_only(Attribute::RunId),
        "source_path" => versions_only(Attribute::SourcePath),
        "version_number" => versions_only(Attribute::VersionNumber),
        _ => Err(invalid(format!(
            "Invalid filter '{text}': unknown attribute '{word}' (name, tags.<key>, and for \
             versions run_id, source_path, version_number)"
        ))),
    }
}

fn comparison<'t>(
    attribute: &Attribute,
    tokens: &'t [Token],
    text: &str,
) -> Result<(Test, &'t [Token])> {
    let bad = |what: &str| invalid(format!("Invalid filter '{text}': {what}"));
    if *attribute == Attribute::VersionNumber {
        return match tokens {
            [Token::Operator(op), Token::Number(value), rest @ ..] => {
                let op = match op.as_str() {
                    "=" => NumberOp::Eq,
                    "!=" => NumberOp::Ne,
                    "<" => NumberOp::Lt,
                    "<=" => NumberOp::Le,
                    ">" => NumberOp::Gt,
                    ">=" => NumberOp::Ge,
                    _ => return Err(bad("unknown comparator")),
                };
                Ok((Test::Number(op, *value), rest))
            }
            _ => Err(bad("version_number is compared with an integer")),
        };
    }
    match tokens {
        [Token::Operator(op), Token::Quoted(value), rest @ ..] => {
            let test = match op.as_str() {
                "=" => Test::Equals(value.clone()),
                "!=" => Test::NotEquals(value.clone()),
                _ => {
                    return Err(bad(&format!(
                        "'{op}' compares numbers; strings take =, !=, LIKE, ILIKE"
                    )))
                }
            };
            Ok((test, rest))
        }
        [Token::Word(op), Token::Quoted(value), rest @ ..] if op.eq_ignore_ascii_case("like") => {
            Ok((Test::Like(value.clone()), rest))
        }
        [Token::Word(op), Token::Quoted(value), rest @ ..] if op.eq_ignore_ascii_case("ilike") => {
            Ok((Test::ILike(value.clone()), rest))
        }
        [Token::Word(op), Token::Open, rest @ ..] if op.eq_ignore_ascii_case("in") => {
            if *attribute != Attribute::RunId {
                return Err(bad("IN is supported for run_id only"));
            }
            let mut values = Vec::new();
            let mut rest = rest;
            loop {
                match rest {
                    [Token::Quoted(value), Token::Comma, after @ ..] => {
                        values.push(value.clone());
                        rest = after;
                    }
                    [Token::Quoted(value), Token::Close, after @ ..] => {
                        values.push(value.clone());
                        return Ok((Test::In(values), after));
                    }
                    _ => return Err(bad("IN takes a list of quoted strings")),
                }
            }
        }
        _ => Err(bad("expected a comparator and a quoted string")),
    }
}

impl Test {
    fn holds(&self, value: &str) -> bool {
        match self {
            Test::Equals(expected) => value == expected,
            Test::NotEquals(expected) => value != expected,
            Test::Like(pattern) => like(pattern, value, false),
            Test::ILike(pattern) => like(pattern, value, true),
            Test::In(values) => values.iter().any(|v| v == value),
            Test::Number(..) => false,
        }
    }
}

/// SQL `LIKE`: `%` any run of characters, `_` one character.
fn like(pattern: &str, value: &str, ignore_case: bool) -> bool {
    let fold = |s: &str| -> Vec<char> {
        if ignore_case {
            s.to_lowercase().chars().collect()
        } else {
            s.chars().collect()
        }
    };
    let (pattern, value) = (fold(pattern), fold(value));
    // Iterative matching with backtracking to the last `%`.
    let (mut p, mut v) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        if p < pattern.len() && (pattern[p] == '_' || pattern[p] == value[v]) {
            p += 1;
            v += 1;
        } else if p < pattern.len() && pattern[p] == '%' {
            star = Some((p, v));
            p += 1;
        } else if let Some((star_p, star_v)) = star {
            p = star_p + 1;
            v = star_v + 1;
            star = Some((star_p, star_v + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '%')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(name: &str, number: i64, run_id: &str, tags: &[(&str, &str)]) -> ModelVersion {
        ModelVersion {
            name: name.into(),
            version: number.to_string(),
            creation_timestamp: 0,
            last_updated_timestamp: 0,
            user_id: String::new(),
            current_stage: "None".into(),
            description: String::new(),
            source: format!("s3://models/{name}/{number}"),
            run_id: run_id.into(),
            status: "READY".into(),
            run_link: String::new(),
            tags: tags
                .iter()
                .map(|(k, v)| Tag {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            aliases: Vec::new(),
        }
    }

    #[test]
    fn like_matches_sql_semantics() {
        assert!(like("churn%", "churn-model", false));
        assert!(like("%model", "churn-model", false));
        assert!(like("c_urn", "churn", false));
        assert!(like("%u%n%", "churn", false));
        assert!(!like("Churn%", "churn", false));
        assert!(like("Churn%", "churn", true));
        assert!(!like("churn_", "churn", false));
        assert!(like("%", "", false));
        assert!(like("a%b%c", "aXXbYYc", false));
        assert!(!like("a%b%c", "aXXbYY", false));
    }

    #[test]
    fn conditions_combine_with_and() {
        let v = version(
            "churn",
            3,
            "abc123",
            &[("team", "growth"), ("data set", "q3")],
        );
        let parse = |text: &str| Filter::parse(text, Subject::ModelVersions).unwrap();
        assert!(parse("").matches_version(&v));
        assert!(parse("name = 'churn'").matches_version(&v));
        assert!(parse("name='churn' AND run_id = 'abc123'").matches_version(&v));
        assert!(!parse("name='churn' and run_id = 'other'").matches_version(&v));
        assert!(parse("run_id IN ('x', 'abc123')").matches_version(&v));
        assert!(parse("tags.team = 'growth'").matches_version(&v));
        assert!(parse("tags.`data set` LIKE 'q%'").matches_version(&v));
        assert!(parse("tags.absent != 'x'").matches_version(&v));
        assert!(!parse("tags.absent = 'x'").matches_version(&v));
        assert!(parse("version_number >= 3 AND version_number < 4").matches_version(&v));
        assert!(parse("name ILIKE 'CH%'").matches_version(&v));
        assert!(parse("source_path = 's3://models/churn/3'").matches_version(&v));
        assert_eq!(parse("name = 'churn'").exact_name(), Some("churn"));
        assert_eq!(parse("name = 'it''s'").exact_name(), Some("it's"));
    }

    #[test]
    fn what_is_not_understood_is_refused() {
        for bad in [
            "name",
            "name = churn",
            "name > 'a'",
            "owner = 'x'",
            "name = 'a' OR name = 'b'",
            "name = 'a' AND",
            "version_number = 'x'",
            "name IN ('a')",
            "name = 'unterminated",
        ] {
            let error = Filter::parse(bad, Subject::ModelVersions).unwrap_err();
            assert_eq!(error.code(), "INVALID_PARAMETER_VALUE", "{bad}");
        }
        assert!(Filter::parse("run_id = 'x'", Subject::RegisteredModels).is_err());
        assert!(
            Filter::parse("name LIKE 'c%' AND tags.k = 'v'", Subject::RegisteredModels).is_ok()
        );
    }
}
