//! Every command without outside effects, through `commands::call` and a
//! test `HostContext` (fixed clock and zone, counting random bytes, results
//! and routes collected, fuel counted).

mod support;
use support::{dict, float, int, list, none, s};

use std::collections::HashMap;

use avap_hostfns::commands::{Outcome, call};
use avap_hostfns::zone::Zone;
use avap_hostfns::{
    AsyncState, Endpoint, ErrorKind, HostContext, HostError, LimitHit, LimitKind, MemoryBudget, Request, Value,
};
use chrono::{DateTime, TimeZone, Utc};

struct TestCtx {
    request: Request,
    now: DateTime<Utc>,
    tz: Zone,
    next_byte: u8,
    fuel_used: u64,
    fuel_budget: u64,
    results: Vec<(String, Value)>,
    endpoints: Vec<Endpoint>,
    asyncs: HashMap<String, AsyncState>,
    memory: MemoryBudget,
}

impl TestCtx {
    fn new() -> Self {
        TestCtx {
            request: Request::default(),
            now: Utc.with_ymd_and_hms(2024, 5, 1, 12, 34, 56).unwrap(),
            tz: Zone::UTC,
            next_byte: 0,
            fuel_used: 0,
            fuel_budget: u64::MAX,
            memory: MemoryBudget::unlimited(),
            results: Vec::new(),
            endpoints: Vec::new(),
            asyncs: HashMap::new(),
        }
    }

    fn with_query(mut self, pairs: &[(&str, &str)]) -> Self {
        self.request.query = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self
    }

    fn with_form(mut self, pairs: &[(&str, &str)]) -> Self {
        self.request.form = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self
    }

    fn with_json(mut self, json: &str) -> Self {
        self.request.json = Some(serde_json::from_str(json).unwrap());
        self
    }

    fn with_tz(mut self, tz: &str) -> Self {
        self.tz = Zone::named(tz).unwrap();
        self
    }
}

impl HostContext for TestCtx {
    fn request(&self) -> &Request {
        &self.request
    }
    fn now(&self) -> DateTime<Utc> {
        self.now
    }
    fn time_zone(&self) -> &Zone {
        &self.tz
    }
    fn fill_random(&mut self, buf: &mut [u8]) -> Result<(), HostError> {
        for byte in buf {
            *byte = self.next_byte;
            self.next_byte = self.next_byte.wrapping_add(37);
        }
        Ok(())
    }
    fn charge(&mut self, units: u64) -> Result<(), HostError> {
        self.fuel_used = self.fuel_used.saturating_add(units);
        if self.fuel_used > self.fuel_budget {
            return Err(HostError::Limit(LimitHit::new(LimitKind::FuelExhausted, "out of fuel")));
        }
        Ok(())
    }
    fn memory(&mut self) -> &mut MemoryBudget {
        &mut self.memory
    }
    fn request_and_memory(&mut self) -> (&Request, &mut MemoryBudget) {
        (&self.request, &mut self.memory)
    }
    fn add_result(&mut self, key: &str, value: &Value) -> Result<(), HostError> {
        match self.results.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => self.results.push((key.to_owned(), value.clone())),
        }
        Ok(())
    }
    fn register_endpoint(&mut self, endpoint: Endpoint) -> Result<(), HostError> {
        self.endpoints.push(endpoint);
        Ok(())
    }
    fn async_result(&mut self, id: &str) -> AsyncState {
        self.asyncs.remove(id).unwrap_or(AsyncState::Unknown)
    }
}

/// Run `name` (form 0) with `args` on a target holding `target`; the
/// command's result (the value written, or the updated target).
fn run_on(ctx: &mut TestCtx, name: &str, form: usize, args: &[Value], target: Value) -> Result<Value, HostError> {
    let refs: Vec<&Value> = args.iter().collect();
    let mut target = target;
    match call(name, form, ctx, &refs, &mut target)? {
        Outcome::Value(v) => Ok(v),
        Outcome::InPlace => Ok(target),
    }
}

