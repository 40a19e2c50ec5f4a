//! Checks over the committed header (include/cluster.h, itself checked to
//! be what cbindgen generates) and over the Julia constants that restate
//! it:
//!
//! - every name the header declares is in the C API's namespace
//!   (`cluster_*` / `CLUSTER_*`): nothing of the core leaks in;
//! - the C status enum is the core's `ErrorKind` table, name for name and
//!   number for number, and so are `CLUSTER_ERR_*` and `STATUS_NAMES` in
//!   bindings/julia/LibCluster/src/capi.jl;
//! - every function's doc states its ownership, whether it blocks, and
//!   from which threads it may be called, on lines starting `Ownership:`,
//!   `Blocking:` and `Threads:`;
//! - every function is wrapped by capi.jl or listed there as deliberately
//!   not wrapped (its blocking forms, and what the package builds in Julia).

use super::status::c_name;
use crate::ErrorKind;
use std::collections::{BTreeMap, BTreeSet};

fn read(rel: &str) -> String {
    let path = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn header() -> String {
    read("include/cluster.h")
}

/// The text with `/* */` and `//` comments blanked out.
fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("/*") {
            let end = r.find("*/").expect("unterminated comment");
            out.push(' ');
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else {
            let ch = rest.chars().next().unwrap();
            out.push(ch);
            rest = &rest[ch.len_utf8()..];
        }
    }
    out
}

fn ident_before(s: &str) -> Option<String> {
    let t = s.trim_end();
    let start = t.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
    let id = &t[start..];
    (!id.is_empty()).then(|| id.to_string())
}

fn ident_after(s: &str) -> Option<String> {
    let t = s.trim_start();
    let end = t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(t.len());
    (end > 0).then(|| t[..end].to_string())
}

/// The exported functions, each with its doc comment (the `/** */` block
/// right before its declaration; empty when there is none).
fn functions(h: &str) -> Vec<(String, String)> {
    let start = h.find("extern \"C\" {").expect("the header has an extern \"C\" block");
    let end = h.rfind("}  // extern \"C\"").expect("the extern \"C\" block ends");
    let mut rest = &h[start + "extern \"C\" {".len()..end];
    let mut out = Vec::new();
    let mut doc: Option<String> = None;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        if let Some(r) = rest.strip_prefix("/**") {
            let e = r.find("*/").expect("unterminated doc comment");
            doc = Some(r[..e].to_string());
            rest = &r[e + 2..];
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = &r[r.find("*/").expect("unterminated comment") + 2..];
        } else if let Some(r) = rest.strip_prefix("//").or_else(|| rest.strip_prefix('#')) {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else {
            let e = rest.find(';').expect("a declaration ends with ;");
            let decl = &rest[..e];
            if let Some(name) = decl.find('(').and_then(|p| ident_before(&decl[..p])) {
                out.push((name, doc.take().unwrap_or_default()));
            }
            doc = None;
            rest = &rest[e + 1..];
        }
    }
    out
}

/// Every name the header declares: macros, enums and their variants,
/// typedefs, structs, function pointer types and functions.
fn declared_names(h: &str) -> Vec<String> {
    let code = strip_comments(h);
    let mut names = Vec::new();
    for line in code.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("#define ") {
            names.extend(ident_after(rest));
        } else if let Some(rest) = t.strip_prefix("#ifndef ") {
            // The include guard; the compiler's own macros are not declared here.
            names.extend(ident_after(rest).filter(|n| !n.starts_with("__")));
        } else if let Some(rest) = t.strip_prefix("enum ") {
            names.extend(ident_after(rest));
        } else if let Some(rest) = t.strip_prefix("typedef ") {
            if let Some(p) = rest.find("(*") {
                names.extend(ident_after(&rest[p + 2..]));
            } else if let Some(body) = rest.strip_suffix(';') {
                names.extend(ident_before(body));
                if let Some(s) = body.strip_prefix("struct ").or_else(|| body.strip_prefix("enum ")) {
                    names.extend(ident_after(s));
                }
            }
        } else if let Some(rest) = t.strip_prefix('}') {
            if let Some(body) = rest.strip_suffix(';') {
                names.extend(ident_after(body));
            }
        } else if let Some((k, _)) = t.split_once(" = ") {
            if t.ends_with(',') {
                names.extend(ident_after(k));
            }
        }
    }
    names.extend(functions(h).into_iter().map(|(n, _)| n));
    names
}

