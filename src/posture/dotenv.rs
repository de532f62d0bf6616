//! A `.env` reader with the rules of the `dotenv` package Botpress uses: `KEY=VALUE` lines,
//! `#` comments, optional `export `, single or double quotes (double quotes expand `\n`).

use std::collections::BTreeMap;

/// Parses `.env` text. Malformed lines are skipped, as dotenv does, so a stray line never hides
/// the rest of the file.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        {
            continue;
        }
        out.insert(key.to_string(), unquote(value.trim()));
    }
    out
}

fn unquote(v: &str) -> String {
    let bytes = v.as_bytes();
    if bytes.len() >= 2 {
        let (first, last) = (bytes[0], bytes[bytes.len() - 1]);
        if first == last && (first == b'"' || first == b'\'') {
            let inner = &v[1..v.len() - 1];
            return if first == b'"' {
                inner.replace("\\n", "\n")
            } else {
                inner.to_string()
            };
        }
    }
    // An unquoted value ends at ` #` (an inline comment).
    match v.find(" #") {
        Some(i) => v[..i].trim_end().to_string(),
        None => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dotenv_forms() {
        let m = parse(
            "# comment\nA=1\nexport B = two \nC=\"x\\ny\"\nD='lit\\n'\nE=v # note\nnot a line\n=empty\n",
        );
        assert_eq!(m.get("A").map(String::as_str), Some("1"));
        assert_eq!(m.get("B").map(String::as_str), Some("two"));
        assert_eq!(m.get("C").map(String::as_str), Some("x\ny"));
        assert_eq!(m.get("D").map(String::as_str), Some("lit\\n"));
        assert_eq!(m.get("E").map(String::as_str), Some("v"));
        assert_eq!(m.len(), 5);
    }
}
