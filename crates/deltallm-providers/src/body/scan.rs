//! A validating scan of the request's top-level object, without serde.
//!
//! Every proxied request's body is checked to be JSON and split into its
//! top-level members. serde_json did that through its visitor machinery at
//! about 16 instructions per byte; this scan tests string contents eight
//! bytes at a time and builds nothing but the member list.
//!
//! It accepts only what serde_json accepts. It may turn down JSON that
//! serde_json would take (a nesting deeper than [`MAX_DEPTH`], a key whose
//! escapes do not decode); the caller then asks serde_json, so such a body
//! is still parsed, and a body that is not JSON gets serde_json's message.

use std::borrow::Cow;

use super::{Raw, insert};

/// Deepest nesting inside a member's value that the scan follows; below
/// serde_json's own limit (128 levels, the top-level object included).
const MAX_DEPTH: usize = 100;
const _: () = assert!(MAX_DEPTH <= 128, "the open containers are bits of a u128");

/// The members of `text` if it is exactly one JSON object (whitespace
/// around it allowed); `None` for anything else.
pub(super) fn object(text: &str) -> Option<Vec<(Cow<'_, str>, Raw<'_>)>> {
    let b = text.as_bytes();
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut fields = Vec::with_capacity(8);
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let key_start = i;
            i = string(b, i)?;
            let key = key(&text[key_start..i])?;
            i = ws(b, i);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = ws(b, i + 1);
            let value_start = i;
            i = value(b, i)?;
            insert(&mut fields, key, Raw(&text[value_start..i]));
            i = ws(b, i);
            match b.get(i) {
                Some(b',') => i = ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (ws(b, i) == b.len()).then_some(fields)
}

/// A key's text from its quoted literal: borrowed unless it has escapes.
fn key(literal: &str) -> Option<Cow<'_, str>> {
    let inner = &literal[1..literal.len() - 1];
    if !inner.as_bytes().contains(&b'\\') {
        return Some(Cow::Borrowed(inner));
    }
    // Rare: let serde_json decode the escapes (a lone surrogate fails there,
    // as it would in serde_json's own parse of the key).
    serde_json::from_str::<String>(literal).ok().map(Cow::Owned)
}

/// JSON's four whitespace bytes (not form feed or vertical tab).
fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// The end of the string literal starting at `b[i]`.
fn string(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut at = i + 1;
    loop {
        at = plain_run(b, at);
        match *b.get(at)? {
            b'"' => return Some(at + 1),
            b'\\' => {}
            // A control character: JSON wants it escaped.
            _ => return None,
        }
        at = match *b.get(at + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at + 2,
            b'u' => {
                // Any four hex digits: serde_json leaves surrogate pairing to
                // whoever decodes the string, and so does the upstream here.
                let hex = b.get(at + 2..at + 6)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                at + 6
            }
            _ => return None,
        };
    }
}

