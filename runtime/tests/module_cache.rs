//! The on-disk module cache (`avap run`): a second process gets the native
//! code of the first without compiling, whoever signed the artifact; a
//! broken, foreign or misplaced entry is never loaded but compiled again;
//! the artifact's own checks come first.

mod common;

use std::path::{Path, PathBuf};

use avap_hostfns::artifact::{SigningKey, TrustedKeys};
use avap_runtime::module_cache::{CacheOutcome, DiskCache, KEY_FILE};
use avap_runtime::{LoadError, RunInput, Runtime, RuntimeConfig};
use common::{artifact, block_on, test_key};

const HELLO: &str = "addVar(greeting, \"Hello\")\naddResult(greeting)\n";

/// A fresh process's runtime (empty in-memory cache), on-demand instances
/// as `avap run` has them.
fn runtime(trusted: &[&SigningKey]) -> Runtime {
    let mut keys = TrustedKeys::new();
    for key in trusted {
        keys.add(key.verifying_key());
    }
    Runtime::new(RuntimeConfig {
        trusted_keys: keys,
        pooling: false,
        ..RuntimeConfig::default()
    })
    .expect("runtime starts")
}

fn cache_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("module-cache")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The cache's one entry file.
fn entries(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for engine in std::fs::read_dir(root).unwrap() {
        let engine = engine.unwrap().path();
        if engine.is_dir() {
            for entry in std::fs::read_dir(&engine).unwrap() {
                found.push(entry.unwrap().path());
            }
        }
    }
    found
}

fn greeting(runtime: &Runtime, module: &avap_runtime::LoadedModule) -> String {
    let report = block_on(runtime.run(module, RunInput::default()));
    report.envelope.json()["result"]["greeting"]
        .as_str()
        .unwrap_or("<none>")
        .to_owned()
}

#[test]
fn a_second_process_loads_the_first_ones_native_code() {
    let root = cache_dir("second-process");
    let key = test_key(1);
    let bytes = artifact(HELLO, Some(&key));

    let first = runtime(&[&key]);
    let cache = DiskCache::open(&root).unwrap();
    let (module, outcome) = first.load_cached(&bytes, &cache).unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    assert_eq!(first.modules_compiled(), 1);
    assert_eq!(greeting(&first, &module), "Hello");
    // Within one process the loaded module is reused.
    assert_eq!(first.load_cached(&bytes, &cache).unwrap().1, CacheOutcome::Memory);

    let second = runtime(&[&key]);
    let cache = DiskCache::open(&root).unwrap();
    let (module, outcome) = second.load_cached(&bytes, &cache).unwrap();
    assert_eq!(outcome, CacheOutcome::Hit);
    assert_eq!(second.modules_compiled(), 0, "a hit compiles nothing");
    assert_eq!(greeting(&second, &module), "Hello");
    assert_eq!(entries(&root).len(), 1);
}

#[test]
fn the_same_wasm_signed_by_another_key_hits_the_same_entry() {
    // `avap run script.avap` signs with a new session key in every process.
    let root = cache_dir("other-signer");
    let (a, b) = (test_key(2), test_key(3));
    let cache = DiskCache::open(&root).unwrap();
    runtime(&[&a]).load_cached(&artifact(HELLO, Some(&a)), &cache).unwrap();
    let later = runtime(&[&b]);
    let (module, outcome) = later.load_cached(&artifact(HELLO, Some(&b)), &cache).unwrap();
    assert_eq!(outcome, CacheOutcome::Hit);
    assert_eq!(greeting(&later, &module), "Hello");
}

#[test]
fn an_untrusted_artifact_is_refused_even_with_its_native_code_cached() {
    let root = cache_dir("untrusted");
    let (trusted, stranger) = (test_key(4), test_key(5));
    let cache = DiskCache::open(&root).unwrap();
    runtime(&[&stranger])
        .load_cached(&artifact(HELLO, Some(&stranger)), &cache)
        .unwrap();
    let err = runtime(&[&trusted])
        .load_cached(&artifact(HELLO, Some(&stranger)), &cache)
        .unwrap_err();
    assert!(matches!(err, LoadError::Artifact(_)), "{err}");
}

