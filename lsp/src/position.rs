//! LSP positions ↔ byte offsets.
//!
//! The front end works in byte offsets; LSP positions are (line, column)
//! with the column in the code units the session negotiated: UTF-16 by
//! default, UTF-8 when the client offers it (`general.positionEncodings`).
//! Every conversion clamps: a position past the end of its line means the
//! line's end, a line past the end of the text means the text's end, and a
//! column inside a character (half a surrogate pair) rounds down to its
//! start. Nothing here can panic on what a client sends.

use lsp_types::{Position, PositionEncodingKind, Range};

/// The code units of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Utf16,
}

impl Encoding {
    /// UTF-8 when the client lists it (no conversion at all), else the
    /// protocol's default, UTF-16.
    pub fn negotiate(offered: Option<&[PositionEncodingKind]>) -> Encoding {
        match offered {
            Some(kinds) if kinds.contains(&PositionEncodingKind::UTF8) => Encoding::Utf8,
            _ => Encoding::Utf16,
        }
    }

    pub fn kind(self) -> PositionEncodingKind {
        match self {
            Encoding::Utf8 => PositionEncodingKind::UTF8,
            Encoding::Utf16 => PositionEncodingKind::UTF16,
        }
    }

    fn units(self, c: char) -> usize {
        match self {
            Encoding::Utf8 => c.len_utf8(),
            Encoding::Utf16 => c.len_utf16(),
        }
    }
}

/// Byte offsets where each line starts (after each `\n`), as
/// `SourceFile::line_starts` counts them.
pub fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// A text with its line starts, in one encoding.
#[derive(Debug, Clone, Copy)]
pub struct LineIndex<'a> {
    text: &'a str,
    starts: &'a [usize],
    encoding: Encoding,
}

impl<'a> LineIndex<'a> {
    /// `starts` must be `line_starts(text)`.
    pub fn new(text: &'a str, starts: &'a [usize], encoding: Encoding) -> LineIndex<'a> {
        LineIndex { text, starts, encoding }
    }

    /// The byte offset of a position.
    pub fn offset(&self, position: Position) -> usize {
        let line = position.line as usize;
        let Some(&start) = self.starts.get(line) else {
            return self.text.len();
        };
        let end = self.starts.get(line + 1).map_or(self.text.len(), |next| next - 1);
        // The line's text without its terminator (`\n`, or `\r\n`).
        let content = self.text.get(start..end).unwrap_or("");
        let content = content.strip_suffix('\r').unwrap_or(content);
        let wanted = position.character as usize;
        let mut units = 0;
        for (at, c) in content.char_indices() {
            let next = units + self.encoding.units(c);
            if next > wanted {
                return start + at;
            }
            units = next;
        }
        start + content.len()
    }

    /// The position of a byte offset (clamped to the text, rounded down to
    /// a character boundary).
    pub fn position(&self, offset: usize) -> Position {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.starts.get(line).copied().unwrap_or(0).min(offset);
        let column: usize = self.text[start..offset].chars().map(|c| self.encoding.units(c)).sum();
        Position::new(saturate(line), saturate(column))
    }

    pub fn range(&self, start: usize, end: usize) -> Range {
        Range::new(self.position(start), self.position(end.max(start)))
    }

    /// Byte offsets of an LSP range (start ≤ end whatever the client sent).
    pub fn offsets(&self, range: Range) -> (usize, usize) {
        let (a, b) = (self.offset(range.start), self.offset(range.end));
        (a.min(b), a.max(b))
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(text: &str, encoding: Encoding) -> (Vec<usize>, Encoding) {
        (line_starts(text), encoding)
    }

    #[test]
    fn utf16_counts_surrogate_pairs_and_bmp_chars() {
        // `é` is 2 bytes / 1 UTF-16 unit, `😀` 4 bytes / 2 units.
        let text = "a = 1\nx = \"é😀\" + y\n";
        let (starts, enc) = index(text, Encoding::Utf16);
        let idx = LineIndex::new(text, &starts, enc);
        let y = text.find('y').unwrap();
        // x, space, =, space, quote, é (1 unit), 😀 (2 units), quote, space, +, space.
        assert_eq!(idx.position(y), Position::new(1, 12));
        assert_eq!(idx.offset(Position::new(1, 12)), y);
        // Inside the surrogate pair: rounds down to the emoji's start.
        let emoji = text.find('😀').unwrap();
        assert_eq!(idx.offset(Position::new(1, 6)), emoji);
        assert_eq!(idx.offset(Position::new(1, 7)), emoji);
        assert_eq!(idx.offset(Position::new(1, 8)), emoji + '😀'.len_utf8());
    }

    #[test]
    fn utf8_columns_are_bytes() {
        let text = "x = \"é\" + y";
        let (starts, enc) = index(text, Encoding::Utf8);
        let idx = LineIndex::new(text, &starts, enc);
        let y = text.find('y').unwrap();
        assert_eq!(idx.position(y), Position::new(0, u32::try_from(y).unwrap()));
        assert_eq!(idx.offset(Position::new(0, u32::try_from(y).unwrap())), y);
        // Inside `é`: its start.
        assert_eq!(idx.offset(Position::new(0, 6)), 5);
    }

    #[test]
    fn out_of_range_positions_clamp() {
        let text = "ab\r\ncd\n";
        let (starts, enc) = index(text, Encoding::Utf16);
        let idx = LineIndex::new(text, &starts, enc);
        assert_eq!(idx.offset(Position::new(0, 99)), 2, "line end, before the \\r");
        assert_eq!(idx.offset(Position::new(9, 0)), text.len());
        assert_eq!(idx.position(999), Position::new(2, 0));
    }

    #[test]
    fn negotiation_prefers_utf8_when_offered() {
        assert_eq!(Encoding::negotiate(None), Encoding::Utf16);
        let offered = [PositionEncodingKind::UTF16, PositionEncodingKind::UTF8];
        assert_eq!(Encoding::negotiate(Some(&offered)), Encoding::Utf8);
        assert_eq!(
            Encoding::negotiate(Some(&[PositionEncodingKind::UTF32])),
            Encoding::Utf16
        );
    }
}
