//! Usage reported by the upstream, normalized to OpenAI token fields plus
//! the other billing units SPEND-1 prices (images, characters, seconds).

use serde::Deserialize;

/// Billable usage of one upstream call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Prompt (input) tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    pub completion_tokens: u64,
    /// Total tokens.
    pub total_tokens: u64,
    /// Prompt tokens served from the provider's prompt cache.
    pub prompt_tokens_cached: Option<u64>,
    /// Generated images.
    pub images: Option<u64>,
    /// Input characters (text to speech).
    pub characters: Option<u64>,
    /// Audio seconds (transcription).
    pub seconds: Option<f64>,
}

/// The OpenAI `usage` object and the variants compatible servers send
/// (`input_tokens`/`output_tokens`, transcription `seconds`).
#[derive(Debug, Default, PartialEq, Deserialize)]
pub(crate) struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<CachedDetails>,
    input_tokens_details: Option<CachedDetails>,
    seconds: Option<f64>,
}

#[derive(Debug, PartialEq, Deserialize)]
struct CachedDetails {
    cached_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(w: WireUsage) -> Self {
        let prompt = w.prompt_tokens.or(w.input_tokens).unwrap_or(0);
        let completion = w.completion_tokens.or(w.output_tokens).unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: w.total_tokens.unwrap_or(prompt + completion),
            prompt_tokens_cached: w.prompt_tokens_details.or(w.input_tokens_details).and_then(|d| d.cached_tokens),
            seconds: w.seconds,
            ..Usage::default()
        }
    }
}

/// `usage` of an OpenAI-shaped JSON body (response or stream chunk), if any.
///
/// Only the top-level `usage` value is decoded. The scan that finds it
/// tracks strings and nesting and builds nothing, about a sixth of what
/// deserializing the body while ignoring its other fields costs; the body
/// itself is forwarded as received, so it is not validated here.
pub(crate) fn from_body(body: &[u8]) -> Option<Usage> {
    from_chunk(body).map(|(usage, _)| usage)
}

/// As [`from_body`], with the offset of the `"usage"` key when it was found
/// as the body's last member (see [`trailing_usage`]).
pub(crate) fn from_chunk(body: &[u8]) -> Option<(Usage, Option<usize>)> {
    if let Some((usage, at)) = trailing_usage(body) {
        return usage.map(|u| (u, Some(at)));
    }
    let value = top_level_value(body, b"usage")?;
    decode(value)?.0.map(|u| (Usage::from(u), None))
}

/// The `usage` value at the start of `value` and the bytes it took.
fn decode(value: &[u8]) -> Option<(Option<WireUsage>, usize)> {
    if let Some((usage, len)) = flat_usage(value) {
        return Some((Some(usage), len));
    }
    let mut values = serde_json::Deserializer::from_slice(value).into_iter::<Option<WireUsage>>();
    let usage = values.next()?.ok()?;
    Some((usage, values.byte_offset()))
}