#[test]
fn a_corrupt_entry_is_compiled_again_and_replaced() {
    let root = cache_dir("corrupt");
    let key = test_key(6);
    let bytes = artifact(HELLO, Some(&key));
    let cache = DiskCache::open(&root).unwrap();
    runtime(&[&key]).load_cached(&bytes, &cache).unwrap();
    let [entry] = entries(&root).try_into().unwrap();
    let good = std::fs::read(&entry).unwrap();

    for broken in [
        {
            let mut flipped = good.clone();
            *flipped.last_mut().unwrap() ^= 0x40;
            flipped
        },
        good[..good.len() / 2].to_vec(),
        b"not a module".to_vec(),
    ] {
        std::fs::write(&entry, &broken).unwrap();
        let fresh = runtime(&[&key]);
        let (module, outcome) = fresh.load_cached(&bytes, &cache).unwrap();
        assert_eq!(outcome, CacheOutcome::Miss, "a broken entry is not loaded");
        assert_eq!(fresh.modules_compiled(), 1);
        assert_eq!(greeting(&fresh, &module), "Hello");
        assert_eq!(
            std::fs::read(&entry).unwrap().len(),
            good.len(),
            "the entry is written again"
        );
    }
}

#[test]
fn an_entry_sealed_by_another_cache_or_for_another_artifact_is_not_loaded() {
    let key = test_key(8);
    let hello = artifact(HELLO, Some(&key));
    let other = artifact("addVar(x, 1)\naddResult(x)\n", Some(&key));

    // Another cache's entry (another key) copied in under the same name.
    let (root_a, root_b) = (cache_dir("foreign-a"), cache_dir("foreign-b"));
    let (cache_a, cache_b) = (DiskCache::open(&root_a).unwrap(), DiskCache::open(&root_b).unwrap());
    runtime(&[&key]).load_cached(&hello, &cache_a).unwrap();
    let [foreign] = entries(&root_a).try_into().unwrap();
    let target = root_b.join(foreign.strip_prefix(&root_a).unwrap());
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(&foreign, &target).unwrap();
    assert_eq!(
        runtime(&[&key]).load_cached(&hello, &cache_b).unwrap().1,
        CacheOutcome::Miss
    );

    // The native code of one artifact renamed to another's entry.
    let root = cache_dir("renamed");
    let cache = DiskCache::open(&root).unwrap();
    runtime(&[&key]).load_cached(&hello, &cache).unwrap();
    let [hello_entry] = entries(&root).try_into().unwrap();
    runtime(&[&key]).load_cached(&other, &cache).unwrap();
    let other_entry = entries(&root).into_iter().find(|p| p != &hello_entry).unwrap();
    std::fs::copy(&hello_entry, &other_entry).unwrap();
    let fresh = runtime(&[&key]);
    let (module, outcome) = fresh.load_cached(&other, &cache).unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    let report = block_on(fresh.run(&module, RunInput::default()));
    assert_eq!(report.envelope.json()["result"]["x"], 1);
}

#[test]
fn the_cache_key_is_kept_private_and_reused() {
    let root = cache_dir("key");
    DiskCache::open(&root).unwrap();
    let key_text = std::fs::read_to_string(root.join(KEY_FILE)).unwrap();
    DiskCache::open(&root).unwrap();
    assert_eq!(std::fs::read_to_string(root.join(KEY_FILE)).unwrap(), key_text);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&root), 0o700);
    }
    std::fs::write(root.join(KEY_FILE), "garbage").unwrap();
    let err = DiskCache::open(&root).unwrap_err().to_string();
    assert!(err.contains("delete the cache directory"), "{err}");
}