#[test]
fn the_header_declares_only_the_c_api() {
    let h = header();
    let names = declared_names(&h);
    assert!(names.len() > 100, "only {} names found: the parser is out of date", names.len());
    let foreign: Vec<&String> = names.iter().filter(|n| !(n.starts_with("cluster_") || n.starts_with("CLUSTER_"))).collect();
    assert!(foreign.is_empty(), "include/cluster.h declares names outside the C API: {foreign:?}");
    for internal in ["ADD_CLIENT", "HEAD_ID", "MAGIC", "HEADER_LEN", "FETCH_REF"] {
        assert!(!h.contains(internal), "{internal} leaked into include/cluster.h");
    }
}

#[test]
fn the_namespace_check_catches_a_leak() {
    let leaky = header().replacen("#define CLUSTER_VERSION_MAJOR", "#define ADD_CLIENT 11\n\n#define CLUSTER_VERSION_MAJOR", 1);
    assert!(declared_names(&leaky).iter().any(|n| n == "ADD_CLIENT"));
}

/// The variants of `enum <name>` with their values.
fn enum_values(h: &str, name: &str) -> BTreeMap<String, i64> {
    let code = strip_comments(h);
    let at = code.find(&format!("enum {name}\n")).unwrap_or_else(|| panic!("no enum {name} in the header"));
    let open = at + code[at..].find("\n {").expect("enum body") + 3;
    let close = open + code[open..].find("};").expect("enum end");
    let mut out = BTreeMap::new();
    for item in code[open..close].split(',') {
        let Some((k, v)) = item.split_once('=') else { continue };
        let v: i64 = v.trim().parse().unwrap_or_else(|_| panic!("{name}: value {v:?}"));
        assert!(out.insert(k.trim().to_string(), v).is_none(), "{name}: {k} twice");
    }
    out
}

/// Every enum's variants, and every `#define NAME <integer>`.
fn header_constants(h: &str) -> BTreeMap<String, i64> {
    let code = strip_comments(h);
    let mut out = BTreeMap::new();
    for line in code.lines() {
        if let Some(rest) = line.strip_prefix("enum ") {
            if let Some(name) = ident_after(rest) {
                out.extend(enum_values(h, &name));
            }
        }
        if let Some(rest) = line.strip_prefix("#define ") {
            let mut parts = rest.split_whitespace();
            if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                if let Ok(v) = v.parse::<i64>() {
                    out.insert(k.to_string(), v);
                }
            }
        }
    }
    out
}

/// The status table as the header has it.
fn header_statuses() -> BTreeMap<String, i64> {
    enum_values(&header(), "cluster_status")
}

/// The status table as the core's `ErrorKind` has it.
fn kind_statuses() -> BTreeMap<String, i64> {
    let mut m: BTreeMap<String, i64> = ErrorKind::ALL.iter().map(|&k| (c_name(k), k as i64)).collect();
    m.insert("CLUSTER_OK".into(), 0);
    m
}

#[test]
fn the_header_status_enum_is_the_error_kind_table() {
    let h = header_statuses();
    let k = kind_statuses();
    for (name, code) in &k {
        assert_eq!(h.get(name), Some(code), "ErrorKind {name} = {code} is not so in the header's cluster_status");
    }
    for (name, code) in &h {
        assert_eq!(k.get(name), Some(code), "the header's {name} = {code} is no ErrorKind");
        if *code != 0 {
            let kind = ErrorKind::from_code(*code as u8).expect("a kind");
            assert_eq!(&c_name(kind), name);
        }
    }
    let mut codes: Vec<i64> = h.values().copied().collect();
    codes.sort_unstable();
    assert_eq!(codes, (0..h.len() as i64).collect::<Vec<_>>(), "status codes have gaps");
}

