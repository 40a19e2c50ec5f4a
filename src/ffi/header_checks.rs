//! Checks over the committed header (include/cluster.h, itself checked to
//! be what cbindgen generates):
//!
//! - every name the header declares is in the C API's namespace
//!   (`cluster_*` / `CLUSTER_*`): nothing of the core leaks in.

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
