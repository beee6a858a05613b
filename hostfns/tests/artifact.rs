//! Artifact format: sections, source maps, keys, signing and verification.

use avap_hostfns::abi;
use avap_hostfns::artifact::{
    ArtifactError, EndpointMeta, FunctionMap, ImportMeta, KeyError, LibraryMeta, META_SECTION, Meta, ParamsMeta,
    PolicyLimits, RatePolicy, RunPolicy, SIG_SECTION, SRCMAP_SECTION, SignatureStatus, SigningKey, SourceMap, SrcEntry,
    TrustedKeys, append_sections, decode_public_key, decode_secret_key, encode_public_key, encode_secret_key,
    generate_key, inspect, key_id, sign, signer_key_id, strip_signature, verify,
};
use sha2::{Digest, Sha256};
use wasm_encoder::{
    CodeSection, CustomSection, EntityType, ExportKind, ExportSection, Function, FunctionSection, ImportSection,
    MemorySection, MemoryType, Module, TypeSection, ValType,
};

/// A tiny valid module importing `avap.addResult`, `avap.RequestGet` and one
/// runtime helper, exporting `main` and `memory`.
fn module() -> Vec<u8> {
    let mut types = TypeSection::new();
    types
        .ty()
        .function([ValType::I32, ValType::I32], [ValType::I32, ValType::I64]);
    types.ty().function([], [ValType::I32]);
    let mut imports = ImportSection::new();
    imports.import(abi::COMMAND_MODULE, "addResult", EntityType::Function(0));
    imports.import(abi::COMMAND_MODULE, "RequestGet", EntityType::Function(0));
    imports.import(abi::RT_MODULE, "binary", EntityType::Function(0));
    let mut funcs = FunctionSection::new();
    funcs.function(1);
    let mut mems = MemorySection::new();
    mems.memory(MemoryType {
        minimum: 1,
        maximum: Some(16),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports
        .export("main", ExportKind::Func, 3)
        .export("memory", ExportKind::Memory, 0);
    let mut code = CodeSection::new();
    let mut f = Function::new([]);
    f.instructions().i32_const(1).i32_const(2).call(0).drop().end();
    code.function(&f);
    let mut m = Module::new();
    m.section(&types)
        .section(&imports)
        .section(&funcs)
        .section(&mems)
        .section(&exports)
        .section(&code);
    m.finish()
}

fn meta() -> Meta {
    Meta {
        format_version: abi::FORMAT_VERSION,
        compiler_version: "0.1.0".into(),
        source_name: "hello.avap".into(),
        source_sha256: hex::encode(Sha256::digest(b"addResult(x)")),
        imports: vec![
            ImportMeta {
                module: "avap".into(),
                name: "addResult".into(),
                capability: "request".into(),
                line: 3,
            },
            ImportMeta {
                module: "avap".into(),
                name: "RequestGet".into(),
                capability: "net".into(),
                line: 7,
            },
        ],
        endpoints: vec![EndpointMeta {
            method: "GET".into(),
            path: "/hello".into(),
            handler: "greet".into(),
            description: "says hello".into(),
            middleware: Vec::new(),
        }],
        functions: vec!["greet".into()],
        policy: RunPolicy {
            limits: Some(PolicyLimits {
                fuel: Some(5000),
                ..PolicyLimits::default()
            }),
            rate_limit: Some(RatePolicy {
                per_second: 2,
                burst: 3,
            }),
        },
        libraries: vec![LibraryMeta {
            name: "greetings".into(),
            version: 2,
            source_sha256: hex::encode(Sha256::digest(b"function greet() {}")),
        }],
        params: ParamsMeta::default(),
    }
}

#[test]
fn meta_without_libraries_is_written_as_before() {
    let mut plain = meta();
    plain.libraries = Vec::new();
    let json = String::from_utf8(plain.to_json()).unwrap();
    assert!(!json.contains("libraries"), "no libraries are not written: {json}");
    let back: Meta = serde_json::from_str(&json).unwrap();
    assert!(back.libraries.is_empty());
    let with = String::from_utf8(meta().to_json()).unwrap();
    assert!(
        with.contains(r#""libraries":[{"name":"greetings","version":2,"source_sha256":""#),
        "{with}"
    );
}

#[test]
fn meta_without_params_keeps_its_old_bytes_and_reads_back() {
    let old = String::from_utf8(meta().to_json()).unwrap();
    assert!(!old.contains("params") && !old.contains("middleware"), "{old}");
    let back = Meta::from_json(old.as_bytes()).unwrap();
    assert!(back.params.is_empty());
    assert!(back.endpoints[0].middleware.is_empty());
}

#[test]
fn endpoint_params_are_top_level_then_middleware_then_handler_once_each() {
    let params = ParamsMeta {
        top_level: vec!["lang".into()],
        functions: [
            ("auth".to_owned(), vec!["token".to_owned(), "lang".to_owned()]),
            ("greet".to_owned(), vec!["name".to_owned(), "token".to_owned()]),
        ]
        .into(),
    };
    let mut endpoint = meta().endpoints.remove(0);
    endpoint.middleware = vec!["auth".into(), "unknown".into()];
    assert_eq!(params.for_endpoint(&endpoint), ["lang", "token", "name"]);
    let mut with = meta();
    with.params = params;
    with.endpoints = vec![endpoint];
    let json = with.to_json();
    assert!(String::from_utf8_lossy(&json).contains(r#""middleware":["auth","unknown"]"#));
    assert_eq!(Meta::from_json(&json).unwrap(), with);
}

#[test]
fn meta_without_a_policy_reads_as_the_empty_policy() {
    let mut plain = meta();
    plain.policy = RunPolicy::default();
    let json = String::from_utf8(plain.to_json()).unwrap();
    assert!(!json.contains("policy"), "an empty policy is not written: {json}");
    let back: Meta = serde_json::from_str(&json).unwrap();
    assert!(back.policy.is_empty());
    let with = String::from_utf8(meta().to_json()).unwrap();
    assert!(
        with.contains(r#""policy":{"limits":{"fuel":5000},"rate_limit":{"per_second":2,"burst":3}}"#),
        "{with}"
    );
}

fn srcmap() -> SourceMap {
    SourceMap {
        files: vec!["hello.avap".into(), "lib.avap".into()],
        functions: vec![
            FunctionMap {
                func_index: 3,
                name: "main".into(),
                entries: vec![
                    SrcEntry {
                        offset: 1,
                        file: 0,
                        line: 3,
                        column: 1,
                    },
                    SrcEntry {
                        offset: 5,
                        file: 0,
                        line: 7,
                        column: 5,
                    },
                    SrcEntry {
                        offset: 9,
                        file: 1,
                        line: 2,
                        column: 9,
                    },
                ],
            },
            FunctionMap {
                func_index: 4,
                name: "greet".into(),
                entries: vec![],
            },
        ],
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn trusted(keys: &[&SigningKey]) -> TrustedKeys {
    let mut t = TrustedKeys::new();
    for k in keys {
        t.add(k.verifying_key());
    }
    t
}

fn unsigned_artifact() -> Vec<u8> {
    append_sections(&module(), &meta(), &srcmap())
}

fn signed_artifact(k: &SigningKey) -> Vec<u8> {
    sign(&unsigned_artifact(), k)
}

/// Appends a custom section with wasm-encoder (independent of our writer).
fn with_custom(bytes: &[u8], name: &str, data: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut m = Module::new();
    m.section(&CustomSection {
        name: name.into(),
        data: data.into(),
    });
    out.extend_from_slice(&m.finish()[8..]);
    out
}

#[test]
fn sections_are_valid_wasm_and_readable() {
    let bytes = unsigned_artifact();
    avap_hostfns::artifact::validate(&bytes).unwrap();
    let info = inspect(&bytes).unwrap();
    assert_eq!(info.meta, meta());
    assert_eq!(info.srcmap, srcmap());
    assert!(info.signature.is_none());
    assert_eq!(info.size, bytes.len());
    assert_eq!(info.signed_size, bytes.len());
    assert_eq!(info.sha256, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(info.signed_sha256, info.sha256);
    let imports: Vec<(&str, &str)> = info
        .wasm_imports
        .iter()
        .map(|i| (i.module.as_str(), i.name.as_str()))
        .collect();
    assert_eq!(
        imports,
        [("avap", "addResult"), ("avap", "RequestGet"), ("rt", "binary")]
    );
    let names: Vec<&str> = info.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "type",
            "import",
            "function",
            "memory",
            "export",
            "code",
            META_SECTION,
            SRCMAP_SECTION
        ]
    );
    assert_eq!(info.sections.last().unwrap().range.end, bytes.len());
}

#[test]
fn the_signer_is_read_from_the_section_headers() {
    let k = key(7);
    let id = key_id(&k.verifying_key());
    assert_eq!(signer_key_id(&signed_artifact(&k)).unwrap(), Some(id));
    assert_eq!(signer_key_id(&unsigned_artifact()).unwrap(), None);
    assert!(signer_key_id(b"not wasm").is_err());
}

#[test]
fn signed_artifact_verifies() {
    let k = key(7);
    let bytes = signed_artifact(&k);
    let verified = verify(&bytes, &trusted(&[&k]), false).unwrap();
    let id = key_id(&k.verifying_key());
    assert_eq!(verified.signature, SignatureStatus::Valid { key_id: id.clone() });
    let info = &verified.info;
    assert_eq!(info.signature.as_ref().unwrap().key_id, id);
    assert_eq!(info.signed_size, unsigned_artifact().len());
    assert_eq!(info.signed_sha256, hex::encode(Sha256::digest(unsigned_artifact())));
    assert_ne!(info.sha256, info.signed_sha256);
    assert_eq!(info.sections.last().unwrap().name, SIG_SECTION);
    // Also accepted in development mode, still reported as signed.
    assert_eq!(
        verify(&bytes, &trusted(&[&k]), true).unwrap().signature,
        SignatureStatus::Valid { key_id: id }
    );
}

#[test]
fn every_flipped_byte_is_refused() {
    let k = key(7);
    let keys = trusted(&[&k, &key(8)]);
    let bytes = signed_artifact(&k);
    for pos in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut tampered = bytes.clone();
            tampered[pos] ^= mask;
            assert!(
                verify(&tampered, &keys, false).is_err(),
                "flip {mask:#x} at byte {pos} was accepted"
            );
        }
    }
    // In the signed region a flip is caught even in development mode: the
    // signature is still checked when present.
    let signed_len = unsigned_artifact().len();
    for pos in (0..signed_len).step_by(7) {
        let mut tampered = bytes.clone();
        tampered[pos] ^= 0x01;
        let err = verify(&tampered, &keys, true).unwrap_err();
        assert!(
            matches!(
                err,
                ArtifactError::BadSignature | ArtifactError::Malformed(_) | ArtifactError::MissingSection(_)
            ),
            "byte {pos}: {err:?}"
        );
    }
}

#[test]
fn truncated_artifact_is_refused() {
    let k = key(7);
    let bytes = signed_artifact(&k);
    for len in 0..bytes.len() {
        assert!(
            verify(&bytes[..len], &trusted(&[&k]), false).is_err(),
            "truncated to {len} bytes was accepted"
        );
    }
}

#[test]
fn stripped_signature_is_unsigned() {
    let k = key(7);
    let keys = trusted(&[&k]);
    let stripped = strip_signature(&signed_artifact(&k)).unwrap();
    assert_eq!(stripped, unsigned_artifact());
    assert_eq!(verify(&stripped, &keys, false).unwrap_err(), ArtifactError::Unsigned);
    assert_eq!(
        verify(&stripped, &keys, true).unwrap().signature,
        SignatureStatus::Unsigned
    );
    // Stripping an unsigned artifact changes nothing.
    assert_eq!(strip_signature(&stripped).unwrap(), stripped);
    let msg = ArtifactError::Unsigned.to_string();
    assert!(msg.contains("--allow-unsigned") && msg.contains("--key"), "{msg}");
}

#[test]
fn unknown_key_is_untrusted() {
    let signer = key(7);
    let bytes = signed_artifact(&signer);
    let id = key_id(&signer.verifying_key());
    let err = verify(&bytes, &trusted(&[&key(8)]), false).unwrap_err();
    assert_eq!(err, ArtifactError::UntrustedKey { key_id: id.clone() });
    assert!(err.to_string().contains(&id));
    // No trusted keys at all, even in development mode.
    let err = verify(&bytes, &TrustedKeys::new(), true).unwrap_err();
    assert_eq!(err, ArtifactError::UntrustedKey { key_id: id });
}

#[test]
fn signature_by_other_key_under_trusted_id_is_bad() {
    // Forge: an `avap.sig` naming the trusted key id but signed by another key.
    let trusted_key = key(7);
    let forger = key(9);
    let unsigned = unsigned_artifact();
    let forged = sign(&unsigned, &forger);
    let forger_id = key_id(&forger.verifying_key());
    let trusted_id = key_id(&trusted_key.verifying_key());
    let pos = forged.windows(16).rposition(|w| w == forger_id.as_bytes()).unwrap();
    let mut forged = forged;
    forged[pos..pos + 16].copy_from_slice(trusted_id.as_bytes());
    assert_eq!(
        verify(&forged, &trusted(&[&trusted_key]), false).unwrap_err(),
        ArtifactError::BadSignature
    );
}

#[test]
fn content_after_signature_is_refused() {
    let k = key(7);
    let keys = trusted(&[&k]);
    let bytes = signed_artifact(&k);
    let appended = with_custom(&bytes, "name", b"\x00\x01x");
    assert_eq!(
        verify(&appended, &keys, false).unwrap_err(),
        ArtifactError::NotLastSection
    );
    assert_eq!(inspect(&appended).unwrap_err(), ArtifactError::NotLastSection);
    // Signing twice leaves the first signature in the middle.
    let twice = sign(&bytes, &k);
    assert_eq!(verify(&twice, &keys, false).unwrap_err(), ArtifactError::NotLastSection);
    // Stray bytes after the signature are not a section at all.
    let mut junk = bytes.clone();
    junk.push(0);
    assert!(matches!(
        verify(&junk, &keys, false).unwrap_err(),
        ArtifactError::Malformed(_)
    ));
}

#[test]
fn signature_section_must_be_well_formed() {
    let k = key(7);
    let keys = trusted(&[&k]);
    let unsigned = unsigned_artifact();
    for payload in [&b""[..], b"\x10abcdefabcdefabcd", b"\x02ab", &[0u8; 80]] {
        let bytes = with_custom(&unsigned, SIG_SECTION, payload);
        assert!(
            matches!(verify(&bytes, &keys, true).unwrap_err(), ArtifactError::Malformed(_)),
            "{payload:?}"
        );
    }
}

#[test]
fn missing_sections_are_refused() {
    let k = key(7);
    let keys = trusted(&[&k]);
    let only_srcmap = with_custom(&module(), SRCMAP_SECTION, &srcmap().encode());
    assert_eq!(
        verify(&sign(&only_srcmap, &k), &keys, false).unwrap_err(),
        ArtifactError::MissingSection(META_SECTION)
    );
    let only_meta = with_custom(&module(), META_SECTION, &meta().to_json());
    assert_eq!(
        verify(&sign(&only_meta, &k), &keys, false).unwrap_err(),
        ArtifactError::MissingSection(SRCMAP_SECTION)
    );
    let doubled = with_custom(&unsigned_artifact(), META_SECTION, &meta().to_json());
    assert!(matches!(
        verify(&sign(&doubled, &k), &keys, false).unwrap_err(),
        ArtifactError::Malformed(_)
    ));
}

#[test]
fn not_wasm_is_malformed() {
    let keys = TrustedKeys::new();
    for bytes in [&b""[..], b"\0asm", b"hello world", b"\0asm\x0d\0\x01\0"] {
        assert!(
            matches!(verify(bytes, &keys, true).unwrap_err(), ArtifactError::Malformed(_)),
            "{bytes:?}"
        );
    }
}

#[test]
fn newer_format_is_refused_and_unknown_fields_are_allowed() {
    let mut value = serde_json::to_value(meta()).unwrap();
    value["format_version"] = (abi::FORMAT_VERSION + 1).into();
    value["something_new"] = "ignored".into();
    let json = serde_json::to_vec(&value).unwrap();
    let err = Meta::from_json(&json).unwrap_err();
    assert_eq!(
        err,
        ArtifactError::FormatTooNew {
            found: abi::FORMAT_VERSION + 1,
            supported: abi::FORMAT_VERSION
        }
    );
    let bytes = with_custom(
        &with_custom(&module(), META_SECTION, &json),
        SRCMAP_SECTION,
        &srcmap().encode(),
    );
    assert!(matches!(
        inspect(&bytes).unwrap_err(),
        ArtifactError::FormatTooNew { .. }
    ));

    // A newer format whose WebAssembly this runtime does not validate is
    // still refused by its number (format 4 declared one-byte pages, which
    // a runtime of format 3 called "malformed"); an unsupported page size
    // stands in for whatever a later format may use.
    let mut mems = MemorySection::new();
    mems.memory(MemoryType {
        minimum: 1,
        maximum: Some(1),
        memory64: false,
        shared: false,
        page_size_log2: Some(5),
    });
    let mut future = Module::new();
    future.section(&mems);
    let future = with_custom(
        &with_custom(&future.finish(), META_SECTION, &json),
        SRCMAP_SECTION,
        &srcmap().encode(),
    );
    assert!(avap_hostfns::artifact::validate(&future).is_err());
    assert!(matches!(
        inspect(&future).unwrap_err(),
        ArtifactError::FormatTooNew { .. }
    ));
    // The same module of our own format is malformed.
    let mut current = serde_json::to_value(meta()).unwrap();
    current["format_version"] = abi::FORMAT_VERSION.into();
    let mut ours = Module::new();
    ours.section(&mems);
    let ours = with_custom(
        &with_custom(&ours.finish(), META_SECTION, &serde_json::to_vec(&current).unwrap()),
        SRCMAP_SECTION,
        &srcmap().encode(),
    );
    assert!(matches!(inspect(&ours).unwrap_err(), ArtifactError::Malformed(_)));

    value["format_version"] = abi::FORMAT_VERSION.into();
    let parsed = Meta::from_json(&serde_json::to_vec(&value).unwrap()).unwrap();
    assert_eq!(parsed, meta());
    // A newer version wins over a changed shape.
    let newer = format!(r#"{{"format_version": {}, "imports": 5}}"#, abi::FORMAT_VERSION + 1);
    assert!(matches!(
        Meta::from_json(newer.as_bytes()).unwrap_err(),
        ArtifactError::FormatTooNew { .. }
    ));
    assert!(matches!(
        Meta::from_json(b"{}").unwrap_err(),
        ArtifactError::Malformed(_)
    ));
    assert!(matches!(
        Meta::from_json(b"\xff").unwrap_err(),
        ArtifactError::Malformed(_)
    ));
}

#[test]
fn meta_must_list_exactly_the_command_imports() {
    let k = key(7);
    let keys = trusted(&[&k]);
    let build = |meta: &Meta| sign(&append_sections(&module(), meta, &srcmap()), &k);
    let mismatch = |meta: &Meta| match verify(&build(meta), &keys, false).unwrap_err() {
        ArtifactError::ImportsMismatch { detail } => detail,
        other => panic!("expected ImportsMismatch, got {other:?}"),
    };

    let mut hidden = meta();
    hidden.imports.retain(|i| i.name != "RequestGet");
    assert!(mismatch(&hidden).contains("avap.RequestGet"));

    let mut extra = meta();
    extra.imports.push(ImportMeta {
        module: "avap".into(),
        name: "addVar".into(),
        capability: "pure".into(),
        line: 1,
    });
    assert!(mismatch(&extra).contains("avap.addVar"));

    let mut understated = meta();
    understated.imports[1].capability = "pure".into();
    assert!(mismatch(&understated).contains("RequestGet"));

    let mut unknown_class = meta();
    unknown_class.imports[0].capability = "anything".into();
    assert!(mismatch(&unknown_class).contains("anything"));

    let mut duplicate = meta();
    duplicate.imports.push(duplicate.imports[0].clone());
    assert!(mismatch(&duplicate).contains("twice"));

    let mut helper = meta();
    helper.imports.push(ImportMeta {
        module: "rt".into(),
        name: "binary".into(),
        capability: "pure".into(),
        line: 1,
    });
    assert!(mismatch(&helper).contains("rt.binary"));

    // Order does not matter.
    let mut reordered = meta();
    reordered.imports.reverse();
    verify(&build(&reordered), &keys, false).unwrap();
}

#[test]
fn srcmap_round_trip_and_lookup() {
    let map = srcmap();
    let encoded = map.encode();
    assert_eq!(SourceMap::decode(&encoded).unwrap(), map);
    assert_eq!(map.lookup(3, 0), None);
    assert_eq!(map.lookup(3, 1), Some(("hello.avap", 3, 1)));
    assert_eq!(map.lookup(3, 4), Some(("hello.avap", 3, 1)));
    assert_eq!(map.lookup(3, 5), Some(("hello.avap", 7, 5)));
    assert_eq!(map.lookup(3, 8), Some(("hello.avap", 7, 5)));
    assert_eq!(map.lookup(3, 9), Some(("lib.avap", 2, 9)));
    assert_eq!(map.lookup(3, u32::MAX), Some(("lib.avap", 2, 9)));
    assert_eq!(map.lookup(4, 10), None);
    assert_eq!(map.lookup(99, 10), None);

    let empty = SourceMap::default();
    assert_eq!(SourceMap::decode(&empty.encode()).unwrap(), empty);

    // Extremes and decreasing lines survive; offsets are delta-encoded.
    let extreme = SourceMap {
        files: vec![String::new(), "ü/ñ.avap".into()],
        functions: vec![FunctionMap {
            func_index: u32::MAX,
            name: "f".into(),
            entries: vec![
                SrcEntry {
                    offset: 0,
                    file: 1,
                    line: u32::MAX,
                    column: u32::MAX,
                },
                SrcEntry {
                    offset: 0,
                    file: 0,
                    line: 0,
                    column: 0,
                },
                SrcEntry {
                    offset: u32::MAX,
                    file: 1,
                    line: 5,
                    column: 1,
                },
            ],
        }],
    };
    assert_eq!(SourceMap::decode(&extreme.encode()).unwrap(), extreme);

    // Unsorted entries are written sorted.
    let mut unsorted = srcmap();
    unsorted.functions[0].entries.reverse();
    assert_eq!(SourceMap::decode(&unsorted.encode()).unwrap(), srcmap());

    // Compact: 1000 entries, a few bytes each.
    let big = SourceMap {
        files: vec!["a.avap".into()],
        functions: vec![FunctionMap {
            func_index: 0,
            name: "main".into(),
            entries: (0..1000)
                .map(|i| SrcEntry {
                    offset: i * 6,
                    file: 0,
                    line: i + 1,
                    column: 5,
                })
                .collect(),
        }],
    };
    let encoded = big.encode();
    assert!(encoded.len() <= 4 * 1000 + 32, "{} bytes", encoded.len());
    let decoded = SourceMap::decode(&encoded).unwrap();
    assert_eq!(decoded, big);
    assert_eq!(decoded.lookup(0, 6 * 500 + 3), Some(("a.avap", 501, 5)));
}

#[test]
fn srcmap_decode_rejects_garbage_without_panicking() {
    // xorshift: deterministic pseudo-random bytes.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = usize::try_from(next() % 64).unwrap();
        let mut bytes: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        if next() % 2 == 0 && !bytes.is_empty() {
            bytes[0] = 1; // valid version, so decoding goes deeper
        }
        let _ = SourceMap::decode(&bytes);
    }
    let valid = srcmap().encode();
    for len in 0..valid.len() {
        assert!(
            SourceMap::decode(&valid[..len]).is_err(),
            "prefix of {len} bytes accepted"
        );
    }
    for pos in 0..valid.len() {
        for mask in [0x01u8, 0x40, 0x80, 0xff] {
            let mut bytes = valid.clone();
            bytes[pos] ^= mask;
            let _ = SourceMap::decode(&bytes);
        }
    }
    let mut trailing = valid.clone();
    trailing.push(0);
    assert!(SourceMap::decode(&trailing).is_err());
    // Forged huge counts and overlong varints.
    for bytes in [
        &[1u8, 0xff, 0xff, 0xff, 0xff, 0x0f][..],
        &[1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f],
        &[1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00],
        &[1, 0xff, 0xff, 0xff, 0xff, 0x1f],
        &[2, 0, 0],
        &[1, 1, 1, 0xff, 0],
    ] {
        assert!(
            matches!(SourceMap::decode(bytes).unwrap_err(), ArtifactError::Malformed(_)),
            "{bytes:?}"
        );
    }
}

#[test]
fn key_texts_round_trip() {
    let k = generate_key().unwrap();
    assert_ne!(k.to_bytes(), generate_key().unwrap().to_bytes());
    let secret = encode_secret_key(&k);
    let public = encode_public_key(&k.verifying_key());
    assert!(secret.starts_with("avap-ed25519-secret-v1 ") && secret.ends_with('\n'));
    assert!(public.starts_with("avap-ed25519-public-v1 ") && public.ends_with('\n'));
    assert_eq!(secret.lines().count(), 1);
    assert_eq!(decode_secret_key(&secret).unwrap().to_bytes(), k.to_bytes());
    assert_eq!(decode_public_key(&public).unwrap(), k.verifying_key());
    assert_eq!(
        decode_public_key(&format!("  {}\r\n\n", public.trim())).unwrap(),
        k.verifying_key()
    );

    let id = key_id(&k.verifying_key());
    assert_eq!(id.len(), 16);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));

    let trusted =
        TrustedKeys::from_public_key_texts([public.as_str(), &encode_public_key(&key(3).verifying_key())]).unwrap();
    assert_eq!(trusted.len(), 2);
    assert!(!trusted.is_empty() && TrustedKeys::new().is_empty());
    assert_eq!(trusted.get(&id), Some(&k.verifying_key()));

    assert_eq!(decode_public_key(&secret).unwrap_err(), KeyError::SecretNotPublic);
    assert_eq!(decode_secret_key(&public).unwrap_err(), KeyError::PublicNotSecret);
    assert!(matches!(
        decode_public_key("ssh-ed25519 AAAA").unwrap_err(),
        KeyError::WrongPrefix { .. }
    ));
    assert!(matches!(
        decode_public_key("").unwrap_err(),
        KeyError::WrongPrefix { .. }
    ));
    assert!(matches!(
        decode_public_key("avap-ed25519-public-v1 !!!!").unwrap_err(),
        KeyError::BadBase64(_)
    ));
    assert_eq!(
        decode_public_key("avap-ed25519-public-v1 AAAA").unwrap_err(),
        KeyError::WrongLength { expected: 32, found: 3 }
    );
    assert!(decode_public_key("avap-ed25519-public-v1").is_err());
    assert!(TrustedKeys::from_public_key_texts(["garbage"]).is_err());
    for err in [
        KeyError::SecretNotPublic,
        KeyError::BadBase64("x".into()),
        KeyError::WrongLength { expected: 32, found: 3 },
    ] {
        assert!(!err.to_string().is_empty());
    }
}
