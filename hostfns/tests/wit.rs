//! `hostfns/wit/avap-host.wit` must describe exactly the Rust registry:
//! every command (name, forms, argument slots, capability class, return
//! kind) and every runtime helper (name, core-wasm types). The conventions
//! are documented at the top of the WIT file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use avap_hostfns::abi::{Helper, Ty};
use avap_hostfns::signature::{Capability, ParamKind, Returns};
use avap_hostfns::{CommandSig, commands};
use wit_parser::{Function, Interface, Resolve, Type, TypeDefKind};

const WIT: &str = "wit/avap-host.wit";

fn load() -> (Resolve, wit_parser::PackageId) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(WIT);
    let text = std::fs::read_to_string(&path).expect("read the WIT file");
    let mut resolve = Resolve::default();
    let package = resolve
        .push_source(&path.display().to_string(), &text)
        .unwrap_or_else(|e| panic!("{WIT} does not parse: {e:#}"));
    (resolve, package)
}

fn interfaces(resolve: &Resolve, package: wit_parser::PackageId) -> BTreeMap<String, &Interface> {
    resolve.packages[package]
        .interfaces
        .iter()
        .map(|(name, id)| (name.clone(), &resolve.interfaces[*id]))
        .collect()
}

/// `@key value` lines of a doc comment.
fn tags(docs: &wit_parser::Docs) -> Vec<(String, String)> {
    docs.contents
        .as_deref()
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.trim().strip_prefix('@'))
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_owned(), v.trim().to_owned())
        })
        .collect()
}

fn tag<'a>(tags: &'a [(String, String)], key: &str, what: &str) -> &'a str {
    let found: Vec<&str> = tags.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect();
    assert_eq!(
        found.len(),
        1,
        "{what}: expected exactly one `@{key}` doc line, found {found:?}"
    );
    found[0]
}

/// `RequestGet` -> `request-get`, `encodeSHA256` -> `encode-sha256`,
/// `AddvariableToJSON` -> `addvariable-to-json`, `functionAI` -> `function-ai`.
fn kebab(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
            if prev.is_ascii_lowercase() || prev.is_ascii_digit() || (prev.is_ascii_uppercase() && next_lower) {
                out.push('-');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn kind_name(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Target => "target",
        ParamKind::Name => "name",
        ParamKind::Value => "value",
        ParamKind::Literal => "literal",
    }
}

fn returns_name(returns: Returns) -> &'static str {
    match returns {
        Returns::Nothing => "nothing",
        Returns::Target => "target",
        Returns::Value => "value",
    }
}

/// The slot parameter names a form must have in the WIT.
fn slots(form: &[avap_hostfns::signature::Param]) -> Vec<String> {
    form.iter()
        .flat_map(|p| {
            let k = kebab(p.name);
            if p.kind == ParamKind::Name {
                vec![format!("{k}-name"), k]
            } else {
                vec![k]
            }
        })
        .collect()
}

fn is_value_record(resolve: &Resolve, ty: &Type) -> bool {
    match ty {
        Type::Id(id) => {
            let def = &resolve.types[*id];
            match &def.kind {
                TypeDefKind::Type(inner) => is_value_record(resolve, inner),
                TypeDefKind::Record(r) => {
                    def.name.as_deref() == Some("value")
                        && r.fields.len() == 2
                        && (r.fields[0].name.as_str(), r.fields[0].ty) == ("tag", Type::S32)
                        && (r.fields[1].name.as_str(), r.fields[1].ty) == ("payload", Type::S64)
                }
                _ => false,
            }
        }
        _ => false,
    }
}

fn check_command_func(resolve: &Resolve, class: &str, f: &Function, sig: &CommandSig, form_index: usize) {
    let what = format!("WIT func `{class}.{}` (`{}` form {form_index})", f.name, sig.name);
    let form = sig.forms[form_index];
    let expected_name = if form_index == 0 {
        kebab(sig.name)
    } else {
        format!("{}-form{}", kebab(sig.name), form_index + 1)
    };
    assert_eq!(f.name, expected_name, "{what}: func name");
    let t = tags(&f.docs);
    assert_eq!(tag(&t, "returns", &what), returns_name(sig.returns), "{what}: @returns");
    let params: Vec<(String, String)> = t
        .iter()
        .filter(|(k, _)| k == "param")
        .map(|(_, v)| {
            let (n, k) = v.split_once(' ').unwrap_or((v, ""));
            (n.to_owned(), k.to_owned())
        })
        .collect();
    let expected_params: Vec<(String, String)> = form
        .iter()
        .map(|p| (kebab(p.name), kind_name(p.kind).to_owned()))
        .collect();
    assert_eq!(
        params, expected_params,
        "{what}: @param lines (name and kind, in order)"
    );
    let names: Vec<&str> = f.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, slots(form), "{what}: argument slots (arity and names)");
    for p in &f.params {
        assert!(
            is_value_record(resolve, &p.ty),
            "{what}: slot `{}` must be of type `value`",
            p.name
        );
    }
    assert!(
        f.result.as_ref().is_some_and(|r| is_value_record(resolve, r)),
        "{what}: must return `value` (tag 15 = error pending)"
    );
}

