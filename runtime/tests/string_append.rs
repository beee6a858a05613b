//! `str + str` appends in place to the left operand's buffer (issue 8: the
//! `string_build` benchmark). Strings stay immutable values: every older
//! handle to the string keeps reading its own text, through garbage
//! collections too.

mod common;

use common::Harness;

#[test]
fn older_handles_keep_their_text_after_appends() {
    let h = Harness::new();
    let src = "s = \"ab\"\ns = s + \"c\"\nt = s\ns = s + \"d\"\nu = s\ns = s + \"e\"\n\
               v = t + \"!\"\nw = s + s\nx = u + u\naddResult(s)\naddResult(t)\naddResult(u)\n\
               addResult(v)\naddResult(w)\naddResult(x)\n";
    let r = h.run(src);
    assert_eq!(r.http_status, 200, "{}", r.envelope);
    let result = &r.envelope.json()["result"];
    assert_eq!(result["s"], "abcde");
    assert_eq!(result["t"], "abc");
    assert_eq!(result["u"], "abcd");
    assert_eq!(result["v"], "abc!");
    assert_eq!(result["w"], "abcdeabcde");
    assert_eq!(result["x"], "abcdabcd");
}

#[test]
fn appending_in_a_function_leaves_the_callers_string_alone() {
    let h = Harness::new();
    let src = "function shout(text) {\n    text = text + \"!\"\n    return(text)\n}\n\
               base = \"hi\" + \"\"\nbase = base + \" there\"\nloud = shout(base)\nlouder = shout(loud)\n\
               addResult(base)\naddResult(loud)\naddResult(louder)\n";
    let r = h.run(src);
    assert_eq!(r.http_status, 200, "{}", r.envelope);
    assert_eq!(r.envelope.json()["result"]["base"], "hi there");
    assert_eq!(r.envelope.json()["result"]["loud"], "hi there!");
    assert_eq!(r.envelope.json()["result"]["louder"], "hi there!!");
}

#[test]
fn an_old_version_survives_garbage_collections() {
    let h = Harness::new();
    // 3,000 appends of 1,000 characters: about 3 MB allocated, so the
    // collector runs while `keep` (the string after 1,000 appends) is only
    // reachable as a prefix of the growing buffer.
    let src = "chunk = \"\"\nstartLoop(i, 1, 100)\n    chunk = chunk + \"0123456789\"\nendLoop()\n\
               s = \"\"\nkeep = \"\"\nstartLoop(i, 1, 3000)\n    s = s + chunk\n    if(i, 1000, =)\n\
               \x20       keep = s\n    end()\nendLoop()\nlast = keep[999999]\nn = len(keep)\nm = len(s)\n\
               same = keep + \"\" == s\naddResult(n)\naddResult(m)\naddResult(last)\naddResult(same)\n";
    let r = h.run(src);
    assert_eq!(r.http_status, 200, "{}", r.envelope);
    assert_eq!(r.envelope.json()["result"]["n"], 1_000_000);
    assert_eq!(r.envelope.json()["result"]["m"], 3_000_000);
    assert_eq!(r.envelope.json()["result"]["last"], "9");
    assert_eq!(r.envelope.json()["result"]["same"], false);
}

#[test]
fn a_long_concatenation_loop_is_linear() {
    let h = Harness::new();
    // 200,000 one-character appends: 20 GB copied, and 2.5 billion fuel
    // units charged, if every append copied the whole string.
    let src = "s = \"\"\nstartLoop(i, 1, 200000)\n    s = s + \"x\"\nendLoop()\nn = len(s)\naddResult(n)\n";
    let r = h.run(src);
    assert_eq!(r.http_status, 200, "{}", r.envelope);
    assert_eq!(r.envelope.json()["result"]["n"], 200_000);
    assert!(r.usage.fuel < 100_000_000, "fuel {}", r.usage.fuel);
}
