//! The server loop: the protocol's life cycle (initialize, shutdown,
//! exit), the open documents, and each request answered from the
//! document's analysis. One thread, one message at a time.
//!
//! Diagnostics are published when no message is waiting, so a burst of
//! edits is checked once, at its end. A request is answered from the
//! current text (checked then if it changed). A handler that panics is
//! answered with an internal error and the server goes on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;

use lsp_server::{Connection, ErrorCode, Message, Notification, Request, Response, ResponseError};
use lsp_types::notification::{
    DidChangeTextDocument, DidCloseTextDocument, DidOpenTextDocument, DidSaveTextDocument, LogMessage,
    Notification as _, PublishDiagnostics,
};
use lsp_types::request::{Completion, DocumentSymbolRequest, GotoDefinition, HoverRequest, Request as _};
use lsp_types::{
    CompletionOptions, CompletionResponse, DocumentSymbol, DocumentSymbolResponse, GotoDefinitionResponse, Hover,
    HoverContents, HoverProviderCapability, InitializeParams, InitializeResult, Location, LogMessageParams,
    MarkupContent, MarkupKind, MessageType, OneOf, PublishDiagnosticsParams, Range, SaveOptions, ServerCapabilities,
    ServerInfo, SymbolInformation, SymbolKind, TextDocumentPositionParams, TextDocumentSyncCapability,
    TextDocumentSyncKind, TextDocumentSyncOptions, Uri,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::analysis::{Analysis, IncludeResolver};
use crate::documents::{Document, Documents, file_uri};
use crate::position::{Encoding, LineIndex};
use crate::{LspError, completion, diagnostics, hover, navigation};

/// How the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `exit` after `shutdown`: exit status 0.
    Clean,
    /// `exit` without `shutdown`, or the client went away: exit status 1
    /// (the protocol says so).
    WithoutShutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Uninitialized,
    Running,
    ShuttingDown,
}

/// Serve one client on `connection` until `exit` or until it goes away.
pub fn run(connection: &Connection, resolver: &dyn IncludeResolver) -> Result<Exit, LspError> {
    let mut server = Server {
        connection,
        resolver,
        documents: Documents::default(),
        state: State::Uninitialized,
        encoding: Encoding::Utf16,
        snippets: false,
        hierarchical_symbols: false,
    };
    while let Ok(message) = connection.receiver.recv() {
        match message {
            Message::Request(request) => server.request(request)?,
            Message::Notification(n) if n.method == "exit" => {
                return Ok(if server.state == State::ShuttingDown {
                    Exit::Clean
                } else {
                    Exit::WithoutShutdown
                });
            }
            Message::Notification(n) => server.notification(n)?,
            // We send no requests, so there is nothing to match answers to.
            Message::Response(_) => {}
        }
        if connection.receiver.is_empty() {
            server.publish_due()?;
        }
    }
    Ok(Exit::WithoutShutdown)
}

struct Server<'a> {
    connection: &'a Connection,
    resolver: &'a dyn IncludeResolver,
    documents: Documents,
    state: State,
    encoding: Encoding,
    /// The client takes snippet completions (`${1:name}` placeholders).
    snippets: bool,
    /// The client takes nested `DocumentSymbol`s.
    hierarchical_symbols: bool,
}

type Answer = Result<Value, ResponseError>;

fn error(code: ErrorCode, message: impl Into<String>) -> ResponseError {
    ResponseError {
        code: code as i32,
        message: message.into(),
        data: None,
    }
}

fn params<P: DeserializeOwned>(method: &str, value: Value) -> Result<P, ResponseError> {
    serde_json::from_value(value)
        .map_err(|e| error(ErrorCode::InvalidParams, format!("invalid `{method}` params: {e}")))
}

fn to_value(value: impl serde::Serialize) -> Answer {
    serde_json::to_value(value).map_err(|e| error(ErrorCode::InternalError, e.to_string()))
}