/// `const CLUSTER_X = Int32(n)` (or `Int64(n)`, `Csize_t(n)`) lines of capi.jl.
fn julia_constants(src: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for line in src.lines() {
        let Some(rest) = line.trim().strip_prefix("const ") else { continue };
        let Some((name, value)) = rest.split_once(" = ") else { continue };
        if !name.starts_with("CLUSTER_") {
            continue;
        }
        let value = value.trim();
        let inner = value
            .strip_prefix("Int32(")
            .or_else(|| value.strip_prefix("Int64("))
            .or_else(|| value.strip_prefix("Csize_t("))
            .and_then(|v| v.strip_suffix(')'))
            .unwrap_or_else(|| panic!("capi.jl: {name} = {value}: expected Int32(n), Int64(n) or Csize_t(n)"));
        let v: i64 = inner.trim().parse().unwrap_or_else(|_| panic!("capi.jl: {name} = {value}"));
        assert!(out.insert(name.trim().to_string(), v).is_none(), "capi.jl: {name} defined twice");
    }
    out
}

/// The `STATUS_NAMES` dictionary of capi.jl.
fn julia_status_names(src: &str) -> BTreeMap<i64, String> {
    let start = src.find("const STATUS_NAMES").expect("capi.jl defines STATUS_NAMES");
    let open = start + src[start..].find('(').expect("STATUS_NAMES = Dict{...}(") + 1;
    let close = open + src[open..].find(')').expect("STATUS_NAMES ends");
    let mut out = BTreeMap::new();
    for pair in src[open..close].split(',') {
        let Some((k, v)) = pair.split_once("=>") else { continue };
        let code: i64 = k.trim().parse().unwrap_or_else(|_| panic!("STATUS_NAMES: key {k:?}"));
        let name = v.trim().strip_prefix(':').unwrap_or_else(|| panic!("STATUS_NAMES: value {v:?}")).to_string();
        assert!(out.insert(code, name).is_none(), "STATUS_NAMES: {code} twice");
    }
    out
}

#[test]
fn the_julia_constants_are_the_header_s() {
    let src = read("bindings/julia/LibCluster/src/capi.jl");
    let jl = julia_constants(&src);
    let statuses = header_statuses();
    let is_status = |n: &str| n == "CLUSTER_OK" || n.starts_with("CLUSTER_ERR_");
    let jl_statuses: BTreeMap<String, i64> = jl.iter().filter(|(n, _)| is_status(n)).map(|(n, v)| (n.clone(), *v)).collect();
    assert_eq!(jl_statuses, statuses, "capi.jl's status constants differ from cluster_status");
    let names = julia_status_names(&src);
    let want: BTreeMap<i64, String> = statuses.iter().map(|(n, v)| (*v, n.clone())).collect();
    assert_eq!(names, want, "capi.jl's STATUS_NAMES differs from cluster_status");
    // Every other constant restates the header too.
    let all = header_constants(&header());
    for (name, v) in &jl {
        assert_eq!(all.get(name), Some(v), "capi.jl: {name} = {v} is not so in include/cluster.h");
    }
}

#[test]
fn the_julia_check_catches_a_difference() {
    let src = read("bindings/julia/LibCluster/src/capi.jl");
    let bad = src.replacen("const CLUSTER_ERR_TIMEOUT = Int32(8)", "const CLUSTER_ERR_TIMEOUT = Int32(80)", 1);
    assert_ne!(julia_constants(&bad), julia_constants(&src));
    let bad = src.replacen("8 => :CLUSTER_ERR_TIMEOUT", "8 => :CLUSTER_ERR_TIMED_OUT", 1);
    assert_ne!(julia_status_names(&bad), julia_status_names(&src));
}