/// The index of the first byte at or after `at` that ends a run of plain
/// string content: `"`, `\`, a control character, or the end of `b`.
/// Request strings are mostly short, where a `memchr` call costs more than
/// it saves: eight bytes are tested at a time.
pub(crate) fn plain_run(b: &[u8], mut at: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // The high bit of each byte of `v` below `n` (n ≤ 0x80). Borrows may
    // also flag bytes above a flagged one, never below it, so the lowest
    // flag is exact.
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGH;
    while let Some(word) = b.get(at..at + 8) {
        let v = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        let stop = below(v, 0x20) | below(v ^ (ONES * u64::from(b'"')), 1) | below(v ^ (ONES * u64::from(b'\\')), 1);
        if stop != 0 {
            // Little-endian: the lowest flag is the first byte in memory.
            return at + (stop.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    // Fewer than eight bytes left in the body.
    while let Some(&c) = b.get(at) {
        if c < 0x20 || c == b'"' || c == b'\\' {
            break;
        }
        at += 1;
    }
    at
}

/// The end of the number starting at `b[i]`:
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(b, i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

/// The end of the value starting at `b[i]` (no leading whitespace), nested
/// arrays and objects followed with an explicit stack rather than recursion.
fn value(b: &[u8], mut i: usize) -> Option<usize> {
    // Open containers, one bit each (set: an object), innermost highest.
    let mut objects: u128 = 0;
    let mut depth = 0;
    loop {
        // A value starts at `i`.
        match *b.get(i)? {
            b'"' => i = string(b, i)?,
            b'-' | b'0'..=b'9' => i = number(b, i)?,
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            c @ (b'{' | b'[') => {
                let object = c == b'{';
                i = ws(b, i + 1);
                if b.get(i) == Some(if object { &b'}' } else { &b']' }) {
                    i += 1;
                } else {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    objects = objects & !(1 << depth) | (u128::from(object) << depth);
                    depth += 1;
                    if object {
                        i = member_key(b, i)?;
                    }
                    continue;
                }
            }
            _ => return None,
        }
        // A value ended at `i`: close what it completes, or go on to the
        // next element or member.
        loop {
            if depth == 0 {
                return Some(i);
            }
            i = ws(b, i);
            let object = objects & (1 << (depth - 1)) != 0;
            match (b.get(i)?, object) {
                (b',', false) => {
                    i = ws(b, i + 1);
                    break;
                }
                (b',', true) => {
                    i = member_key(b, ws(b, i + 1))?;
                    break;
                }
                (b']', false) | (b'}', true) => {
                    i += 1;
                    depth -= 1;
                }
                _ => return None,
            }
        }
    }
}

/// Past `"key" :` and the whitespace after it, at a member's value.
fn member_key(b: &[u8], i: usize) -> Option<usize> {
    let i = ws(b, string(b, i)?);
    if b.get(i) != Some(&b':') {
        return None;
    }
    Some(ws(b, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::RequestBody;

    fn members(text: &str) -> Option<Vec<(String, String)>> {
        object(text).map(|f| f.into_iter().map(|(k, v)| (k.into_owned(), v.get().to_owned())).collect())
    }

    #[test]
    fn members_are_the_values_as_written() {
        let got = members(
            " {\"model\" : \"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a \\\"b\\\" \\u00e9\"}] ,\"n\":-1.5e+3,\"s\":true,\"x\":{},\"y\":[ ],\"z\":null}\n",
        )
        .unwrap();
        let want = [
            ("model", "\"m\""),
            ("messages", "[{\"role\":\"user\",\"content\":\"a \\\"b\\\" \\u00e9\"}]"),
            ("n", "-1.5e+3"),
            ("s", "true"),
            ("x", "{}"),
            ("y", "[ ]"),
            ("z", "null"),
        ];
        assert_eq!(got, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    #[test]
    fn escaped_keys_are_decoded_and_repeats_keep_the_last_value() {
        let got = members(r#"{"a\u0062":1,"c":2,"ab":3}"#).unwrap();
        assert_eq!(got, [("ab".to_owned(), "3".to_owned()), ("c".to_owned(), "2".to_owned())]);
    }

    #[test]
    fn turns_down_what_is_not_one_json_object() {
        for text in [
            "",
            "[]",
            "{",
            "{}x",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":-}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "{\"a\":[1,]}",
            "{\"a\":[1 2]}",
            "{\"a\":{\"b\"}}",
            "{\"a\":{\"b\":1,}}",
            "{\"a\":[}",
            "{\"a\":{]}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":\"unterminated}",
            "{\"a\":1}\u{c}",
            "{'a':1}",
            "{\"a\":NaN}",
        ] {
            assert!(object(text).is_none(), "accepted {text:?}");
        }
    }

    #[test]
    fn every_position_of_a_word_is_tested() {
        let plain = "abcdefghijklmnopqrstuvwxyz0123456789";
        for at in 0..plain.len() {
            for stop in ['"', '\\', '\u{1f}', '\n'] {
                let mut text = plain.to_owned();
                text.insert(at, stop);
                assert_eq!(plain_run(text.as_bytes(), 0), at, "{text:?}");
            }
            let mut text = plain.to_owned();
            text.insert(at, '\u{7f}');
            assert_eq!(plain_run(text.as_bytes(), 0), text.len(), "DEL is plain content");
        }
    }

    #[test]
    fn deep_nesting_is_left_to_serde() {
        let nested = |levels: usize| format!("{{\"a\":{}1{}}}", "[".repeat(levels), "]".repeat(levels));
        assert!(object(&nested(MAX_DEPTH + 1)).is_none());
        assert!(object(&nested(MAX_DEPTH)).is_some());
        // serde_json still takes it (its limit is 128 levels).
        assert!(RequestBody::parse(nested(MAX_DEPTH + 1).as_bytes()).is_ok());
    }

    /// xorshift: a fixed sequence, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// The scan and serde_json agree on every body the scan accepts: the
    /// same members in the same order, with the same raw values. Bodies are real request shapes with random bytes
    /// replaced, inserted or removed, most of them invalid.
    #[test]
    fn never_accepts_what_serde_json_refuses() {
        let seeds = [
            r#"{"model":"gpt-4o","messages":[{"role":"system","content":"You are \"helpful\".\n"},{"role":"user","content":[{"type":"text","text":"caf\u00e9 \ud83d\ude00"}]}],"temperature":0.2,"max_tokens":32,"stream":true,"stream_options":{"include_usage":false},"stop":["\n\n",null],"n":1,"logit_bias":{"50256":-100},"seed":-12,"top_p":1e-3}"#,
            r#" { "input" : [ "a" , "b" ] , "model" : "e" , "dimensions" : 256 , "x" : [ [ ] , { } , [ { "y" : [ true , false , null ] } ] ] } "#,
            r#"{"a":0,"b":-0.0,"c":1E+2,"d":"\\\/\b\f\n\r\t","e":{"f":{"g":{"h":[1,[2,[3]]]}}}}"#,
        ];
        let alphabet = b"{}[],:\"\\ 0123456789-+.eEtrufalsn\tx\x01/u";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for round in 0..60_000 {
            let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(bytes.len() + 1);
                let c = alphabet[rng.below(alphabet.len())];
                match rng.below(3) {
                    0 if at < bytes.len() => bytes[at] = c,
                    1 => bytes.insert(at, c),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            let Ok(text) = std::str::from_utf8(&bytes) else { continue };
            let Some(ours) = object(text) else { continue };
            accepted += 1;
            // The reference: serde_json's parse into the same member list.
            let super::super::Fields(theirs) = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("scan accepted what serde_json refuses ({e}): {text}"));
            assert_eq!(ours, theirs, "{text}");
        }
        // The mutations leave a fair share valid, so the check above ran.
        assert!(accepted > 5_000, "only {accepted} bodies were valid");
    }

    /// Random JSON text: nesting, empty containers, numbers of every shape,
    /// escapes, multi-byte characters and whitespace between all tokens.
    fn random_value(rng: &mut Rng, depth: usize, out: &mut String) {
        const SPACE: [&str; 5] = ["", "", " ", "\n\t", "\r\n  "];
        let ws = |rng: &mut Rng, out: &mut String| out.push_str(SPACE[rng.below(SPACE.len())]);
        match rng.below(if depth > 6 { 4 } else { 6 }) {
            0 => out.push_str(["true", "false", "null"][rng.below(3)]),
            1 => out.push_str(
                ["0", "-0", "7", "-12", "3.25", "1e5", "2E-3", "-0.5e+10", "123456789012345678901234567890", "1e400"]
                    [rng.below(10)],
            ),
            2 | 3 => {
                out.push('"');
                for _ in 0..rng.below(24) {
                    out.push_str(
                        [
                            "a",
                            "Z",
                            " ",
                            "é",
                            "日本",
                            "😀",
                            "\\\"",
                            "\\\\",
                            "\\/",
                            "\\n",
                            "\\u00e9",
                            "\\ud83d\\ude00",
                            "\\ud800",
                            "x",
                        ][rng.below(14)],
                    );
                }
                out.push('"');
            }
            4 => {
                out.push('[');
                for i in 0..rng.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    ws(rng, out);
                    random_value(rng, depth + 1, out);
                    ws(rng, out);
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..rng.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    ws(rng, out);
                    out.push_str(["\"k\"", "\"k2\"", "\"\"", "\"\\u006b\"", "\"ключ\""][rng.below(5)]);
                    ws(rng, out);
                    out.push(':');
                    ws(rng, out);
                    random_value(rng, depth + 1, out);
                    ws(rng, out);
                }
                out.push('}');
            }
        }
    }

    /// Valid bodies built at random are all accepted, with the members and
    /// raw values serde_json finds.
    #[test]
    fn accepts_random_valid_bodies_as_serde_json_reads_them() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            let mut text = String::from(" {");
            for i in 0..rng.below(6) {
                if i > 0 {
                    text.push_str(" ,");
                }
                text.push_str(["\"model\"", "\"messages\"", "\"n\"", "\"n\"", "\"mo\\u0064el\""][rng.below(5)]);
                text.push(':');
                random_value(&mut rng, 0, &mut text);
            }
            text.push_str("}\n");
            let super::super::Fields(theirs) =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("generated invalid JSON ({e}): {text}"));
            let ours = object(&text).unwrap_or_else(|| panic!("scan refused valid JSON: {text}"));
            assert_eq!(ours, theirs, "{text}");
        }
    }
}