/// The usual `usage` object, read by hand: flat, with only non-negative
/// integer members, keys without escapes, each at most once. Anything else
/// (nested details, `null`, fractions, strings, duplicates) is `None` and
/// left to serde, whose derive cost several times more for the common shape.
fn flat_usage(value: &[u8]) -> Option<(WireUsage, usize)> {
    let mut usage = WireUsage::default();
    let mut i = skip_ws(value, 0);
    if value.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(value, i + 1);
    if value.get(i) == Some(&b'}') {
        return Some((usage, i + 1));
    }
    loop {
        if value.get(i) != Some(&b'"') {
            return None;
        }
        let key_start = i + 1;
        let key_end = key_start + memchr::memchr2(b'"', b'\\', value.get(key_start..)?)?;
        if value[key_end] != b'"' {
            return None;
        }
        i = skip_ws(value, key_end + 1);
        if value.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(value, i + 1);
        let digits = i;
        let mut n: u64 = 0;
        while let Some(d) = value.get(i).filter(|b| b.is_ascii_digit()) {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            i += 1;
        }
        // Not an integer, a leading zero (invalid JSON), or a fraction or exponent.
        if i == digits || (i - digits > 1 && value[digits] == b'0') || matches!(value.get(i), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        let slot = match &value[key_start..key_end] {
            b"prompt_tokens" => &mut usage.prompt_tokens,
            b"completion_tokens" => &mut usage.completion_tokens,
            b"total_tokens" => &mut usage.total_tokens,
            b"input_tokens" => &mut usage.input_tokens,
            b"output_tokens" => &mut usage.output_tokens,
            b"seconds" => {
                if usage.seconds.replace(n as f64).is_some() {
                    return None;
                }
                &mut None
            }
            // Unknown members are ignored, as serde does; known ones of
            // another type are not integers and were refused above.
            _ => &mut None,
        };
        if slot.replace(n).is_some() {
            return None;
        }
        i = skip_ws(value, i);
        match value.get(i) {
            Some(b',') => i = skip_ws(value, i + 1),
            Some(b'}') => return Some((usage, i + 1)),
            _ => return None,
        }
    }
}

/// The common layout, decided from the end: OpenAI and compatible servers
/// write `usage` as the body's last member. When the last `"usage"` in the
/// body is an unescaped string (so, in valid JSON, a string token), followed
/// by `:`, and its value is followed only by the `}` that ends the body, it
/// is a member of the top-level object. `None` when that does not hold: the
/// full scan of [`top_level_value`] decides then. With the usage, the offset
/// of its key's opening quote.
fn trailing_usage(body: &[u8]) -> Option<(Option<Usage>, usize)> {
    static KEY: std::sync::LazyLock<memchr::memmem::FinderRev<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::FinderRev::new(b"\"usage\""));
    let at = KEY.rfind(body)?;
    if quote_is_escaped(&body[..at]) {
        return None;
    }
    let colon = skip_ws(body, at + b"\"usage\"".len());
    if body.get(colon) != Some(&b':') {
        return None;
    }
    let start = skip_ws(body, colon + 1);
    let (usage, len) = decode(&body[start..])?;
    let rest = &body[start + len..];
    (rest.trim_ascii() == b"}").then(|| (usage.map(Usage::from), at))
}

/// Is a quote that follows `before` escaped? An odd run of backslashes
/// escapes it: then it sits inside a string instead of delimiting one.
pub(crate) fn quote_is_escaped(before: &[u8]) -> bool {
    before.iter().rev().take_while(|b| **b == b'\\').count() % 2 == 1
}

fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while body.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The bytes from the value of top-level member `key` of the JSON object
/// `body` to the end of the body, or `None` without such a member.
/// Nested objects with the same key and string values equal to it are
/// skipped: a key is a string at depth 1 followed by `:`.
pub(crate) fn top_level_value<'a>(body: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                let start = i + 1;
                let mut end = start;
                loop {
                    // Most of a body is string content: jump to its next quote
                    // or escape (or control character, which is content here).
                    end = crate::body::plain_run(body, end);
                    match *body.get(end)? {
                        b'"' => break,
                        b'\\' => end += 2,
                        _ => end += 1,
                    }
                }
                i = end + 1;
                if depth == 1 && &body[start..end] == key {
                    let colon = skip_ws(body, i);
                    if body.get(colon) == Some(&b':') {
                        return Some(&body[skip_ws(body, colon + 1)..]);
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// Cheap pre-check so stream chunks without usage are never parsed.
pub(crate) fn mentions_usage(payload: &[u8]) -> bool {
    // Runs on every chunk of every stream: a vectorized substring search with
    // its searcher built once, not a byte-by-byte window compare.
    static USAGE_KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
    USAGE_KEY.find(payload).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde makes of `value`: the reference the hand-read shape must match.
    fn by_serde(value: &[u8]) -> Option<(Option<WireUsage>, usize)> {
        let mut values = serde_json::Deserializer::from_slice(value).into_iter::<Option<WireUsage>>();
        let usage = values.next()?.ok()?;
        Some((usage, values.byte_offset()))
    }

    #[test]
    fn the_hand_read_usage_agrees_with_serde() {
        let cases: &[&[u8]] = &[
            br#"{"prompt_tokens":12,"completion_tokens":14,"total_tokens":26}"#,
            br#"{ "prompt_tokens" : 1 , "completion_tokens":0 }  , "x": 1"#,
            br#"{}"#,
            b" {\n\t\"input_tokens\":3,\"output_tokens\":4}",
            br#"{"prompt_tokens":5,"queue_time_ms":17,"total_tokens":5}"#,
            br#"{"seconds":3}"#,
            br#"{"seconds":3.5}"#,
            br#"{"type":"duration","seconds":3}"#,
            br#"{"prompt_tokens":18446744073709551615}"#,
            br#"{"prompt_tokens":18446744073709551616}"#,
            br#"{"prompt_tokens":-1}"#,
            br#"{"prompt_tokens":01}"#,
            br#"{"prompt_tokens":1e3}"#,
            br#"{"prompt_tokens":null,"total_tokens":2}"#,
            br#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            br#"{"seconds":1,"seconds":2}"#,
            br#"{"prompt_tokens":2,"prompt_tokens_details":{"cached_tokens":1}}"#,
            br#"{"prompt\u005ftokens":2}"#,
            br#"{"prompt_tokens":2,}"#,
            br#"{"prompt_tokens":2"#,
            br#"{"prompt_tokens" 2}"#,
            br#"null"#,
            br#"[1]"#,
        ];
        for case in cases {
            let reference = by_serde(case);
            if let Some((usage, len)) = flat_usage(case) {
                assert_eq!(Some((Some(usage), len)), reference, "{}", String::from_utf8_lossy(case));
            }
            assert_eq!(decode(case), reference, "{}", String::from_utf8_lossy(case));
        }
        // The common shape takes the hand-read path.
        assert!(flat_usage(cases[0]).is_some() && flat_usage(cases[1]).is_some());
    }

    #[test]
    fn openai_chat_usage_with_cache() {
        let u = from_body(
            br#"{"id":"x","usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4}}}"#,
        )
        .unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                total_tokens: 15,
                prompt_tokens_cached: Some(4),
                ..Usage::default()
            }
        );
    }

    #[test]
    fn embeddings_and_transcription_variants() {
        let e = from_body(br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#).unwrap();
        assert_eq!((e.prompt_tokens, e.completion_tokens, e.total_tokens), (8, 0, 8));
        let t = from_body(br#"{"text":"hi","usage":{"type":"duration","seconds":3.5}}"#).unwrap();
        assert_eq!(t.seconds, Some(3.5));
        let io = from_body(br#"{"usage":{"input_tokens":3,"output_tokens":4}}"#).unwrap();
        assert_eq!((io.prompt_tokens, io.completion_tokens, io.total_tokens), (3, 4, 7));
        assert_eq!(from_body(br#"{"usage":null}"#), None);
        assert_eq!(from_body(br#"{"id":"x"}"#), None);
        assert!(mentions_usage(br#"{"usage":null}"#));
        assert!(!mentions_usage(br#"{"choices":[]}"#));
    }

    #[test]
    fn only_the_top_level_usage_counts() {
        // A nested object with its own `usage`, a string value "usage", and an
        // escaped quote in a string do not mislead the scan.
        let body = br#"{"choices":[{"message":{"content":"say \"usage\": {} ok","usage":{"prompt_tokens":999}}}],
            "object" : "usage", "usage" : {"prompt_tokens":2,"completion_tokens":3}}"#;
        let u = from_body(body).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (2, 3, 5));
        assert_eq!(from_body(br#"{"choices":[{"usage":{"prompt_tokens":9}}]}"#), None);
        assert_eq!(from_body(br#"{"a":"\\","usage":{"prompt_tokens":1}}"#).map(|u| u.prompt_tokens), Some(1));
        // A trailing `usage` inside a string, or a nested one closing the body,
        // leaves the decision to the full scan.
        assert_eq!(from_body(br#"{"a":"\"usage\":{\"prompt_tokens\":5}}"}"#), None);
        assert_eq!(from_body(br#"{"a":{"usage":{"prompt_tokens":5}}}"#), None);
        assert_eq!(from_body(br#"[{"usage":{"prompt_tokens":5}}]"#), None);
        let after = br#"{"usage":{"prompt_tokens":6},"system_fingerprint":"usage"}"#;
        assert_eq!(from_body(after).map(|u| u.prompt_tokens), Some(6));
        let spaced = b"{\"id\":\"x\", \"usage\" :\n {\"prompt_tokens\":7} \n}\n";
        let (usage, at) = trailing_usage(spaced).expect("trailing usage");
        assert_eq!((usage.map(|u| u.prompt_tokens), at), (Some(7), 11));
        assert_eq!(trailing_usage(br#"{"usage":null}"#), Some((None, 1)));
        // Cut or malformed bodies give no usage rather than a panic.
        assert_eq!(from_body(br#"{"usage":{"prompt_tokens":1"#), None);
        assert_eq!(from_body(br#"{"x":"unterminated"#), None);
        assert_eq!(from_body(b"]]}"), None);
        assert_eq!(from_body(b""), None);
    }
}