/// The doc's text lines, without the leading ` * `.
fn doc_lines(doc: &str) -> Vec<String> {
    doc.lines().map(|l| l.trim_start().trim_start_matches('*').trim().to_string()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn every_function_states_ownership_blocking_and_threads() {
    let h = header();
    let fns = functions(&h);
    assert!(fns.len() >= 50, "only {} functions found: the parser is out of date", fns.len());
    let mut missing = Vec::new();
    for (name, doc) in &fns {
        let lines = doc_lines(doc);
        for word in ["Ownership:", "Blocking:", "Threads:"] {
            let stated = lines.iter().any(|l| l.strip_prefix(word).is_some_and(|r| !r.trim().is_empty()));
            if !stated {
                missing.push(format!("{name}: no `{word}` line"));
            }
        }
    }
    assert!(missing.is_empty(), "function docs in include/cluster.h must state each of these:\n  {}", missing.join("\n  "));
}

#[test]
fn the_doc_check_catches_a_missing_line() {
    let h = header().replacen(" * Blocking:", " * Waits:", 1);
    let bad: Vec<String> = functions(&h).into_iter().filter(|(_, d)| !doc_lines(d).iter().any(|l| l.starts_with("Blocking:"))).map(|(n, _)| n).collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    let undocumented =
        h.replacen("cluster_status cluster_ready(cluster_ctx *ctx);", "cluster_status cluster_ready(cluster_ctx *ctx);\nint cluster_extra(void);", 1);
    let extra = functions(&undocumented).into_iter().find(|(n, _)| n == "cluster_extra").expect("parsed");
    assert!(extra.1.is_empty(), "a function without its own doc comment has none");
}

/// The names of a `const NAME = (:a, :b, ...)` tuple of capi.jl.
fn julia_symbol_tuple(src: &str, name: &str) -> BTreeSet<String> {
    let start = src.find(&format!("const {name} = (")).unwrap_or_else(|| panic!("capi.jl defines {name}"));
    let body = &src[start..];
    let body = &body[body.find('(').unwrap() + 1..body.find(')').expect("the tuple ends")];
    body.split(',').map(|s| s.trim().trim_start_matches(':').to_string()).filter(|s| !s.is_empty()).collect()
}

/// The functions capi.jl wraps (`@cfunc name(...)`) and those it lists as
/// deliberately not wrapped.
fn julia_coverage(src: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let wrapped = src.lines().filter_map(|l| l.strip_prefix("@cfunc ")).map(|l| l[..l.find('(').expect("@cfunc name(")].trim().to_string()).collect();
    let mut listed = julia_symbol_tuple(src, "NOT_WRAPPED_BLOCKING");
    listed.extend(julia_symbol_tuple(src, "NOT_WRAPPED_BUILT_IN_JULIA"));
    (wrapped, listed)
}

fn coverage_gaps(h: &str, src: &str) -> Vec<String> {
    let header: BTreeSet<String> = functions(h).into_iter().map(|(n, _)| n).collect();
    let (wrapped, listed) = julia_coverage(src);
    let mut gaps = Vec::new();
    gaps.extend(header.iter().filter(|f| !wrapped.contains(*f) && !listed.contains(*f)).map(|f| format!("{f}: neither wrapped nor listed as not wrapped")));
    gaps.extend(wrapped.intersection(&listed).map(|f| format!("{f}: wrapped and listed as not wrapped")));
    gaps.extend(wrapped.union(&listed).filter(|f| !header.contains(*f)).map(|f| format!("{f}: not in include/cluster.h")));
    gaps
}

#[test]
fn every_c_function_is_wrapped_in_julia_or_listed_as_left_out() {
    let gaps = coverage_gaps(&header(), &read("bindings/julia/LibCluster/src/capi.jl"));
    assert!(gaps.is_empty(), "capi.jl and include/cluster.h disagree:\n{}", gaps.join("\n"));
}

#[test]
fn the_coverage_check_catches_a_function_left_out() {
    let src = read("bindings/julia/LibCluster/src/capi.jl");
    let h = header();
    let dropped = src.replacen(":cluster_serve,", "", 1);
    assert_ne!(dropped, src);
    assert!(coverage_gaps(&h, &dropped).iter().any(|g| g.starts_with("cluster_serve: neither")));
    let both = src.replacen(":cluster_serve,", ":cluster_serve, :cluster_remotecall,", 1);
    assert!(coverage_gaps(&h, &both).iter().any(|g| g.starts_with("cluster_remotecall: wrapped and listed")));
}
