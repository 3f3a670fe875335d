//! Custom upstream auth headers (VAL-5, VAL-6, VAL-7).

use crate::{Error, Result};

/// Default header name.
pub const DEFAULT_NAME: &str = "Authorization";
/// Default header value template.
pub const DEFAULT_FORMAT: &str = "Bearer {api_key}";

/// VAL-6: trimmed, non-empty HTTP token, not `Content-Type`.
pub fn validate_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(Error::invalid("auth_header_name must not be empty"));
    }
    let token = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(Error::invalid(format!("auth_header_name '{name}' is not a valid HTTP header name")));
    }
    if name.eq_ignore_ascii_case("content-type") {
        return Err(Error::invalid("auth_header_name must not be Content-Type"));
    }
    Ok(name.to_owned())
}

/// One piece of a parsed format template.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Brace(char),
    Key,
}

fn parse(format: &str) -> Result<Vec<Piece<'_>>> {
    let mut pieces = Vec::new();
    let bytes = format.as_bytes();
    let (mut i, mut text_start) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'}' if bytes.get(i + 1) == Some(&bytes[i]) => {
                pieces.push(Piece::Text(&format[text_start..i]));
                pieces.push(Piece::Brace(bytes[i] as char));
                i += 2;
                text_start = i;
            }
            b'{' => {
                let Some(close) = format[i..].find('}') else {
                    return Err(Error::invalid("auth_header_format has an unclosed '{'"));
                };
                let field = &format[i + 1..i + close];
                if field != "api_key" {
                    return Err(Error::invalid(format!(
                        "auth_header_format may only use the {{api_key}} placeholder, found '{{{field}}}'"
                    )));
                }
                pieces.push(Piece::Text(&format[text_start..i]));
                pieces.push(Piece::Key);
                i += close + 1;
                text_start = i;
            }
            b'}' => return Err(Error::invalid("auth_header_format has an unmatched '}'")),
            _ => i += 1,
        }
    }
    pieces.push(Piece::Text(&format[text_start..]));
    Ok(pieces)
}

/// VAL-7: trimmed, non-empty, at least one `{api_key}`, no other placeholder.
pub fn validate_format(raw: &str) -> Result<String> {
    let format = raw.trim();
    if format.is_empty() {
        return Err(Error::invalid("auth_header_format must not be empty"));
    }
    let pieces = parse(format)?;
    if !pieces.contains(&Piece::Key) {
        return Err(Error::invalid("auth_header_format must include the {api_key} placeholder"));
    }
    Ok(format.to_owned())
}

/// Render a validated template: each `{api_key}` becomes the key, `{{`/`}}` braces.
pub fn render(format: &str, api_key: &str) -> Result<String> {
    let mut out = String::with_capacity(format.len() + api_key.len());
    for piece in parse(format)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Brace(c) => out.push(c),
            Piece::Key => out.push_str(api_key),
        }
    }
    Ok(out)
}

/// The effective (name, format) pair: a field left unset keeps its default.
pub fn effective<'a>(name: Option<&'a str>, format: Option<&'a str>) -> (&'a str, &'a str) {
    (
        name.map(str::trim).filter(|s| !s.is_empty()).unwrap_or(DEFAULT_NAME),
        format.map(str::trim).filter(|s| !s.is_empty()).unwrap_or(DEFAULT_FORMAT),
    )
}

/// ADM-3 `custom_auth_label` for a non-default header, `None` for the default.
pub fn custom_label(name: &str, format: &str) -> Option<String> {
    if name.eq_ignore_ascii_case(DEFAULT_NAME) && format == DEFAULT_FORMAT {
        return None;
    }
    if !name.eq_ignore_ascii_case(DEFAULT_NAME) {
        return Some(name.to_owned());
    }
    if let Some(scheme) = format.strip_suffix(" {api_key}")
        && !scheme.is_empty()
        && !scheme.contains(['{', '}', ' '])
        && !scheme.eq_ignore_ascii_case("bearer")
    {
        return Some(format!("Authorization ({scheme})"));
    }
    Some("Authorization (custom)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_follow_val_6() {
        assert_eq!(validate_name("  X-API-Key ").unwrap(), "X-API-Key");
        for bad in ["", "  ", "Bad Header", "x:y", "content-type", "Content-Type", "naïve"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_follow_val_7_and_edge_4() {
        for ok in ["{api_key}", "Bearer {api_key}", "Token {api_key}", "{api_key}:{api_key}", "{{lit}} {api_key}"] {
            assert!(validate_format(ok).is_ok(), "{ok:?}");
        }
        let cases = [
            ("", "must not be empty"),
            ("Bearer {token}", "only use the {api_key}"),
            ("Bearer {}", "only use the {api_key}"),
            ("Bearer {0}", "only use the {api_key}"),
            ("{api_key:>10}", "only use the {api_key}"),
            ("{api_key!r}", "only use the {api_key}"),
            ("Token {{api_key}}", "must include the {api_key} placeholder"),
            ("Bearer", "must include the {api_key} placeholder"),
            ("Bearer {api_key", "unclosed"),
            ("Bearer } {api_key}", "unmatched"),
        ];
        for (bad, msg) in cases {
            let err = validate_format(bad).unwrap_err().to_string();
            assert!(err.contains(msg), "{bad:?}: {err}");
        }
    }

    #[test]
    fn render_substitutes_and_unescapes() {
        assert_eq!(render("Bearer {api_key}", "k").unwrap(), "Bearer k");
        assert_eq!(render("{{x}} {api_key}-{api_key}", "k").unwrap(), "{x} k-k");
    }

    #[test]
    fn labels_follow_adm_3_and_edge_6() {
        assert_eq!(custom_label("Authorization", "Token {api_key}").as_deref(), Some("Authorization (Token)"));
        assert_eq!(custom_label("X-API-Key", "{api_key}").as_deref(), Some("X-API-Key"));
        assert_eq!(custom_label("Authorization", "{api_key}").as_deref(), Some("Authorization (custom)"));
        assert_eq!(custom_label("Authorization", "Bearer {api_key}"), None);
        assert_eq!(effective(Some("X-Key"), None), ("X-Key", "Bearer {api_key}"));
        assert_eq!(effective(None, Some("Token {api_key}")), ("Authorization", "Token {api_key}"));
    }
}