#[test]
fn every_command_is_in_the_interface_of_its_class_and_nothing_else_is() {
    let (resolve, package) = load();
    let by_name = interfaces(&resolve, package);
    let mut seen: BTreeSet<(String, usize)> = BTreeSet::new();
    for class in Capability::ALL {
        let iface = by_name
            .get(class.as_str())
            .unwrap_or_else(|| panic!("{WIT}: no interface for capability class `{}`", class.as_str()));
        let t = tags(&iface.docs);
        assert_eq!(
            tag(&t, "capability", class.as_str()),
            class.as_str(),
            "interface `{}`: @capability must name its class",
            class.as_str()
        );
        for f in iface.functions.values() {
            let what = format!("WIT func `{}.{}`", class.as_str(), f.name);
            let t = tags(&f.docs);
            let name = tag(&t, "command", &what);
            let form: usize = tag(&t, "form", &what)
                .parse()
                .unwrap_or_else(|e| panic!("{what}: @form is not a number: {e}"));
            let sig = avap_hostfns::command(name)
                .unwrap_or_else(|| panic!("{what}: `@command {name}` is not in the Rust registry"));
            assert_eq!(
                sig.capability,
                class,
                "{what}: `{name}` is `{}` in the registry but listed under `{}`",
                sig.capability.as_str(),
                class.as_str()
            );
            assert!(form < sig.forms.len(), "{what}: `{name}` has no form {form}");
            assert!(
                seen.insert((name.to_owned(), form)),
                "{what}: `{name}` form {form} listed twice"
            );
            check_command_func(&resolve, class.as_str(), f, sig, form);
        }
    }
    let missing: Vec<String> = commands()
        .iter()
        .flat_map(|c| (0..c.forms.len()).map(move |i| (c.name.to_owned(), i)))
        .filter(|key| !seen.contains(key))
        .map(|(n, i)| format!("{n} form {i}"))
        .collect();
    assert!(missing.is_empty(), "{WIT} lacks these registry commands: {missing:?}");
}

fn core_type(resolve: &Resolve, ty: &Type) -> Vec<Ty> {
    match ty {
        Type::S32 => vec![Ty::I32],
        Type::S64 => vec![Ty::I64],
        Type::Id(id) => match &resolve.types[*id].kind {
            TypeDefKind::Tuple(t) => t.types.iter().flat_map(|t| core_type(resolve, t)).collect(),
            TypeDefKind::Type(inner) => core_type(resolve, inner),
            other => panic!("helpers use only s32, s64 and tuples of them, found {other:?}"),
        },
        other => panic!("helpers use only s32, s64 and tuples of them, found {other:?}"),
    }
}

#[test]
fn the_helpers_interface_matches_the_helper_enum() {
    let (resolve, package) = load();
    let by_name = interfaces(&resolve, package);
    let helpers = by_name.get("helpers").expect("a `helpers` interface");
    let wit: BTreeSet<String> = helpers.functions.keys().cloned().collect();
    let rust: BTreeSet<String> = Helper::ALL.iter().map(|h| h.name().replace('_', "-")).collect();
    assert_eq!(wit, rust, "helper names (WIT uses `-` where the import name has `_`)");
    for h in Helper::ALL {
        let f = &helpers.functions[&h.name().replace('_', "-")];
        let (params, results) = h.signature();
        let wit_params: Vec<Ty> = f.params.iter().flat_map(|p| core_type(&resolve, &p.ty)).collect();
        assert_eq!(wit_params, params, "helper `{}`: parameter types", h.name());
        let wit_results = f.result.as_ref().map(|r| core_type(&resolve, r)).unwrap_or_default();
        assert_eq!(wit_results, results, "helper `{}`: result types", h.name());
    }
}

#[test]
fn the_world_imports_every_class_and_the_helpers_and_nothing_else() {
    let (resolve, package) = load();
    let world_id = resolve.packages[package].worlds["avap-script"];
    let world = &resolve.worlds[world_id];
    let imported: BTreeSet<String> = world.imports.keys().map(|key| resolve.name_world_key(key)).collect();
    let mut expected: BTreeSet<String> = Capability::ALL
        .iter()
        .map(|c| format!("avap:host/{}@0.1.0", c.as_str()))
        .collect();
    expected.insert("avap:host/helpers@0.1.0".into());
    expected.insert("avap:host/types@0.1.0".into());
    assert_eq!(imported, expected);
    assert!(world.exports.is_empty(), "the world exports nothing");
}

#[test]
fn kebab_case_convention() {
    assert_eq!(kebab("RequestGet"), "request-get");
    assert_eq!(kebab("encodeSHA256"), "encode-sha256");
    assert_eq!(kebab("AddvariableToJSON"), "addvariable-to-json");
    assert_eq!(kebab("functionAI"), "function-ai");
    assert_eq!(kebab("whereSelector"), "where-selector");
    assert_eq!(kebab("encodeMD5"), "encode-md5");
}