impl Server<'_> {
    fn send(&self, message: impl Into<Message>) -> Result<(), LspError> {
        self.connection
            .sender
            .send(message.into())
            .map_err(|_| LspError::Disconnected)
    }

    fn request(&mut self, request: Request) -> Result<(), LspError> {
        let Request { id, method, params } = request;
        let answer = match (self.state, method.as_str()) {
            (State::Uninitialized, "initialize") => self.initialize(params),
            (State::Uninitialized, _) => Err(error(
                ErrorCode::ServerNotInitialized,
                format!("`{method}` before `initialize`: send `initialize` first"),
            )),
            (_, "initialize") => Err(error(ErrorCode::InvalidRequest, "`initialize` was already received")),
            (State::ShuttingDown, _) => Err(error(
                ErrorCode::InvalidRequest,
                format!("`{method}` after `shutdown`: only `exit` is accepted now"),
            )),
            (State::Running, _) => {
                catch_unwind(AssertUnwindSafe(|| self.dispatch(&method, params))).unwrap_or_else(|_| {
                    Err(error(
                        ErrorCode::InternalError,
                        format!("internal error while answering `{method}` (the server goes on)"),
                    ))
                })
            }
        };
        self.send(Response {
            id,
            response_result: answer,
        })
    }

    fn dispatch(&mut self, method: &str, value: Value) -> Answer {
        match method {
            "shutdown" => {
                self.state = State::ShuttingDown;
                Ok(Value::Null)
            }
            HoverRequest::METHOD => {
                let p: lsp_types::HoverParams = params(method, value)?;
                self.at(&p.text_document_position_params, |analysis, offset, index| {
                    let (text, span) = hover::hover(analysis, offset)?;
                    Some(Hover {
                        contents: HoverContents::Markup(MarkupContent {
                            kind: MarkupKind::Markdown,
                            value: text,
                        }),
                        range: Some(index.range(span.start as usize, span.end as usize)),
                    })
                })
            }
            Completion::METHOD => {
                let p: lsp_types::CompletionParams = params(method, value)?;
                let snippets = self.snippets;
                self.at(&p.text_document_position, |analysis, offset, _| {
                    Some(CompletionResponse::Array(completion::complete(
                        analysis, offset, snippets,
                    )))
                })
            }
            GotoDefinition::METHOD => {
                let p: lsp_types::GotoDefinitionParams = params(method, value)?;
                let uri = p.text_document_position_params.text_document.uri.clone();
                let encoding = self.encoding;
                self.at(&p.text_document_position_params, |analysis, offset, _| {
                    let target = navigation::definition(analysis, offset)?;
                    let uri = match &target.file {
                        None => uri.clone(),
                        Some(path) => file_uri(path)?,
                    };
                    let range = target.file_id.map_or_else(Range::default, |file| {
                        diagnostics::range_in(
                            analysis,
                            file,
                            target.span.start as usize,
                            target.span.end as usize,
                            encoding,
                        )
                    });
                    Some(GotoDefinitionResponse::Scalar(Location::new(uri, range)))
                })
            }
            DocumentSymbolRequest::METHOD => {
                let p: lsp_types::DocumentSymbolParams = params(method, value)?;
                let Some(analysis) = self.analysis(&p.text_document.uri) else {
                    return Ok(Value::Null);
                };
                to_value(self.symbols(&analysis, &p.text_document.uri))
            }
            _ => Err(error(
                ErrorCode::MethodNotFound,
                format!("`{method}` is not supported by avap lsp"),
            )),
        }
    }

    /// Answer a request about a position in an open document (`null` for
    /// a document that is not open).
    fn at<T: serde::Serialize>(
        &mut self,
        position: &TextDocumentPositionParams,
        answer: impl FnOnce(&Analysis, usize, &LineIndex<'_>) -> Option<T>,
    ) -> Answer {
        let Some(analysis) = self.analysis(&position.text_document.uri) else {
            return Ok(Value::Null);
        };
        let main = analysis.main();
        let index = LineIndex::new(main.text(), main.line_starts(), self.encoding);
        let offset = index.offset(position.position);
        to_value(answer(&analysis, offset, &index))
    }

    fn analysis(&mut self, uri: &Uri) -> Option<Rc<Analysis>> {
        let resolver = self.resolver;
        let document = self.documents.get_mut(uri)?;
        Some(analyse(document, resolver))
    }

    fn symbols(&self, analysis: &Analysis, uri: &Uri) -> DocumentSymbolResponse {
        let main = analysis.main();
        let index = LineIndex::new(main.text(), main.line_starts(), self.encoding);
        let symbols = navigation::symbols(analysis);
        let kind = |s: &navigation::Symbol| {
            if s.endpoint {
                SymbolKind::INTERFACE
            } else {
                SymbolKind::FUNCTION
            }
        };
        if self.hierarchical_symbols {
            #[allow(deprecated)] // `deprecated` is a required field of the type
            let nested = symbols
                .iter()
                .map(|s| DocumentSymbol {
                    name: s.name.clone(),
                    detail: Some(s.detail.clone()),
                    kind: kind(s),
                    tags: None,
                    deprecated: None,
                    range: index.range(s.span.start as usize, s.span.end as usize),
                    selection_range: index.range(s.name_span.start as usize, s.name_span.end as usize),
                    children: None,
                })
                .collect();
            DocumentSymbolResponse::Nested(nested)
        } else {
            #[allow(deprecated)] // `deprecated` is a required field of the type
            let flat = symbols
                .iter()
                .map(|s| SymbolInformation {
                    name: s.name.clone(),
                    kind: kind(s),
                    tags: None,
                    deprecated: None,
                    location: Location::new(uri.clone(), index.range(s.span.start as usize, s.span.end as usize)),
                    container_name: None,
                })
                .collect();
            DocumentSymbolResponse::Flat(flat)
        }
    }

    fn initialize(&mut self, value: Value) -> Answer {
        let p: InitializeParams = params("initialize", value)?;
        let caps = &p.capabilities;
        self.encoding = Encoding::negotiate(caps.general.as_ref().and_then(|g| g.position_encodings.as_deref()));
        let text = caps.text_document.as_ref();
        self.snippets = text
            .and_then(|t| t.completion.as_ref())
            .and_then(|c| c.completion_item.as_ref())
            .and_then(|i| i.snippet_support)
            .unwrap_or(false);
        self.hierarchical_symbols = text
            .and_then(|t| t.document_symbol.as_ref())
            .and_then(|s| s.hierarchical_document_symbol_support)
            .unwrap_or(false);
        self.state = State::Running;
        to_value(InitializeResult {
            capabilities: capabilities(self.encoding),
            server_info: Some(ServerInfo {
                name: "avap".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
        })
    }

    fn notification(&mut self, n: Notification) -> Result<(), LspError> {
        // Before `initialize` notifications are dropped (the protocol says so).
        if self.state == State::Uninitialized {
            return Ok(());
        }
        let method = n.method.clone();
        let outcome = catch_unwind(AssertUnwindSafe(|| self.document_event(n)));
        let problem = match outcome {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(problem)) => problem,
            Err(_) => format!("internal error while handling `{method}` (the server goes on)"),
        };
        self.send(Notification::new(
            LogMessage::METHOD.into(),
            LogMessageParams {
                typ: MessageType::ERROR,
                message: problem,
            },
        ))
    }

    /// Open, change, save, close; other notifications are ignored.
    fn document_event(&mut self, n: Notification) -> Result<(), String> {
        let Notification { method, params } = n;
        let bad = |e: serde_json::Error| format!("invalid `{method}` params: {e}");
        match method.as_str() {
            DidOpenTextDocument::METHOD => {
                let p: lsp_types::DidOpenTextDocumentParams = serde_json::from_value(params).map_err(bad)?;
                let d = p.text_document;
                let document = Document::new(&d.uri, d.text, d.version);
                self.documents.open(d.uri, document);
            }
            DidChangeTextDocument::METHOD => {
                let p: lsp_types::DidChangeTextDocumentParams = serde_json::from_value(params).map_err(bad)?;
                let uri = p.text_document.uri;
                let Some(document) = self.documents.get_mut(&uri) else {
                    return Err(format!("`didChange` for {} which is not open", uri.as_str()));
                };
                document.apply(p.content_changes, p.text_document.version, self.encoding);
            }
            DidSaveTextDocument::METHOD => {
                // A saved file may be included by the others: check them again.
                for (_, document) in self.documents.iter_mut() {
                    document.analysis = None;
                    document.diagnostics_due = true;
                }
            }
            DidCloseTextDocument::METHOD => {
                let p: lsp_types::DidCloseTextDocumentParams = serde_json::from_value(params).map_err(bad)?;
                if self.documents.close(&p.text_document.uri) {
                    // Clear what was shown for it.
                    self.publish(p.text_document.uri, Vec::new(), None)
                        .map_err(|e| e.to_string())?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn publish(&self, uri: Uri, diagnostics: Vec<lsp_types::Diagnostic>, version: Option<i32>) -> Result<(), LspError> {
        self.send(Notification::new(
            PublishDiagnostics::METHOD.into(),
            PublishDiagnosticsParams {
                uri,
                diagnostics,
                version,
            },
        ))
    }

    /// Check every document changed since its diagnostics were last sent,
    /// and send them.
    fn publish_due(&mut self) -> Result<(), LspError> {
        let resolver = self.resolver;
        let encoding = self.encoding;
        let mut due = Vec::new();
        for (uri, document) in self.documents.iter_mut() {
            if !document.diagnostics_due {
                continue;
            }
            document.diagnostics_due = false;
            let converted = catch_unwind(AssertUnwindSafe(|| {
                let analysis = analyse(document, resolver);
                diagnostics::to_lsp(&analysis, uri, encoding)
            }));
            match converted {
                Ok(list) => due.push((uri.clone(), list, document.version)),
                Err(_) => due.push((uri.clone(), Vec::new(), document.version)),
            }
        }
        for (uri, list, version) in due {
            self.publish(uri, list, Some(version))?;
        }
        Ok(())
    }
}

/// The document's analysis, made now if its text changed since the last.
fn analyse(document: &mut Document, resolver: &dyn IncludeResolver) -> Rc<Analysis> {
    if let Some(analysis) = &document.analysis {
        return Rc::clone(analysis);
    }
    let analysis = Rc::new(Analysis::new(&document.text, document.path.as_deref(), resolver));
    document.analysis = Some(Rc::clone(&analysis));
    analysis
}

fn capabilities(encoding: Encoding) -> ServerCapabilities {
    ServerCapabilities {
        position_encoding: Some(encoding.kind()),
        text_document_sync: Some(TextDocumentSyncCapability::Options(TextDocumentSyncOptions {
            open_close: Some(true),
            change: Some(TextDocumentSyncKind::INCREMENTAL),
            save: Some(
                SaveOptions {
                    include_text: Some(false),
                }
                .into(),
            ),
            ..TextDocumentSyncOptions::default()
        })),
        hover_provider: Some(HoverProviderCapability::Simple(true)),
        completion_provider: Some(CompletionOptions {
            trigger_characters: Some(vec!["$".into()]),
            ..CompletionOptions::default()
        }),
        definition_provider: Some(OneOf::Left(true)),
        document_symbol_provider: Some(OneOf::Left(true)),
        ..ServerCapabilities::default()
    }
}