fn run(name: &str, args: &[Value]) -> Result<Value, HostError> {
    run_on(&mut TestCtx::new(), name, 0, args, none())
}

fn kind(r: Result<Value, HostError>) -> ErrorKind {
    match r {
        Err(HostError::Script(e)) => e.kind,
        other => panic!("expected a script error, got {other:?}"),
    }
}

fn message(r: Result<Value, HostError>) -> String {
    match r {
        Err(HostError::Script(e)) => e.message,
        other => panic!("expected a script error, got {other:?}"),
    }
}

// ---- dispatch ----

#[test]
fn commands_with_outside_effects_are_not_available() {
    for name in [
        "RequestGet",
        "RequestPost",
        "ormDirect",
        "ormAccessSelect",
        "avapConnector",
        "functionAI",
    ] {
        let r = run(name, &[]);
        assert!(message(r.clone()).contains("command not available yet"), "{name}");
        assert_eq!(kind(r), ErrorKind::NotAvailable);
    }
}

#[test]
fn unknown_commands_are_not_available() {
    assert_eq!(message(run("frobnicate", &[])), "command not available yet: frobnicate");
}

#[test]
fn wrong_argument_count_is_a_type_error() {
    assert_eq!(kind(run("addVar", &[])), ErrorKind::TypeError);
    assert_eq!(kind(run("getListLen", &[s("xs")])), ErrorKind::TypeError);
    assert_eq!(
        kind(run_on(&mut TestCtx::new(), "addVar", 3, &[int(1)], none())),
        ErrorKind::TypeError
    );
}

#[test]
fn every_command_charges_fuel() {
    let mut ctx = TestCtx::new();
    run_on(&mut ctx, "addVar", 0, &[int(1)], none()).unwrap();
    assert!(ctx.fuel_used >= 1);
}

#[test]
fn running_out_of_fuel_ends_the_command() {
    let mut ctx = TestCtx::new();
    ctx.fuel_budget = 10;
    let r = run_on(&mut ctx, "encodeSHA256", 0, &[s(&"x".repeat(100))], none());
    assert!(matches!(r, Err(HostError::Limit(hit)) if hit.kind == LimitKind::FuelExhausted));
}

// ---- addVar ----

#[test]
fn add_var_stores_the_value() {
    assert_eq!(run("addVar", &[float(123.45)]), Ok(float(123.45)));
    assert_eq!(run("addVar", &[s("123.45")]), Ok(s("123.45")));
    assert_eq!(run("addVar", &[list(&[int(1)])]), Ok(list(&[int(1)])));
}

#[test]
fn add_var_turns_digit_strings_into_ints() {
    assert_eq!(run("addVar", &[s("42")]), Ok(int(42)));
    assert_eq!(run("addVar", &[s("-42")]), Ok(s("-42")));
    assert_eq!(run("addVar", &[s("")]), Ok(s("")));
    assert_eq!(
        run("addVar", &[s("99999999999999999999")]),
        Ok(s("99999999999999999999"))
    );
}

// ---- addResult ----

#[test]
fn add_result_records_a_snapshot() {
    let mut ctx = TestCtx::new();
    assert_eq!(
        run_on(&mut ctx, "addResult", 0, &[s("flag"), int(1)], none()),
        Ok(none())
    );
    run_on(&mut ctx, "addResult", 0, &[s("missing"), none()], none()).unwrap();
    run_on(&mut ctx, "addResult", 0, &[s("flag"), int(2)], none()).unwrap();
    assert_eq!(
        ctx.results,
        vec![("flag".to_owned(), int(2)), ("missing".to_owned(), none())]
    );
}

// ---- addParam ----

fn param(ctx: &mut TestCtx, name: &str) -> Value {
    run_on(ctx, "addParam", 0, &[s(name)], none()).unwrap()
}

