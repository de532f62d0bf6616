//! A `.env` reader with exactly the rules of `dotenv@7.0.0`, the version Botpress v12 pins
//! (`require('dotenv').config({ path: PROJECT_LOCATION/.env })`, `packages/bp/src/index.ts:74`):
//!
//! - the text is split into lines on `\n` or `\r`;
//! - a line counts only if it matches `^\s*([\w.-]+)\s*=\s*(.*)?\s*$`, so `export KEY=v` (a space
//!   inside the key) and `# comments` are dropped, never read;
//! - there are no inline comments: `KEY=v # note` is the value `v # note`;
//! - quotes are removed only when the value's first and last characters are the same quote, and
//!   only double quotes expand `\n`; an unquoted value is trimmed.
//!
//! `\s` and `.` follow JavaScript's definitions, so an odd byte makes a line match or not exactly as
//! it would for Botpress.

use std::collections::BTreeMap;

/// JavaScript's `\s` (and what `String.prototype.trim` removes).
fn js_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

/// JavaScript's `\w`.
fn js_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `String.prototype.trim`.
pub fn js_trim(s: &str) -> &str {
    s.trim_matches(js_space)
}

/// Parses `.env` text into what `dotenv.parse` returns. Later lines win, as in dotenv.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.split(['\n', '\r']) {
        if let Some((k, v)) = parse_line(line) {
            out.insert(k, v);
        }
    }
    out
}

/// One line against `^\s*([\w.-]+)\s*=\s*(.*)?\s*$`, then dotenv's quote rules.
fn parse_line(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start_matches(js_space);
    let key_len = rest
        .find(|c: char| !(js_word(c) || c == '.' || c == '-'))
        .unwrap_or(rest.len());
    if key_len == 0 {
        return None;
    }
    let (key, rest) = rest.split_at(key_len);
    let rest = rest.trim_start_matches(js_space).strip_prefix('=')?;
    let rest = rest.trim_start_matches(js_space);
    // `(.*)` stops at a line terminator (only U+2028/U+2029 can remain after the split); what
    // follows must then be whitespace to the end, or the line does not match at all.
    let stop = rest.find(['\u{2028}', '\u{2029}']).unwrap_or(rest.len());
    let (val, tail) = rest.split_at(stop);
    if !tail.chars().all(js_space) {
        return None;
    }
    Some((key.to_string(), unquote(val)))
}

fn unquote(val: &str) -> String {
    let (first, last) = (val.chars().next(), val.chars().last());
    let quote = match (first, last) {
        (Some(a), Some(b)) if a == b && (a == '"' || a == '\'') => a,
        _ => return js_trim(val).to_string(),
    };
    // `val.substring(1, end)`: with a single quote character, JavaScript swaps the bounds and
    // returns that character.
    let inner = if val.len() == 1 {
        val
    } else {
        &val[1..val.len() - 1]
    };
    if quote == '"' {
        inner.replace("\\n", "\n")
    } else {
        inner.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(m: &BTreeMap<String, String>, k: &str) -> Option<String> {
        m.get(k).cloned()
    }

    /// Every case checked against `dotenv@7.0.0`'s `parse` (the review's RUN results and the
    /// package's own rules).
    #[test]
    fn parses_like_dotenv_7() {
        let m = parse(concat!(
            "# comment\n",
            "A=1\n",
            "export B=two\n",
            "C=\"x\\ny\"\n",
            "D='lit\\n'\n",
            "E=v # note\n",
            "not a line\n",
            "=empty\n",
            "  F.G-h  =  spaced value  \n",
            "H=\"unbalanced\n",
            "I='\n",
            "J=\"q\" \n",
            "K=\n",
            "L=a=b\r\n",
            "M=crlf\r",
            "N=\"\"\n",
            "O= 'inner' \n",
        ));
        assert_eq!(get(&m, "A").as_deref(), Some("1"));
        assert_eq!(get(&m, "B"), None, "`export ` lines are dropped");
        assert_eq!(get(&m, "export B"), None);
        assert_eq!(get(&m, "C").as_deref(), Some("x\ny"));
        assert_eq!(get(&m, "D").as_deref(), Some("lit\\n"));
        assert_eq!(
            get(&m, "E").as_deref(),
            Some("v # note"),
            "no inline comments"
        );
        assert_eq!(get(&m, "F.G-h").as_deref(), Some("spaced value"));
        assert_eq!(get(&m, "H").as_deref(), Some("\"unbalanced"));
        assert_eq!(get(&m, "I").as_deref(), Some("'"));
        // Trailing space: the last character is not a quote, so the quotes stay.
        assert_eq!(get(&m, "J").as_deref(), Some("\"q\""));
        assert_eq!(get(&m, "K").as_deref(), Some(""));
        assert_eq!(get(&m, "L").as_deref(), Some("a=b"));
        assert_eq!(get(&m, "M").as_deref(), Some("crlf"));
        assert_eq!(get(&m, "N").as_deref(), Some(""));
        // Leading whitespace is eaten by the regex, trailing whitespace stays in the value.
        assert_eq!(get(&m, "O").as_deref(), Some("'inner'"));
        assert_eq!(m.len(), 13, "{m:?}");
    }

    #[test]
    fn line_separator_in_a_value_drops_the_line() {
        let m = parse("A=x\u{2028}y\nB=x\u{2028} \nC=\u{feff}v\n\u{feff}D=bom\n");
        assert_eq!(get(&m, "A"), None);
        assert_eq!(get(&m, "B").as_deref(), Some("x"));
        assert_eq!(get(&m, "C").as_deref(), Some("v"));
        assert_eq!(get(&m, "D").as_deref(), Some("bom"));
    }
}
