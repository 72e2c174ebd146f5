//! The endpoints: status, clear, new identifiers, JSONP, methods, 404s.

mod common;

use common::*;

fn uploaded(pool: &TestPool, id: &str) -> serde_json::Value {
    let form = Form::new().file("f", "a.txt", "text/plain", b"content");
    let reply = pool
        .cgi()
        .post_form(&format!("/upload?X-Progress-ID={id}"), &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

#[test]
fn unknown_identifier_is_starting() {
    let pool = TestPool::new();
    let reply = pool.cgi().get("/upload/status?X-Progress-ID=not-yet");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, br#"{"state":"starting"}"#);
    assert_eq!(reply.header("Cache-Control"), Some("no-store"));
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    // A status query does not create anything.
    assert!(pool.top_level().is_empty());
}

#[test]
fn status_in_both_forms() {
    let pool = TestPool::new();
    let done = uploaded(&pool, "both");
    let a = pool.cgi().get("/upload/status?X-Progress-ID=both").json();
    let b = pool.cgi().get("/upload?X-Progress-ID=both&status").json();
    let c = pool.cgi().get("/upload?status=1&X-Progress-ID=both").json();
    assert_eq!(a, done);
    assert_eq!(b, done);
    assert_eq!(c, done);
    let head = pool
        .cgi()
        .clone()
        .request("HEAD", "/upload/status?X-Progress-ID=both")
        .run(b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("Content-Length")
            .map(|l| l.parse::<usize>().unwrap() > 0),
        Some(true)
    );
}

#[test]
fn clear_in_every_form() {
    let pool = TestPool::new();
    let forms: &[(&str, &str)] = &[
        ("GET", "/upload?X-Progress-ID=c1&clear"),
        ("POST", "/upload?X-Progress-ID=c2&clear"),
        ("DELETE", "/upload/status?X-Progress-ID=c3"),
        ("GET", "/upload/status?X-Progress-ID=c4&clear"),
    ];
    for (i, (method, target)) in forms.iter().enumerate() {
        let id = format!("c{}", i + 1);
        let done = uploaded(&pool, &id);
        let path = path_of(&done, 0);
        assert!(path.exists());
        let reply = pool.cgi().request(method, target).run(b"");
        assert_eq!(reply.status, 200, "{method} {target}: {}", reply.text());
        assert_eq!(reply.json(), serde_json::json!({"success": true}));
        assert!(!path.exists(), "{method} {target}");
        assert_eq!(status_of(&pool.cgi(), &id)["state"], "starting");
    }
    // Nothing is left, not even the deleted folders.
    assert!(pool.top_level().is_empty(), "{:?}", pool.top_level());
    // Clearing what is not there is not an error.
    let reply = pool.cgi().get("/upload?X-Progress-ID=never&clear");
    assert_eq!(reply.json(), serde_json::json!({"success": true}));
}

#[test]
fn clearing_one_upload_leaves_the_others() {
    let pool = TestPool::new();
    uploaded(&pool, "keep");
    uploaded(&pool, "drop");
    let before: Vec<_> = pool
        .snapshot()
        .into_iter()
        .filter(|(p, _)| p.starts_with("keep/"))
        .collect();
    pool.cgi().get("/upload?X-Progress-ID=drop&clear");
    let after: Vec<_> = pool.snapshot().into_iter().collect();
    assert_eq!(after, before);
}

#[test]
fn new_identifier_without_key() {
    let pool = TestPool::new();
    let reply = pool.cgi().get("/upload/new");
    assert_eq!(reply.status, 200);
    let id = reply.json()["identifier"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36);
    let other = pool.cgi().get("/upload/new").json()["identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(id, other);
    // It is usable at once.
    uploaded(&pool, &id);
}

#[test]
fn jsonp_callback() {
    let pool = TestPool::new();
    uploaded(&pool, "jp");
    let reply = pool
        .cgi()
        .get("/upload/status?X-Progress-ID=jp&callback=jQuery_1.done");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Content-Type"), Some("application/javascript"));
    assert_eq!(reply.header("X-Content-Type-Options"), Some("nosniff"));
    let text = reply.text();
    let inner = text
        .strip_prefix("/**/jQuery_1.done(")
        .and_then(|t| t.strip_suffix(");"))
        .unwrap_or_else(|| panic!("not wrapped: {text}"));
    let json: serde_json::Value = serde_json::from_str(inner).unwrap();
    assert_eq!(json["state"], "done");
    // Errors are wrapped too, so a script-tag client sees them.
    let reply = pool
        .cgi()
        .get("/upload/status?X-Progress-ID=../x&callback=cb");
    assert_eq!(reply.status, 400);
    assert!(reply.text().starts_with("/**/cb({"), "{}", reply.text());
}

#[test]
fn bad_jsonp_callbacks_are_refused_unechoed() {
    let pool = TestPool::new();
    for callback in [
        "alert(1)//",
        "%3Cscript%3E",
        "a%22b",
        "a%0Ab",
        "1abc",
        "a'b",
        "x%20y",
    ] {
        let reply = pool.cgi().get(&format!(
            "/upload/status?X-Progress-ID=x&callback={callback}"
        ));
        reply.assert_error_code(400, "ERR_BAD_CALLBACK", "invalid JSONP callback");
        let text = reply.text();
        assert!(!text.contains("alert") && !text.contains('<'), "{text}");
    }
}

#[test]
fn unknown_paths_are_404() {
    let pool = TestPool::new();
    for target in [
        "/",
        "/uploads",
        "/upload/",
        "/upload/other",
        "/x/upload/status/more",
        "/favicon.ico",
    ] {
        let reply = pool.cgi().get(target);
        reply.assert_error_code(404, "ERR_NOT_FOUND", "no such endpoint");
    }
}

#[test]
fn wrong_methods_are_405_with_allow() {
    let pool = TestPool::new();
    let cases: &[(&str, &str, &str)] = &[
        ("GET", "/upload?X-Progress-ID=m", "POST"),
        ("PUT", "/upload?X-Progress-ID=m", "POST"),
        ("POST", "/upload/status?X-Progress-ID=m", "DELETE"),
        ("PUT", "/upload/status?X-Progress-ID=m", "GET"),
        ("DELETE", "/upload/new", "GET"),
        ("POST", "/upload?X-Progress-ID=m&status", "GET"),
        ("PUT", "/upload?X-Progress-ID=m&clear", "DELETE"),
    ];
    for (method, target, allowed) in cases {
        let reply = pool.cgi().request(method, target).run(b"");
        reply.assert_error_code(
            405,
            "ERR_METHOD",
            &format!("method {method} is not allowed"),
        );
        let allow = reply
            .header("Allow")
            .unwrap_or_else(|| panic!("no Allow for {method} {target}"));
        assert!(allow.contains(allowed), "{method} {target}: Allow {allow}");
    }
    assert!(pool.top_level().is_empty());
}

#[test]
fn missing_identifier_is_400() {
    let pool = TestPool::new();
    for target in [
        "/upload/status",
        "/upload?status",
        "/upload/status?X-Progress-ID=",
    ] {
        pool.cgi().get(target).assert_error_code(
            400,
            "ERR_NO_IDENTIFIER",
            "missing upload identifier",
        );
    }
    let form = Form::new().file("f", "a", "text/plain", b"x");
    pool.cgi().post_form("/upload", &form).assert_error_code(
        400,
        "ERR_NO_IDENTIFIER",
        "missing upload identifier",
    );
    assert!(pool.top_level().is_empty());
}