#[test]
fn add_param_prefers_query_then_json_then_form() {
    let mut ctx = TestCtx::new()
        .with_query(&[("id", "1"), ("id", "9")])
        .with_json(r#"{"id": 2, "note": "from-body"}"#)
        .with_form(&[("note", "from-form"), ("city", "Oslo")]);
    assert_eq!(param(&mut ctx, "id"), int(1));
    assert_eq!(param(&mut ctx, "note"), s("from-body"));
    assert_eq!(param(&mut ctx, "city"), s("Oslo"));
    assert_eq!(param(&mut ctx, "nothing"), none());
}

#[test]
fn add_param_coerces_query_strings() {
    let mut ctx = TestCtx::new().with_query(&[
        ("int", "42"),
        ("neg", "-3"),
        ("float", "2.5"),
        ("empty", ""),
        ("list", "[1, 2]"),
        ("obj", r#"{"a": 1}"#),
        ("yes", "true"),
        ("null", "null"),
        ("word", "hello"),
        ("inf", "inf"),
        ("quoted", r#""Ada""#),
        ("escaped", r#""line\nbreak""#),
        ("lone", r#"""#),
        ("bad", r#""a"b""#),
        ("plus", "+4"),
    ]);
    assert_eq!(param(&mut ctx, "int"), int(42));
    assert_eq!(param(&mut ctx, "neg"), int(-3));
    assert_eq!(param(&mut ctx, "float"), float(2.5));
    assert_eq!(param(&mut ctx, "empty"), none());
    assert_eq!(param(&mut ctx, "list"), list(&[int(1), int(2)]));
    assert_eq!(param(&mut ctx, "obj"), dict(&[("a", int(1))]));
    assert_eq!(param(&mut ctx, "yes"), Value::Bool(true));
    assert_eq!(param(&mut ctx, "null"), none());
    assert_eq!(param(&mut ctx, "word"), s("hello"));
    assert_eq!(param(&mut ctx, "inf"), s("inf"));
    // A JSON string text is decoded like any JSON text (spec §7).
    assert_eq!(param(&mut ctx, "quoted"), s("Ada"));
    assert_eq!(param(&mut ctx, "escaped"), s("line\nbreak"));
    assert_eq!(param(&mut ctx, "lone"), s("\""), "not JSON: kept");
    assert_eq!(param(&mut ctx, "bad"), s(r#""a"b""#), "not JSON: kept");
    assert_eq!(param(&mut ctx, "plus"), float(4.0), "a sign other than - makes a float");
}

#[test]
fn add_param_keeps_json_types() {
    let mut ctx = TestCtx::new().with_json(r#"{"n": "42", "items": [3, 5, 8], "f": 1.0}"#);
    assert_eq!(param(&mut ctx, "n"), s("42"));
    assert_eq!(param(&mut ctx, "items"), list(&[int(3), int(5), int(8)]));
    assert_eq!(param(&mut ctx, "f"), float(1.0));
}

#[test]
fn add_param_coerces_form_strings_and_strips_quotes() {
    let mut ctx = TestCtx::new().with_form(&[("age", "30")]).with_query(&[("'q'", "x")]);
    assert_eq!(param(&mut ctx, "age"), int(30));
    assert_eq!(param(&mut ctx, "\"age\""), int(30));
    assert_eq!(param(&mut ctx, "q"), s("x"));
}

// ---- getQueryParamList ----

#[test]
fn query_param_list_keeps_raw_strings_in_order() {
    let mut ctx = TestCtx::new().with_query(&[("b", "2"), ("a", "x"), ("b", "3")]);
    assert_eq!(
        run_on(&mut ctx, "getQueryParamList", 0, &[], none()),
        Ok(list(&[dict(&[("b", s("2"))]), dict(&[("a", s("x"))])]))
    );
}

// ---- lists ----

#[test]
fn get_list_len() {
    assert_eq!(run("getListLen", &[s("xs"), list(&[int(1), int(2)])]), Ok(int(2)));
    assert_eq!(run("getListLen", &[s("t"), s("héllo")]), Ok(int(5)));
    assert_eq!(run("getListLen", &[s("d"), dict(&[("a", int(1))])]), Ok(int(1)));
    assert_eq!(run("getListLen", &[s("j"), s("[1, [2, 3]]")]), Ok(int(2)));
    assert_eq!(run("getListLen", &[s("t"), s("[not json")]), Ok(int(9)));
    assert_eq!(run("getListLen", &[s("u"), none()]), Ok(int(0)));
    assert_eq!(kind(run("getListLen", &[s("n"), int(5)])), ErrorKind::TypeError);
}

#[test]
fn item_from_list() {
    let basket = list(&[s("apple"), s("pear")]);
    assert_eq!(run("itemFromList", &[s("b"), basket.clone(), int(0)]), Ok(s("apple")));
    assert_eq!(run("itemFromList", &[s("b"), basket.clone(), int(-1)]), Ok(s("pear")));
    assert_eq!(run("itemFromList", &[s("b"), basket.clone(), s("1")]), Ok(s("pear")));
    assert_eq!(
        run("itemFromList", &[s("b"), basket.clone(), float(1.0)]),
        Ok(s("pear"))
    );
    assert_eq!(run("itemFromList", &[s("j"), s("[10, 20]"), int(1)]), Ok(int(20)));
}

#[test]
fn item_from_list_errors() {
    let basket = list(&[s("apple"), s("pear")]);
    assert_eq!(
        kind(run("itemFromList", &[s("b"), basket.clone(), int(2)])),
        ErrorKind::IndexError
    );
    assert_eq!(
        kind(run("itemFromList", &[s("b"), basket.clone(), int(-3)])),
        ErrorKind::IndexError
    );
    assert_eq!(
        kind(run("itemFromList", &[s("b"), basket, s("x")])),
        ErrorKind::ValueError
    );
    assert_eq!(
        kind(run("itemFromList", &[s("u"), none(), int(0)])),
        ErrorKind::IndexError
    );
    assert_eq!(
        kind(run("itemFromList", &[s("d"), dict(&[]), int(0)])),
        ErrorKind::TypeError
    );
    assert_eq!(
        kind(run("itemFromList", &[s("t"), s("plain"), int(0)])),
        ErrorKind::TypeError
    );
}

#[test]
fn variable_to_list_appends_in_place() {
    let mut ctx = TestCtx::new();
    let refs = [&s("pear")];
    let mut target = list(&[s("apple")]);
    assert_eq!(
        call("variableToList", 0, &mut ctx, &refs, &mut target),
        Ok(Outcome::InPlace)
    );
    assert_eq!(target, list(&[s("apple"), s("pear")]));
}

#[test]
fn variable_to_list_creates_the_list() {
    let mut ctx = TestCtx::new();
    assert_eq!(
        run_on(&mut ctx, "variableToList", 0, &[s("apple")], none()),
        Ok(list(&[s("apple")]))
    );
    assert_eq!(
        run_on(&mut ctx, "variableToList", 0, &[int(2)], s("old")),
        Ok(list(&[int(2)]))
    );
}

// ---- dicts ----

#[test]
fn add_variable_to_json_updates_in_place() {
    let mut ctx = TestCtx::new();
    let (key, val) = (s("role"), s("admin"));
    let mut target = dict(&[("name", s("Alice"))]);
    assert_eq!(
        call("AddvariableToJSON", 0, &mut ctx, &[&key, &val], &mut target),
        Ok(Outcome::InPlace)
    );
    assert_eq!(target, dict(&[("name", s("Alice")), ("role", s("admin"))]));
}

#[test]
fn add_variable_to_json_creates_the_dict() {
    let mut ctx = TestCtx::new();
    assert_eq!(
        run_on(&mut ctx, "AddvariableToJSON", 0, &[s("zip"), int(1000)], none()),
        Ok(dict(&[("zip", int(1000))]))
    );
    assert_eq!(
        run_on(&mut ctx, "AddvariableToJSON", 0, &[int(1), none()], int(5)),
        Ok(dict(&[("1", none())]))
    );
    assert_eq!(
        run_on(&mut ctx, "AddvariableToJSON", 0, &[s("b"), int(2)], s(r#"{"a": 1}"#)),
        Ok(dict(&[("a", int(1)), ("b", int(2))]))
    );
}

#[test]
fn variable_from_json() {
    let place = dict(&[("city", s("Lisbon")), ("zip", int(1000))]);
    assert_eq!(run("variableFromJSON", &[place.clone(), s("city")]), Ok(s("Lisbon")));
    assert_eq!(run("variableFromJSON", &[place.clone(), s("'zip'")]), Ok(int(1000)));
    assert_eq!(run("variableFromJSON", &[place, s("country")]), Ok(none()));
    assert_eq!(
        run("variableFromJSON", &[s(r#"{"a": [1]}"#), s("a")]),
        Ok(list(&[int(1)]))
    );
    assert_eq!(run("variableFromJSON", &[s("not json"), s("a")]), Ok(none()));
    assert_eq!(run("variableFromJSON", &[none(), s("a")]), Ok(none()));
}

// ---- strings ----

#[test]
fn replace_uses_regexes() {
    assert_eq!(
        run("replace", &[s("hello big world"), s(" "), s("-")]),
        Ok(s("hello-big-world"))
    );
    assert_eq!(run("replace", &[s("a1b22c"), s(r"\d+"), s("#")]), Ok(s("a#b#c")));
    assert_eq!(
        run("replace", &[s("ann@x bob@y"), s(r"(\w+)@(\w+)"), s(r"\2 at \1")]),
        Ok(s("x at ann y at bob"))
    );
    assert_eq!(run("replace", &[s("cost"), s("cost"), s("$5")]), Ok(s("$5")));
}

#[test]
fn replace_falls_back_to_plain_text() {
    assert_eq!(run("replace", &[s("f(x) = (y"), s("("), s("[")]), Ok(s("f[x) = [y")));
    assert_eq!(run("replace", &[none(), s("a"), s("b")]), Ok(s("")));
    assert_eq!(run("replace", &[int(1001), s("0"), s("_")]), Ok(s("1__1")));
}

#[test]
fn replace_rejects_bad_group_references() {
    assert_eq!(
        kind(run("replace", &[s("abc"), s("(b)"), s(r"\2")])),
        ErrorKind::ValueError
    );
}

#[test]
fn get_regex_joins_matches() {
    assert_eq!(run("getRegex", &[s("a1b22c333"), s(r"\d+")]), Ok(s("122333")));
    assert_eq!(run("getRegex", &[s("id=7;id=8"), s(r"id=(\d)")]), Ok(s("78")));
    assert_eq!(run("getRegex", &[s("abc"), s(r"\d")]), Ok(none()));
    assert_eq!(kind(run("getRegex", &[s("abc"), s("(")])), ErrorKind::ValueError);
}

fn random(form: usize, args: &[Value]) -> Result<Value, HostError> {
    run_on(&mut TestCtx::new(), "randomString", form, args, none())
}

fn all_chars_in(v: &Value, len: usize, allowed: impl Fn(char) -> bool) -> bool {
    match v {
        Value::Str(text) => text.chars().count() == len && text.chars().all(allowed),
        _ => false,
    }
}

#[test]
fn random_string_from_a_class() {
    let token = random(0, &[s("[A-Z0-9]"), int(12)]).unwrap();
    assert!(
        all_chars_in(&token, 12, |c| c.is_ascii_uppercase() || c.is_ascii_digit()),
        "{token:?}"
    );
    let hexits = random(0, &[s(r"[a-f\d]"), s("40")]).unwrap();
    assert!(
        all_chars_in(&hexits, 40, |c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{hexits:?}"
    );
    let digits = random(0, &[s(r"\d"), int(5)]).unwrap();
    assert!(all_chars_in(&digits, 5, |c| c.is_ascii_digit()), "{digits:?}");
    let dashes = random(0, &[s("[-x]"), int(8)]).unwrap();
    assert!(all_chars_in(&dashes, 8, |c| c == '-' || c == 'x'), "{dashes:?}");
}

#[test]
fn random_string_two_argument_form_is_alphanumeric() {
    let token = random(1, &[int(32)]).unwrap();
    assert!(all_chars_in(&token, 32, |c| c.is_ascii_alphanumeric()), "{token:?}");
    assert_eq!(random(1, &[int(0)]), Ok(s("")));
}

#[test]
fn random_string_errors() {
    assert_eq!(kind(random(0, &[s("[^a]"), int(3)])), ErrorKind::ValueError);
    assert_eq!(kind(random(0, &[s("[z-a]"), int(3)])), ErrorKind::ValueError);
    assert_eq!(kind(random(0, &[s("[a-z]{3}"), int(3)])), ErrorKind::ValueError);
    assert_eq!(kind(random(1, &[int(1_000_001)])), ErrorKind::ValueError);
    assert_eq!(kind(random(1, &[int(-1)])), ErrorKind::ValueError);
    assert_eq!(kind(random(1, &[s("many")])), ErrorKind::ValueError);
}

#[test]
fn hashes() {
    assert_eq!(
        run("encodeSHA256", &[s("secret123")]),
        Ok(s("fcf730b6d95236ecd3c9fc2d92d7b6b2bb061514961aec041d6c7a7192f592e4"))
    );
    assert_eq!(run("encodeMD5", &[s("abc")]), Ok(s("900150983cd24fb0d6963f7d28e17f72")));
    assert_eq!(run("encodeMD5", &[none()]), Ok(s("d41d8cd98f00b204e9800998ecf8427e")));
    assert_eq!(run("encodeMD5", &[int(123)]), run("encodeMD5", &[s("123")]));
}

// ---- time (clock fixed at 2024-05-01 12:34:56 UTC) ----

#[test]
fn get_date_time_formats_now() {
    assert_eq!(
        run("getDateTime", &[s("%Y-%m-%d %H:%M:%S"), int(0), s("UTC")]),
        Ok(s("2024-05-01 12:34:56"))
    );
    assert_eq!(run("getDateTime", &[s("%H:%M"), int(3600), s("")]), Ok(s("13:34")));
    assert_eq!(
        run("getDateTime", &[s("%H:%M %Z"), none(), s("Europe/Madrid")]),
        Ok(s("14:34 CEST"))
    );
    assert_eq!(
        run("getDateTime", &[s("%S.%f"), float(0.5), none()]),
        Ok(s("56.500000"))
    );
}

#[test]
fn get_date_time_uses_the_server_zone_by_default() {
    let mut ctx = TestCtx::new().with_tz("America/New_York");
    assert_eq!(
        run_on(&mut ctx, "getDateTime", 0, &[s("%H:%M"), int(0), s("")], none()),
        Ok(s("08:34"))
    );
}

#[test]
fn get_date_time_empty_format_is_epoch_float() {
    assert_eq!(run("getDateTime", &[s(""), int(0), s("")]), Ok(float(1_714_566_896.0)));
    assert_eq!(
        run("getDateTime", &[none(), int(-96), none()]),
        Ok(float(1_714_566_800.0))
    );
}

#[test]
fn get_date_time_errors() {
    assert_eq!(
        kind(run("getDateTime", &[s("%Y"), int(0), s("Mars/Olympus")])),
        ErrorKind::ValueError
    );
    assert_eq!(
        kind(run("getDateTime", &[s("%Y"), s("soon"), s("UTC")])),
        ErrorKind::ValueError
    );
    assert_eq!(
        kind(run("getDateTime", &[s("%Q"), int(0), s("UTC")])),
        ErrorKind::ValueError
    );
}

#[test]
fn get_time_stamp_parses_in_the_server_zone() {
    assert_eq!(
        run("getTimeStamp", &[s("2024-05-01"), s("%Y-%m-%d"), int(0)]),
        Ok(int(1_714_521_600))
    );
    assert_eq!(
        run(
            "getTimeStamp",
            &[s("2024-05-01 12:34:56"), s("%Y-%m-%d %H:%M:%S"), int(4)]
        ),
        Ok(int(1_714_566_900))
    );
    let mut madrid = TestCtx::new().with_tz("Europe/Madrid");
    assert_eq!(
        run_on(
            &mut madrid,
            "getTimeStamp",
            0,
            &[s("2024-05-01"), s("%Y-%m-%d"), int(0)],
            none()
        ),
        Ok(int(1_714_521_600 - 7200))
    );
}

#[test]
fn get_time_stamp_honours_offsets_and_iso_text() {
    assert_eq!(
        run(
            "getTimeStamp",
            &[s("2024-05-01 02:00:00 +0200"), s("%Y-%m-%d %H:%M:%S %z"), int(0)]
        ),
        Ok(int(1_714_521_600))
    );
    assert_eq!(
        run("getTimeStamp", &[s("2024-05-01T00:00:00Z"), s(""), int(0)]),
        Ok(int(1_714_521_600))
    );
    assert_eq!(
        run("getTimeStamp", &[s("2024-05-01"), none(), float(0.5)]),
        Ok(float(1_714_521_600.5))
    );
}

#[test]
fn get_time_stamp_mismatch_is_a_value_error() {
    let r = run("getTimeStamp", &[s("May 1"), s("%Y-%m-%d"), int(0)]);
    assert_eq!(kind(r.clone()), ErrorKind::ValueError);
    assert!(message(r).contains("does not match format"));
}

#[test]
fn stamp_to_datetime_formats_epoch_seconds() {
    assert_eq!(
        run("stampToDatetime", &[int(1_714_566_896), s("%Y-%m-%d %H:%M:%S"), int(0)]),
        Ok(s("2024-05-01 12:34:56"))
    );
    assert_eq!(
        run("stampToDatetime", &[s("1714566896"), s("%d/%m/%Y"), int(86_400)]),
        Ok(s("02/05/2024"))
    );
    assert_eq!(
        run("stampToDatetime", &[float(1_714_566_896.25), s(""), int(1)]),
        Ok(float(1_714_566_897.25))
    );
    let mut tokyo = TestCtx::new().with_tz("Asia/Tokyo");
    assert_eq!(
        run_on(&mut tokyo, "stampToDatetime", 0, &[int(0), s("%H:%M"), int(0)], none()),
        Ok(s("09:00"))
    );
}

#[test]
fn stamp_to_datetime_errors() {
    assert_eq!(
        kind(run("stampToDatetime", &[s("yesterday"), s("%Y"), int(0)])),
        ErrorKind::ValueError
    );
    assert_eq!(
        kind(run("stampToDatetime", &[none(), s("%Y"), int(0)])),
        ErrorKind::TypeError
    );
    assert_eq!(
        kind(run("stampToDatetime", &[float(1e300), s("%Y"), int(0)])),
        ErrorKind::ValueError
    );
}

// ---- raise, registerEndpoint, gather ----

#[test]
fn raise_is_a_user_error_with_the_message() {
    let r = run("raise", &[s("card declined")]);
    assert_eq!(kind(r.clone()), ErrorKind::UserError);
    assert_eq!(message(r), "card declined");
    assert_eq!(message(run("raise", &[int(42)])), "42");
}

#[test]
fn register_endpoint_declares_a_route() {
    let mut ctx = TestCtx::new();
    let args = [
        s("/greet"),
        s("get"),
        list(&[s("auth")]),
        s("Greets the caller"),
        s("greet"),
        none(),
        s("message"),
        none(),
    ];
    assert_eq!(run_on(&mut ctx, "registerEndpoint", 0, &args, none()), Ok(none()));
    assert_eq!(
        ctx.endpoints,
        vec![Endpoint {
            path: "/greet".to_owned(),
            method: "GET".to_owned(),
            middleware: vec!["auth".to_owned()],
            description: "Greets the caller".to_owned(),
            handler: "greet".to_owned(),
            output: Some("message".to_owned()),
        }]
    );
}

#[test]
fn register_endpoint_without_middleware_or_output() {
    let mut ctx = TestCtx::new();
    let args = [
        s("ping"),
        s("POST"),
        list(&[]),
        none(),
        s("pong"),
        none(),
        s(""),
        none(),
    ];
    run_on(&mut ctx, "registerEndpoint", 0, &args, none()).unwrap();
    let route = &ctx.endpoints[0];
    assert_eq!(
        (route.path.as_str(), route.middleware.len(), route.output.clone()),
        ("/ping", 0, None)
    );
}

#[test]
fn register_endpoint_errors() {
    let no_handler = [s("/x"), s("GET"), none(), none(), s(""), none(), s(""), none()];
    assert_eq!(kind(run("registerEndpoint", &no_handler)), ErrorKind::ValueError);
    let bad_middleware = [
        s("/x"),
        s("GET"),
        list(&[int(1)]),
        none(),
        s("h"),
        none(),
        s(""),
        none(),
    ];
    assert_eq!(kind(run("registerEndpoint", &bad_middleware)), ErrorKind::TypeError);
}

#[test]
fn gather_returns_the_block_variables() {
    let mut ctx = TestCtx::new();
    ctx.asyncs.insert(
        "lookup".to_owned(),
        AsyncState::Done(Ok(dict(&[("lookupDone", int(1))]))),
    );
    assert_eq!(
        run_on(&mut ctx, "gather", 0, &[s("lookup"), int(5)], none()),
        Ok(dict(&[("lookupDone", int(1))]))
    );
}

#[test]
fn gather_passes_on_the_block_error() {
    let mut ctx = TestCtx::new();
    let failure = HostError::script(ErrorKind::KeyError, "'missing'");
    ctx.asyncs
        .insert("slow".to_owned(), AsyncState::Done(Err(failure.clone())));
    assert_eq!(
        run_on(&mut ctx, "gather", 0, &[s("slow"), int(1)], none()),
        Err(failure)
    );
}

#[test]
fn gather_of_a_block_still_running_is_a_timeout_error() {
    // The runtime waited as long as asked before the command runs.
    let mut ctx = TestCtx::new();
    ctx.asyncs.insert("slow".to_owned(), AsyncState::Running);
    let r = run_on(&mut ctx, "gather", 0, &[s("slow"), float(0.25)], none());
    assert_eq!(kind(r.clone()), ErrorKind::TimeoutError);
    assert!(message(r).contains("go_async block 'slow' did not finish within 0.25 s"));
}

#[test]
fn gather_wants_a_timeout_in_seconds() {
    for bad in [s("soon"), int(-1), float(f64::NAN), none(), list(&[])] {
        let r = run("gather", &[s("job"), bad.clone()]);
        assert_eq!(kind(r.clone()), ErrorKind::ValueError, "{bad:?}");
        assert!(message(r).contains("timeoutSeconds must be a number of seconds"));
    }
    assert_eq!(avap_hostfns::commands::gather_timeout(&s(" 1.5 ")), Ok(1.5));
    assert_eq!(avap_hostfns::commands::gather_timeout(&int(0)), Ok(0.0));
}

#[test]
fn gather_of_an_unknown_block_is_a_value_error() {
    let r = run("gather", &[s("nope"), int(1)]);
    assert_eq!(kind(r.clone()), ErrorKind::ValueError);
    assert!(message(r).contains("no go_async block with id 'nope'"));
}
