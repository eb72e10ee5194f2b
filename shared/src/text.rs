//! Telegram's rules for message text, as far as they can be checked before sending: lengths count
//! UTF-16 code units of the text *after* entity parsing (what a reader sees, markup removed), and
//! a text with nothing visible in it is empty.
//!
//! The visible length computed here never exceeds Telegram's own: markup is removed generously
//! (every tag, every formatting character), so a text refused for its length is certainly too
//! long, and Telegram's own check still applies to the rest.

/// How a text's markup is written (`parse_mode`), or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markup {
    /// No `parse_mode`: the text is what the reader sees (`entities`, if any, do not change it).
    Plain,
    Html,
    MarkdownV2,
    /// Legacy `Markdown`.
    Markdown,
}

impl Markup {
    /// The markup of a `parse_mode` value; `None` for a value Telegram does not know.
    pub fn from_parse_mode(mode: Option<&str>) -> Option<Self> {
        match mode {
            None => Some(Markup::Plain),
            Some("HTML") => Some(Markup::Html),
            Some("MarkdownV2") => Some(Markup::MarkdownV2),
            Some("Markdown") => Some(Markup::Markdown),
            Some(_) => None,
        }
    }
}

/// The text a reader sees: markup removed (a lower bound of what Telegram keeps).
pub fn visible(text: &str, markup: Markup) -> String {
    match markup {
        Markup::Plain => text.to_string(),
        Markup::Html => strip_html(text),
        Markup::MarkdownV2 | Markup::Markdown => strip_markdown(text, markup == Markup::MarkdownV2),
    }
}

/// The visible length in UTF-16 code units, as Telegram counts it.
pub fn visible_len(text: &str, markup: Markup) -> usize {
    match markup {
        Markup::Plain => text.encode_utf16().count(),
        _ => visible(text, markup).encode_utf16().count(),
    }
}

/// Whether the reader would see nothing: only whitespace and invisible format characters.
pub fn is_blank(text: &str, markup: Markup) -> bool {
    visible(text, markup).chars().all(is_invisible)
}

/// Whitespace, and the zero-width and format characters Telegram strips as empty (U+2800, the
/// Braille blank, is a visible character to Telegram and is not among them).
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}')
}

/// HTML: tags removed, the entities Telegram supports decoded.
fn strip_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(['<', '&']) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        if rest.starts_with('<') {
            match rest.find('>') {
                Some(end) => rest = &rest[end + 1..],
                None => {
                    out.push_str(rest);
                    rest = "";
                }
            }
        } else {
            let (decoded, used) = decode_entity(rest);
            out.push(decoded);
            rest = &rest[used..];
        }
    }
    out.push_str(rest);
    out
}

/// The character an HTML entity at the start of `text` stands for, and its length; a lone `&` is
/// itself.
fn decode_entity(text: &str) -> (char, usize) {
    let Some(end) = text[..text.len().min(12)].find(';') else { return ('&', 1) };
    let name = &text[1..end];
    let decoded = match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "quot" => Some('"'),
        _ => {
            let number = if let Some(hex) = name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                u32::from_str_radix(hex, 16).ok()
            } else {
                name.strip_prefix('#').and_then(|dec| dec.parse().ok())
            };
            number.and_then(char::from_u32)
        }
    };
    match decoded {
        Some(c) => (c, end + 1),
        None => ('&', 1),
    }
}

/// Markdown: link targets and formatting characters removed, escapes resolved.
fn strip_markdown(text: &str, v2: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if v2 => {
                if let Some(escaped) = chars.next() {
                    out.push(escaped);
                }
            }
            // `[text](url)`: the text stays, the target goes.
            ']' if chars.peek() == Some(&'(') => {
                for skipped in chars.by_ref() {
                    if skipped == ')' {
                        break;
                    }
                }
            }
            '*' | '_' | '`' | '[' | ']' => {}
            '~' | '|' if v2 => {}
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_count_utf16_units_of_what_the_reader_sees() {
        assert_eq!(visible_len("hello", Markup::Plain), 5);
        assert_eq!(visible_len("😀", Markup::Plain), 2, "an emoji outside the BMP is two units");
        assert_eq!(visible_len("<b>bold</b> &amp; <a href=\"https://x\">link</a>", Markup::Html), 11);
        assert_eq!(visible_len("&#128512;&lt;", Markup::Html), 3);
        assert_eq!(visible_len("*bold* _it_ [link](https://example.com) \\*", Markup::MarkdownV2), 14);
        assert_eq!(visible_len("~strike~ ||spoiler||", Markup::MarkdownV2), 14);
        assert_eq!(visible_len("*a* _b_ `c`", Markup::Markdown), 5);
    }

    #[test]
    fn text_made_of_invisible_characters_is_blank() {
        for blank in ["", "   \n\t", "\u{200B}\u{200B}", "\u{FEFF}\u{2060} \u{200D}", "\u{3164}"] {
            assert!(is_blank(blank, Markup::Plain), "{blank:?}");
        }
        assert!(is_blank("<b>\u{200B}</b>", Markup::Html));
        assert!(is_blank("*  *", Markup::MarkdownV2));
        for visible in ["a", "\u{2800}", "\u{200B}x", "&lt;"] {
            assert!(!is_blank(visible, Markup::Html), "{visible:?}");
        }
    }

    #[test]
    fn stripping_never_loses_the_end_of_a_malformed_text() {
        assert_eq!(visible("a < b", Markup::Html), "a < b");
        assert_eq!(visible("fish & chips", Markup::Html), "fish & chips");
        assert_eq!(visible("&unknown; x", Markup::Html), "&unknown; x");
        assert_eq!(visible("trailing \\", Markup::MarkdownV2), "trailing ");
    }
}
