//! The open documents: their text as the editor has it (not as on disk),
//! and the analysis of that text, made when first needed after a change.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use lsp_types::{TextDocumentContentChangeEvent, Uri};

use crate::analysis::Analysis;
use crate::position::{Encoding, LineIndex, line_starts};

/// One open document.
#[derive(Debug)]
pub struct Document {
    pub text: String,
    pub version: i32,
    /// The file behind a `file://` URI: where includes resolve from.
    pub path: Option<PathBuf>,
    /// `None` after a change: made again on the next request or when the
    /// diagnostics are published.
    pub analysis: Option<Rc<Analysis>>,
    /// Whether the diagnostics of the current text are still to be sent.
    pub diagnostics_due: bool,
}

impl Document {
    pub fn new(uri: &Uri, text: String, version: i32) -> Document {
        Document {
            text,
            version,
            path: file_path(uri),
            analysis: None,
            diagnostics_due: true,
        }
    }

    /// Apply `didChange` events in order: a change with a range replaces
    /// that range, one without replaces the whole text.
    pub fn apply(&mut self, changes: Vec<TextDocumentContentChangeEvent>, version: i32, encoding: Encoding) {
        for change in changes {
            match change.range {
                None => self.text = change.text,
                Some(range) => {
                    let starts = line_starts(&self.text);
                    let (start, end) = LineIndex::new(&self.text, &starts, encoding).offsets(range);
                    self.text.replace_range(start..end, &change.text);
                }
            }
        }
        self.version = version;
        self.analysis = None;
        self.diagnostics_due = true;
    }
}

/// The open documents by URI (as the client spells it).
#[derive(Debug, Default)]
pub struct Documents {
    open: HashMap<Uri, Document>,
}

impl Documents {
    pub fn open(&mut self, uri: Uri, document: Document) {
        self.open.insert(uri, document);
    }

    pub fn close(&mut self, uri: &Uri) -> bool {
        self.open.remove(uri).is_some()
    }

    pub fn get_mut(&mut self, uri: &Uri) -> Option<&mut Document> {
        self.open.get_mut(uri)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Uri, &mut Document)> {
        self.open.iter_mut()
    }
}

/// The local path of a `file://` URI.
pub fn file_path(uri: &Uri) -> Option<PathBuf> {
    let url = url::Url::parse(uri.as_str()).ok()?;
    if url.scheme() != "file" {
        return None;
    }
    url.to_file_path().ok()
}

/// The `file://` URI of a path (absolute paths only).
pub fn file_uri(path: &std::path::Path) -> Option<Uri> {
    let url = url::Url::from_file_path(path).ok()?;
    url.as_str().parse().ok()
}

#[cfg(test)]
mod tests {
    use lsp_types::{Position, Range};
    use proptest::prelude::*;

    use super::*;

    fn uri() -> Uri {
        "file:///tmp/t.avap".parse().unwrap()
    }

    #[test]
    fn ranged_changes_edit_in_place() {
        let mut doc = Document::new(&uri(), "addVar(a, 1)\nañadir = 2\n".into(), 1);
        // Replace `2` on line 1: column 9 in UTF-16 (`ñ` is one unit).
        doc.apply(
            vec![TextDocumentContentChangeEvent {
                range: Some(Range::new(Position::new(1, 9), Position::new(1, 10))),
                range_length: None,
                text: "42".into(),
            }],
            2,
            Encoding::Utf16,
        );
        assert_eq!(doc.text, "addVar(a, 1)\nañadir = 42\n");
        assert_eq!(doc.version, 2);
        assert_eq!(doc.path.as_deref(), Some(std::path::Path::new("/tmp/t.avap")));
    }

    #[test]
    fn file_uris_round_trip_with_escapes() {
        let path = std::path::Path::new("/tmp/my dir/é.avap");
        let uri = file_uri(path).unwrap();
        assert_eq!(uri.as_str(), "file:///tmp/my%20dir/%C3%A9.avap");
        assert_eq!(file_path(&uri).as_deref(), Some(path));
        assert_eq!(file_path(&"untitled:Untitled-1".parse().unwrap()), None);
    }

    /// A model of the text as chars: the same edit done by char index.
    fn edit_model(model: &mut Vec<char>, start: usize, end: usize, insert: &str) {
        let (start, end) = (start.min(model.len()), end.min(model.len()));
        let (start, end) = (start.min(end), start.max(end));
        model.splice(start..end, insert.chars());
    }

    proptest! {
        /// Random ranged edits (any line/column, past the end, inverted,
        /// in the middle of surrogate pairs) never panic, and edits at
        /// char positions of a single-line text land where a model of
        /// the text says.
        #[test]
        fn random_edits(
            initial in "[a-zé😀(), =\n]{0,40}",
            edits in proptest::collection::vec((0u32..4, 0u32..50, 0u32..4, 0u32..50, "[a-zé😀\n]{0,5}"), 0..12),
        ) {
            let mut doc = Document::new(&uri(), initial, 0);
            for (l1, c1, l2, c2, text) in edits {
                doc.apply(vec![TextDocumentContentChangeEvent {
                    range: Some(Range::new(Position::new(l1, c1), Position::new(l2, c2))),
                    range_length: None,
                    text,
                }], 1, Encoding::Utf16);
            }
            let _ = crate::analysis::Analysis::new(&doc.text, doc.path.as_deref(), &crate::analysis::NoIncludeResolver);
        }

        #[test]
        fn single_line_edits_match_a_char_model(
            initial in "[a-zñ]{0,20}",
            edits in proptest::collection::vec((0usize..25, 0usize..25, "[a-zñ]{0,4}"), 0..10),
        ) {
            let mut doc = Document::new(&uri(), initial.clone(), 0);
            let mut model: Vec<char> = initial.chars().collect();
            for (a, b, text) in edits {
                let range = Range::new(
                    Position::new(0, u32::try_from(a).unwrap()),
                    Position::new(0, u32::try_from(b).unwrap()),
                );
                doc.apply(vec![TextDocumentContentChangeEvent { range: Some(range), range_length: None, text: text.clone() }], 1, Encoding::Utf16);
                edit_model(&mut model, a, b, &text);
                prop_assert_eq!(&doc.text, &model.iter().collect::<String>());
            }
        }
    }
}
